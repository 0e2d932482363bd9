"""Config -> the parts of a run: model, objective, timestep sampler, sampler, fuser options, curriculum, and the
pre-training config of a design's frozen part.

Every part is built here, after ``methods`` has registered each paper's own loss, sampler and pre-training, so
that the generic layers (``models``, ``diffusion``) never import a method. Design-specific options are checked
against the part's constructor: an unknown key or a value of the wrong type is a one-line error naming the key.

The feed-forward rule is applied here once: a ``diffusion.mode: feedforward`` run (the Analysing study's E1,
``methods/analysing.py``: :data:`~lesiondiff.methods.analysing.FEEDFORWARD`) trains the x0 head with Dice + BCE
from pure noise (objective ``feedforward``), predicts x0, and samples in one shot (``oneshot``), whatever its
preset's diffusion objective, prediction and sampler say.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from . import methods  # noqa: F401  (registers each method's objectives, samplers, pre-training and curricula)
from .config import Config, DiffusionConfig, coerce
from .curricula import CURRICULA, Curriculum
from .diffusion.objectives import OBJECTIVES, Objective
from .diffusion.samplers import SAMPLERS, Sampler
from .diffusion.timesteps import TIMESTEP_SAMPLERS, TimestepSampler
from .errors import LesiondiffError
from .fusion import FUSERS, crf_kernels
from .methods.analysing import FEEDFORWARD
from .models import MODELS, Denoiser
from .pretraining import PRETRAINING

FEEDFORWARD_SAMPLER = FEEDFORWARD["sampler"]
_OWN = ("self", "cfg", "max_batch", "image_channels", "prediction", "rows", "base_lr", "log", "groups")  # set by
# the builders, not by options
_FUSER_OWN = (*_OWN, "probs", "image", "threshold", "return_stats")  # a fuser's call arguments, not its options


def prediction(cfg: Config) -> str:
    """What the network's main head predicts: x0 for feed-forward runs, else ``diffusion.prediction``."""
    return FEEDFORWARD["prediction"] if cfg.diffusion.feedforward else cfg.diffusion.prediction


def sampler_name(cfg: Config, name: str | None = None) -> str:
    """The sampler a run uses: ``name`` (default ``sample.sampler``), or ``oneshot`` for feed-forward runs."""
    return FEEDFORWARD_SAMPLER if cfg.diffusion.feedforward else (name or cfg.sample.sampler)


def sampler_names() -> list[str]:
    return SAMPLERS.names()


def _keywords(factory: Callable[..., Any], own: tuple[str, ...] = _OWN) -> dict[str, inspect.Parameter]:
    """The keyword arguments ``factory`` takes, following ``**kwargs`` up a class's bases (PalScDiff's to
    MedSegDiff's), without those the builders set themselves."""
    params: dict[str, inspect.Parameter] = {}
    for owner in factory.__mro__ if isinstance(factory, type) else (factory,):
        init = owner.__init__ if isinstance(factory, type) else owner
        if isinstance(factory, type) and "__init__" not in vars(owner):
            continue
        signature = inspect.signature(init).parameters
        params.update({n: p for n, p in signature.items() if n not in params and n not in own
                       and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)})
        if not any(p.kind == p.VAR_KEYWORD for p in signature.values()):
            break
    return params


def checked_options(factory: Callable[..., Any], options: Mapping[str, Any], where: str, part: str,
                    own: tuple[str, ...] = _OWN) -> dict:
    """``options`` checked against ``factory``'s keyword arguments and coerced to their annotated types; an
    unknown key or a wrong type is a one-line error naming ``where.<key>``."""
    params = _keywords(factory, own)
    out = {}
    for key, value in (options or {}).items():
        if key not in params:
            known = ", ".join(params) or "none"
            raise LesiondiffError(f"{where}.{key}: not an option of {part} (known: {known})")
        try:
            out[key] = coerce(value, params[key].annotation)
        except TypeError as exc:
            raise LesiondiffError(f"{where}.{key}: expected {exc}, got {value!r}") from None
    return out


def build_model(cfg: Config, image_channels: int) -> Denoiser:
    """The configured architecture for images with ``image_channels`` channels (``model.options`` checked)."""
    m = cfg.model
    factory = MODELS.get(m.name)
    options = checked_options(factory, m.options, "model.options", f"model {m.name!r}")
    kwargs = dict(image_channels=image_channels, base_channels=m.base_channels, channel_mult=list(m.channel_mult),
                  num_res_blocks=m.num_res_blocks, attention_levels=list(m.attention_levels),
                  num_groups=m.num_groups, dropout=m.dropout, prediction=prediction(cfg), **options)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise LesiondiffError(f"model {m.name!r}: {exc}") from None
    # channels_last makes oneDNN's (CPU) and cuDNN's convolutions faster: 1.3x for a training step at 128 px here.
    return model.to(memory_format=torch.channels_last)


def check_size(cfg: Config, image_channels: int = 1) -> None:
    """``data.size`` against the configured network's total stride, before any data or weights load: the
    network is built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        multiple = build_model(cfg, image_channels).multiple
    if cfg.data.size % multiple:
        raise LesiondiffError(f"data.size {cfg.data.size}: model {cfg.model.name!r} needs a multiple of {multiple} "
                              f"(its total stride), e.g. {max(multiple, round(cfg.data.size / multiple) * multiple)}")


def build_objective(cfg: DiffusionConfig, visited: list[int] | None = None) -> Objective:
    """The training loss: ``diffusion.objective`` with its ``objective_options``, or ``feedforward``;
    ``visited``: the timesteps the run's sampler visits (:func:`visited_timesteps`), for objectives that take
    them (``x0_dice_bce``'s recycling)."""
    name = FEEDFORWARD["objective"] if cfg.feedforward else cfg.objective
    factory = OBJECTIVES.get(name)
    extra = {"visited": visited} if "visited" in inspect.signature(factory).parameters else {}
    return factory(cfg=cfg, **extra)


def visited_timesteps(cfg: Config) -> list[int] | None:
    """The timesteps the run's own sampler visits with ``sample.steps`` steps, noisiest first (None: a sampler
    without a fixed sequence, or a feed-forward run)."""
    return None if cfg.diffusion.feedforward else build_sampler(cfg).visited_timesteps(cfg.sample.steps)


def build_timestep_sampler(cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None,
                           visited: list[int] | None = None, masks: torch.Tensor | None = None,
                           seed: int = 0) -> TimestepSampler:
    """The training timestep sampler ``cfg.timestep_sampling`` names, given what any of them may need: the
    training ``masks`` [N,1,H,W] and ``seed`` (``fingerprint``, which computes their ``slope`` [T] unless given)
    and ``visited``, the run's sampler's timesteps (``aligned``)."""
    return TIMESTEP_SAMPLERS.build(cfg.timestep_sampling, cfg=cfg, slope=slope, visited=visited, masks=masks,
                                   seed=seed)


def build_sampler(cfg: Config, name: str | None = None, max_batch: int | None = None) -> Sampler:
    """The sampler ``name`` (default ``sample.sampler``; ``oneshot`` for feed-forward runs) with at most
    ``max_batch`` samples per network evaluation (default ``sample.max_batch``).

    Its options: ``sample.options``, checked against the sampler's constructor, when ``name`` is the run's own
    diffusion sampler (another one, e.g. a sweep's or training's validation sampler, gets none of them), and
    ``sample.start`` / ``sample.start_t`` where the sampler takes them (the ``refine`` sampler)."""
    name = sampler_name(cfg, name)
    factory = SAMPLERS.get(name)
    accepted = inspect.signature(factory).parameters
    options = {k: v for k, v in (("start", cfg.sample.start), ("start_t", cfg.sample.start_t)) if k in accepted}
    if not cfg.diffusion.feedforward and name == cfg.sample.sampler:
        options.update(checked_options(factory, cfg.sample.options, "sample.options", f"sampler {name!r}"))
    if cfg.diffusion.input_scale != 1 and not factory.scales_input:
        raise LesiondiffError(f"sampler {name!r} does not work with diffusion.input_scale "
                              f"{cfg.diffusion.input_scale:g}; use 1, or a generic sampler (ddim, ddpm, ...)")
    return factory(cfg=cfg.diffusion, max_batch=cfg.sample.max_batch if max_batch is None else max_batch, **options)


def build_curriculum(cfg: Config, rows: list[dict], log: Callable[[str], None] = print) -> Curriculum | None:
    """The run's curriculum over its training ``rows`` (``curriculum.name`` with ``curriculum.options`` checked
    against its constructor), or None for ``none`` (an ablation arm switches a preset's curriculum off by name,
    its options staying in the config unused)."""
    name = cfg.curriculum.name
    if name == "none":  # options a preset keeps for its curriculum are unused while it is switched off
        return None
    factory = CURRICULA.get(name)
    options = checked_options(factory, cfg.curriculum.options, "curriculum.options", f"curriculum {name!r}")
    return factory(rows=rows, base_lr=cfg.train.lr, log=log, **options)


def pretraining_configs(cfg: Config) -> dict[str, Config]:
    """The training configs of the design's pre-trained parts by run folder name (``Denoiser.pretrained_part``
    first; registered by its method in ``pretraining.PRETRAINING``), empty when the design has none."""
    part = MODELS.get(cfg.model.name).pretrained_part
    if not part:
        return {}
    configs = PRETRAINING.get(cfg.model.name)(cfg)
    if next(iter(configs), None) != part:
        raise AssertionError(f"{cfg.model.name}: its pre-training configs must begin with {part!r}")
    return configs


def build_fusion(cfg: Config) -> tuple[dict, dict | None]:
    """The fuser's options (``fusion.options`` checked against the fuser ``fusion.method``'s signature) and, when
    ``fusion.crf`` is on, the DenseCRF refinement's arguments (``fusion.crf_options`` checked against
    ``fusion.crf_kernels``); None when it is off."""
    f = cfg.fusion
    options = checked_options(FUSERS.get(f.method), f.options, "fusion.options", f"fuser {f.method!r}", _FUSER_OWN)
    if not f.crf:
        return options, None
    return options, crf_kernels(**checked_options(crf_kernels, f.crf_options, "fusion.crf_options", "DenseCRF"))
