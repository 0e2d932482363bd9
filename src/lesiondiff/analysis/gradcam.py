"""Grad-CAM of chosen layers at chosen steps of one sampling trajectory.

After PGDiffSeg (shared paper 001, sec. 5.1-5.3 and Figs. 6, 7, 8, 13): where in the image each layer looks, and
how that moves as the reverse process runs from t near T to t near 0. Works for any registered architecture:
layers are named as in ``model.named_modules()``.

Protocol (``gradcam_analysis``), for one image at the network size, EMA weights, eval mode:
1. One trajectory: the scheduler-based reverse process (DDIM by default, "trailing" timesteps, ``steps``
   network evaluations) from seeded noise, exactly as ``lesiondiff predict`` samples one mask, keeping x_t and
   the network output at every step. The final sample x_0 mapped to [0,1] is the final prediction; R is where
   it is >= the threshold (as the mask ``predict`` writes). An empty R is replaced by the whole image, and the
   outputs say so.
2. At the chosen steps (default 6, evenly spaced from the first step to the last), Grad-CAM
   (``monai.visualize.GradCAM``; Selvaraju et al. 2017) of every chosen layer for the target
   "sum over R of the x0 probability predicted at that step": sigmoid(x0 logits) where the output has them,
   else (x0_hat + 1) / 2 with x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t), not clipped, so every
   pixel of R passes a gradient (Grad-CAM is unchanged by the positive factor 1 / (2 sqrt(abar_t))). The
   network runs its full forward (``encode`` included), so image-only layers get gradients too. One forward and
   one backward pass per step serve all layers.
3. Each map is the ReLU of the gradient-weighted channel sum, bilinearly upsampled to the network size, then
   divided by its own maximum (in [0,1]; the raw maximum is kept as ``peak``). Per layer and step the
   summary gives the share of the map's mass inside R (``mass_in_region``; None when R is the whole image)
   and ``peak``.
4. The prior view (Fig. 8): Grad-CAM of one layer for an auxiliary classification logit ``aux[<key>]``
   ([B,1], e.g. PGDiffSeg's "is there a tumour" logit) at one step (the last chosen one).

Layers come from ``--layers`` or from an optional ``cam_layers`` dict on the model class:
``{"condition": [...], "denoising": [...], "psa": [[before, after], ...], "prior": name, "prior_target": key}``
(any key may be missing; list-valued keys other than "psa" become row groups of the grid, in order).

Outputs (``write_gradcam``): gradcam_grid.png (Fig. 6: rows layers, columns t from T down to 0, plus the image
with the final prediction), psa.png (Fig. 7, with before/after pairs), prior.png (Fig. 8, with a prior layer
and target), trajectory.png (Fig. 13: x_t, the x0 probability and the final mask), gradcam.json and gradcam.md.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config
from ..data.manifest import evenly_spaced
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..models import Denoiser, DenoiserOutput
from ..reporting.figures import pyplot, save

DEFAULT_CAM_STEPS = 6
_BLOCK_WORDS = re.compile(r"(^|\.)(down|up|mid|flow|encoder|decoder|level|unit|block|stage|layer)")


# ---- which layers --------------------------------------------------------------------------------------------
@dataclass
class CamViews:
    """What to show: grid rows by group, (before, after) pairs, and an optional prior layer with its aux key."""

    groups: dict[str, list[str]]
    psa: list[tuple[str, str]] = field(default_factory=list)
    prior: str | None = None
    prior_target: str | None = None

    @property
    def grid_layers(self) -> list[str]:
        return [name for names in self.groups.values() for name in names]

    @property
    def layers(self) -> list[str]:
        """Every layer whose CAM follows the mask target: the grid's, then the pairs' not already in it."""
        return list(dict.fromkeys([*self.grid_layers, *(name for pair in self.psa for name in pair)]))


def _split_names(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s.strip()]


def parse_pairs(value: str | list | None) -> list[tuple[str, str]] | None:
    """``"before:after,before:after"`` (or a list of pairs) -> [(before, after), ...]; "none" -> []."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return []
        items = [item.split(":") for item in _split_names(value)]
    else:
        items = [list(item) for item in value]
    bad = [":".join(item) for item in items if len(item) != 2 or not all(s.strip() for s in item)]
    if bad:
        raise LesiondiffError(f"PSA pair {bad[0]!r}: expected before:after (two layer names)")
    return [(a.strip(), b.strip()) for a, b in items]


def resolve_views(model: Denoiser, layers: str | list[str] | None = None, psa_pairs: str | list | None = None,
                  prior_layer: str | None = None, prior_target: str | None = None) -> CamViews:
    """The views asked for, each one falling back to the model's ``cam_layers`` where it is not given.

    ``layers`` replaces the grid's rows (one group, "layers"); ``psa_pairs`` "none" and ``prior_layer`` "none"
    turn those views off.
    """
    defaults = getattr(model, "cam_layers", None) or {}
    names = _split_names(layers)
    if names:
        groups = {"layers": names}
    else:
        groups = {key: [str(v) for v in value] for key, value in defaults.items()
                  if key != "psa" and isinstance(value, (list, tuple)) and value}
    pairs = parse_pairs(psa_pairs)
    if pairs is None:
        pairs = parse_pairs(defaults.get("psa", [])) or []
    if prior_layer is not None and prior_layer.strip().lower() == "none":
        prior, target = None, None
    else:
        prior = prior_layer or defaults.get("prior")
        target = prior_target or defaults.get("prior_target")
        if bool(prior) != bool(target):
            missing = "--prior-target (a key of the model's aux outputs)" if prior else "--prior-layer"
            raise LesiondiffError(f"the prior view needs both a layer and an aux target: add {missing}")
    return CamViews(groups, pairs, prior or None, target or None)


def _depth(name: str) -> int:
    return name.count(".")


def probe_layers(model: Denoiser, x_t: torch.Tensor, t: int, image: torch.Tensor) -> dict[str, tuple[int, str]]:
    """One forward pass ``model(x_t, t, image)`` with a counting hook on every named module:
    name -> (calls in that pass, what the last call returned: "[B,C,H,W]" for a tensor, else its type)."""
    seen: dict[str, tuple[int, str]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, _args, output, name=name):
            what = (str(list(output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__)
            seen[name] = (seen.get(name, (0, ""))[0] + 1, what)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x_t, _timesteps(t, x_t), image)
    finally:
        for handle in handles:
            handle.remove()
    return {name: seen.get(name, (0, "")) for name, _ in model.named_modules() if name}


def _usable(entry: tuple[int, str]) -> bool:
    calls, what = entry
    return calls == 1 and what.startswith("[") and what.count(",") == 3


def candidate_layers(probe: dict[str, tuple[int, str]], n: int = 8) -> list[str]:
    """A few layers Grad-CAM can use (called once, feature-map output), block-like names first, shallow first."""
    usable = [name for name, entry in probe.items() if _usable(entry)]
    order = {name: i for i, name in enumerate(usable)}
    usable.sort(key=lambda s: (_BLOCK_WORDS.search(s) is None, _depth(s), order[s]))
    return usable[:n]


def format_layers(probe: dict[str, tuple[int, str]]) -> str:
    """Every named module: calls per forward pass, output shape, and whether Grad-CAM can use it."""
    lines = [f"{'layer':<48} {'calls':>5}  output"]
    for name, (calls, what) in probe.items():
        mark = "" if _usable((calls, what)) else "  (not usable: " + (
            "never called" if calls == 0 else f"called {calls} times" if calls > 1 else "not a [B,C,H,W] map") + ")"
        lines.append(f"{name:<48} {calls:>5}  {what}{mark}")
    return "\n".join(lines)


def check_layers(model: Denoiser, names: list[str], probe: dict[str, tuple[int, str]]) -> None:
    """A one-line LesiondiffError for the first name Grad-CAM cannot use, naming the layer and what to do."""
    modules = dict(model.named_modules())
    some = ", ".join(candidate_layers(probe))
    for name in names:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [m for m in modules if m], n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise LesiondiffError(f"unknown layer {name!r} in {type(model).__name__}; {hint}usable layers include: "
                                  f"{some} (--list-layers shows all)")
        calls, what = probe[name]
        kind = type(modules[name]).__name__
        if calls == 0:
            entries = [f"{name}.{child}" for child, _ in modules[name].named_children()][:3]
            also = f"; name one of its entries, e.g. {', '.join(entries)}" if entries else ""
            raise LesiondiffError(f"layer {name!r} ({kind}) is not called in the forward pass (a container or an "
                                  f"unused module){also}")
        if calls > 1:
            raise LesiondiffError(f"layer {name!r} ({kind}) is called {calls} times per forward pass; Grad-CAM needs a "
                                  f"layer called once (its activation and gradient would not pair up)")
        if not _usable(probe[name]):
            raise LesiondiffError(f"layer {name!r} ({kind}) outputs {what}, not a feature map [B,C,H,W]; Grad-CAM "
                                  f"needs one")


# ---- the trajectory ------------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """One reverse process: ``timesteps`` [N] (T-1 .. near 0), ``x_t`` [N,H,W] the input of each step,
    ``x0_prob`` [N,H,W] in [0,1] the x0 probability predicted at each step (clipped for eps models),
    ``final_prob`` [H,W] in [0,1] the final sample (x_0 + 1) / 2."""

    timesteps: np.ndarray
    x_t: np.ndarray
    x0_prob: np.ndarray
    final_prob: np.ndarray


def _timesteps(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), int(t), device=like.device, dtype=torch.long)


def mask_probability(out: DenoiserOutput, x_t: torch.Tensor, abar_t: torch.Tensor, clip: bool = True
                     ) -> torch.Tensor:
    """The x0 probability [B,1,H,W] a network output implies: sigmoid(x0 logits) when it has them, else
    (x0_hat + 1) / 2 with x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to [-1,1] if ``clip``."""
    if out.x0 is not None:
        return torch.sigmoid(out.x0)
    if out.eps is None:
        raise LesiondiffError("the model's output has neither eps nor x0")
    x0 = (x_t - (1 - abar_t).sqrt() * out.eps) / abar_t.sqrt()
    return ((x0.clamp(-1, 1) if clip else x0) + 1) / 2


def target_description(kind: str) -> str:
    if kind == "x0":
        return "sum over R of sigmoid(x0 logits) predicted at step t"
    return ("sum over R of (x0_hat + 1) / 2 at step t, x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) "
            "(eps head; not clipped, so every pixel of R passes a gradient)")


def sample_trajectory(model: Denoiser, cfg: Config, image: torch.Tensor, steps: int = 20, sampler: str = "ddim",
                      generator: torch.Generator | None = None) -> tuple[Trajectory, str]:
    """The reverse process of ``sampler`` (a scheduler-based one) for ``image`` [1,C,H,W] in [-1,1], step by step,
    with the same noise and updates as ``SchedulerSampler``. Returns the trajectory and the target kind
    ("x0" when the output carries x0 logits, else "eps")."""
    from ..diffusion.samplers import SAMPLERS, SchedulerSampler, start_noise
    from ..diffusion.schedules import alphas_cumprod

    if cfg.diffusion.mode == "feedforward":
        raise LesiondiffError("a feed-forward run has no sampling trajectory; Grad-CAM over timesteps needs a "
                              "diffusion run")
    runner = SAMPLERS.build(sampler, cfg=cfg.diffusion)
    if not isinstance(runner, SchedulerSampler):
        raise LesiondiffError(f"sampler {sampler!r} is not a step-by-step scheduler sampler; use ddim, ddpm, "
                              f"dpmsolver, dpmsolver++ or unipc")
    if steps < 1:
        raise LesiondiffError(f"--steps must be >= 1, got {steps}")
    abar = alphas_cumprod(cfg.diffusion).to(image.device)
    _, _, h, w = image.shape
    ts, xs, probs, kinds = [], [], [], []

    def record(t: int, x: torch.Tensor, out: DenoiserOutput) -> None:
        ts.append(t)
        kinds.append("x0" if out.x0 is not None else "eps")
        xs.append(x[0, 0].float().cpu())
        probs.append(mask_probability(out, x, abar[t])[0, 0].float().cpu())

    with torch.no_grad():
        x = start_noise((1, 1, h, w), generator, image.device)
        final = runner.run(model, x, model.encode(image), steps, generator, on_step=record)
    traj = Trajectory(np.array(ts, dtype=int), torch.stack(xs).numpy(), torch.stack(probs).numpy(),
                      final.clamp(0, 1)[0, 0].float().cpu().numpy())
    return traj, kinds[-1]


def choose_steps(timesteps: np.ndarray, cam_steps: int = DEFAULT_CAM_STEPS,
                 cam_timesteps: list[int] | None = None) -> list[int]:
    """Indices into ``timesteps`` (descending): ``cam_steps`` evenly spaced from the first to the last, or the
    steps nearest to each of ``cam_timesteps``, ordered from t near T to t near 0, without repeats."""

    if cam_timesteps:
        index = [int(np.argmin(np.abs(timesteps - int(t)))) for t in cam_timesteps]
        return sorted(set(index))
    if cam_steps < 1:
        raise LesiondiffError(f"--cam-steps must be >= 1, got {cam_steps}")
    return evenly_spaced(list(range(len(timesteps))), cam_steps)


# ---- Grad-CAM through MONAI ----------------------------------------------------------------------------------
class _CamTarget(nn.Module):
    """x_t [1,1,H,W] -> the Grad-CAM target [1,1]: the x0 probability summed over ``region`` at step ``t``, or the
    auxiliary logit ``aux[aux_key]``. Runs the model's full forward (``encode`` included). The model is the
    attribute ``model``, so its layers are "model.<name>" here."""

    def __init__(self, model: Denoiser, image: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.image, self.abar = image, abar
        self.t = 0
        self.region: torch.Tensor | None = None
        self.aux_key: str | None = None

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        out = self.model(x_t, _timesteps(self.t, x_t), self.image)
        if self.aux_key is not None:
            return aux_logit(out, self.aux_key)
        prob = mask_probability(out, x_t, self.abar[self.t], clip=False)
        return (prob * self.region).sum(dim=(1, 2, 3))[:, None]


def aux_logit(out: DenoiserOutput, key: str) -> torch.Tensor:
    """``out.aux[key]`` as [B,1]; a one-line error when it is missing or not one value per image."""
    if key not in out.aux:
        known = ", ".join(out.aux) or "none"
        raise LesiondiffError(f"prior target {key!r} is not in the model's aux outputs (it has: {known})")
    value = out.aux[key]
    if not isinstance(value, torch.Tensor) or value[0].numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise LesiondiffError(f"prior target aux[{key!r}] is {shape}; it must be one logit per image ([B,1])")
    return value.reshape(-1, 1)


def _one_pass_hooks(target: _CamTarget, layers: list[str]):
    """monai's ModelWithHooks on the "model.<layer>" names, run once per ``fresh()``: every layer's map then
    comes from one forward and one backward pass instead of one pass pair per layer."""
    from monai.visualize.class_activation_maps import ModelWithHooks

    class OnePass(ModelWithHooks):
        def fresh(self) -> None:
            self.result = None
            self.activations.clear()
            self.gradients.clear()

        def __call__(self, x, class_idx=None, retain_graph=False, **kwargs):
            if self.result is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # missing gradients are reported below, by name
                        logits, acti, _ = super().__call__(x, class_idx, retain_graph, **kwargs)
                except RuntimeError as exc:
                    raise LesiondiffError(f"Grad-CAM of {', '.join(layers)} failed: "
                                          f"{str(exc).splitlines()[0]}") from None
                missing = [name for name in self.target_layers if name not in self.gradients]
                if missing:
                    raise LesiondiffError(f"layer {missing[0].removeprefix('model.')!r} gets no gradient from the "
                                          f"target (it is not on the path to it)")
                grads = tuple(self.gradients[name].contiguous() for name in self.target_layers)
                self.result = (logits.detach(), tuple(a.detach().contiguous() for a in acti), grads)
            return self.result

    hooks = OnePass(target, [f"model.{name}" for name in layers], register_forward=True, register_backward=True)
    hooks.fresh()
    return hooks


def _cams(target: _CamTarget, layers: list[str]):
    """A function (x_t, t) -> (raw maps [L,H,W] float32, target value) for ``layers``."""
    from monai.visualize import GradCAM

    hooks = _one_pass_hooks(target, layers)
    cam = GradCAM(nn_module=hooks, target_layers=hooks.target_layers, postprocessing=lambda m: m)

    def at(x_t: torch.Tensor, t: int) -> tuple[np.ndarray, float]:
        target.t = int(t)
        hooks.fresh()
        x = x_t.detach().clone().requires_grad_(True)  # a layer fed by x_t alone still gets a gradient
        maps = [cam(x, class_idx=0, layer_idx=i)[0, 0] for i in range(len(layers))]
        return torch.stack(maps).float().cpu().numpy(), float(hooks.result[0].reshape(-1)[0])

    return at


def _scaled(raw: np.ndarray) -> tuple[np.ndarray, float]:
    """A raw map divided by its maximum (all zeros stay zeros) and that maximum."""
    peak = float(raw.max()) if raw.size else 0.0
    return (raw / peak if peak > 0 else np.zeros_like(raw)).astype(np.float32), peak


def mass_in_region(cam: np.ndarray, region: np.ndarray) -> float | None:
    """Share of a map's mass inside ``region``; None for an all-zero map."""
    total = float(cam.sum())
    return float(cam[region].sum()) / total if total > 0 else None


@dataclass
class GradCamResult:
    """Everything ``write_gradcam`` draws and summarises. Arrays are at the network size H x W.

    cams[layer] [K,H,W] in [0,1] (each map divided by its own maximum), peaks[layer] [K] the raw maxima,
    scores [K] the target value at each chosen step, region [H,W] bool (R, or all True when the prediction was
    empty), image [C,H,W] in [-1,1] the network input, prior_cam [H,W] with prior_peak / prior_logit at
    trajectory step prior_step.
    """

    views: CamViews
    trajectory: Trajectory
    cam_steps: list[int]
    cams: dict[str, np.ndarray]
    peaks: dict[str, np.ndarray]
    scores: np.ndarray
    region: np.ndarray
    region_empty: bool
    target: str
    threshold: float
    image: np.ndarray
    prior_cam: np.ndarray | None = None
    prior_peak: float | None = None
    prior_logit: float | None = None
    prior_step: int | None = None

    @property
    def cam_timesteps(self) -> list[int]:
        return [int(self.trajectory.timesteps[k]) for k in self.cam_steps]


def gradcam_analysis(model: Denoiser, cfg: Config, image: torch.Tensor, views: CamViews, steps: int = 20,
                     cam_steps: int = DEFAULT_CAM_STEPS, cam_timesteps: list[int] | None = None,
                     sampler: str = "ddim", seed: int = 0, threshold: float | None = None,
                     progress: bool = True) -> GradCamResult:
    """The protocol of the module docstring for ``image`` [C,H,W] (or [1,C,H,W]) in [-1,1] at the network size.

    ``model`` is left as it is: the analysis runs on a copy (eval mode, gradients on, default memory layout), so
    MONAI's hooks never touch the caller's model.
    """
    from ..diffusion.schedules import alphas_cumprod

    if not views.grid_layers:
        raise LesiondiffError("no layers for the Grad-CAM grid: pass --layers")
    device = next(model.parameters()).device
    work = copy.deepcopy(model).eval().requires_grad_(True).to(memory_format=torch.contiguous_format)
    x_image = (image if image.dim() == 4 else image[None]).to(device).float().contiguous()
    threshold = cfg.sample.threshold if threshold is None else float(threshold)
    # check the layers and the prior target before sampling, so a typo costs one forward pass
    blank, t_last = torch.zeros_like(x_image[:, :1]), cfg.diffusion.num_train_timesteps - 1
    layers = views.layers + ([views.prior] if views.prior and views.prior not in views.layers else [])
    check_layers(work, layers, probe_layers(work, blank, t_last, x_image))
    if views.prior_target:
        with torch.no_grad():
            aux_logit(work(blank, _timesteps(t_last, blank), x_image), views.prior_target)

    generator = torch.Generator().manual_seed(int(seed))
    traj, kind = sample_trajectory(work, cfg, x_image, steps, sampler, generator)
    chosen = choose_steps(traj.timesteps, cam_steps, cam_timesteps)
    region = traj.final_prob >= threshold
    region_empty = not region.any()
    if region_empty:
        region = np.ones_like(region)
    x_t = torch.from_numpy(traj.x_t)[:, None, None].to(device)  # [N,1,1,H,W]

    target = _CamTarget(work, x_image, alphas_cumprod(cfg.diffusion).to(device)).eval()
    target.region = torch.from_numpy(region.astype(np.float32))[None, None].to(device)
    at = _cams(target, views.layers)
    raw = []
    scores = []
    for k in tqdm(chosen, desc="grad-cam", unit="step", leave=False, disable=not progress):
        maps, score = at(x_t[k], int(traj.timesteps[k]))
        raw.append(maps)
        scores.append(score)
    raw = np.stack(raw, axis=1)  # [L,K,H,W]
    cams, peaks = {}, {}
    for name, maps in zip(views.layers, raw):
        scaled = [_scaled(m) for m in maps]
        cams[name] = np.stack([s for s, _ in scaled])
        peaks[name] = np.array([p for _, p in scaled])

    result = GradCamResult(views, traj, chosen, cams, peaks, np.array(scores), region, bool(region_empty), kind,
                           threshold, x_image[0].cpu().numpy())
    if views.prior:
        k = chosen[-1]
        target.aux_key = views.prior_target
        maps, logit = _cams(target, [views.prior])(x_t[k], int(traj.timesteps[k]))
        result.prior_cam, result.prior_peak = _scaled(maps[0])
        result.prior_logit, result.prior_step = logit, k
    return result


# ---- orchestration, files and figures ------------------------------------------------------------------------
def load_input(image: str | None = None, manifest: str | None = None, id_: str | None = None) -> tuple[str, str]:
    """(id, image path) from ``--image PATH`` or ``--manifest M --id ID``."""
    from ..data.manifest import Manifest
    from ..engine.predict import collect_inputs

    if bool(image) == bool(manifest):
        raise LesiondiffError("give either --image PATH or --manifest M --id ID")
    if image:
        return collect_inputs([image])[0]
    if not id_:
        raise LesiondiffError(f"{manifest}: --id is needed to pick the image")
    rows = Manifest.read(manifest).rows()
    row = next((r for r in rows if r["id"] == id_), None)
    if row is None:
        some = ", ".join(r["id"] for r in rows[:5])
        raise LesiondiffError(f"{manifest}: no row with id {id_!r} (ids include {some})")
    return id_, row["image"]


def write_gradcam(out: str | Path | None, run: str | Path, image: str | None = None, manifest: str | None = None,
                  id_: str | None = None, layers: str | list[str] | None = None, psa_pairs: str | list | None = None,
                  prior_layer: str | None = None, prior_target: str | None = None, steps: int = 20,
                  cam_steps: int = DEFAULT_CAM_STEPS, cam_timesteps: list[int] | None = None, sampler: str = "ddim",
                  seed: int | None = None, threshold: float | None = None, checkpoint: str = "best",
                  device: str | None = None, list_layers: bool = False, progress: bool = True) -> dict:
    """Load a run and an image, run ``gradcam_analysis`` and write the files of the module docstring under
    ``out``; returns what gradcam.json holds. The noise seed is the one ``lesiondiff predict`` uses for this
    image id (from the run's sample.seed, or ``seed``), so the trajectory is the sample ``predict --samples 1``
    draws with the same sampler and steps. ``list_layers``: return {"layers": text} listing every module (for
    the image, or a blank one at the run's size when none is given), and write nothing."""
    from ..data.io import read_image
    from ..data.transforms import preprocess_image
    from ..engine.predict import Predictor, load_run

    if list_layers and not (image or manifest):
        cfg, model = load_run(run, checkpoint, device)
        x = torch.zeros(cfg.data.channels, cfg.data.size, cfg.data.size)
    else:
        id_, path = load_input(image, manifest, id_)
        cfg, model = load_run(run, checkpoint, device)
        d = cfg.data
        x = preprocess_image(read_image(path), d.size, d.channels, d.intensity_window)
    if seed is not None:
        cfg.sample.seed = int(seed)
    if list_layers:
        dev = next(model.parameters()).device
        x_t = torch.randn(1, 1, *x.shape[-2:], generator=torch.Generator().manual_seed(0)).to(dev)
        return {"layers": format_layers(probe_layers(model, x_t, cfg.diffusion.num_train_timesteps - 1,
                                                     x[None].to(dev)))}
    if not out:
        raise LesiondiffError("--out is needed (the folder for the figures and gradcam.json)")
    views = resolve_views(model, layers, psa_pairs, prior_layer, prior_target)
    if not views.grid_layers:
        x_t = torch.zeros(1, 1, *x.shape[-2:], device=next(model.parameters()).device)
        some = ", ".join(candidate_layers(probe_layers(model, x_t, 0, x[None].to(x_t.device))))
        raise LesiondiffError(f"{cfg.model.name} has no default Grad-CAM layers (cam_layers): pass --layers, e.g. "
                              f"{some} (--list-layers shows all)")
    image_seed = Predictor(cfg, model).image_seed(id_)
    result = gradcam_analysis(model, cfg, x, views, steps, cam_steps, cam_timesteps, sampler, image_seed, threshold,
                              progress)
    meta = {"run": str(run), "checkpoint": checkpoint, "model": cfg.model.name, "preset": cfg.preset, "id": id_,
            "image": str(path), "size": d.size, "seed": image_seed, "run_seed": cfg.sample.seed,
            "sampler": sampler, "steps": steps, "requested_timesteps": cam_timesteps,
            "prediction": model.prediction}
    return write_outputs(out, result, meta)


def summarise(result: GradCamResult, meta: dict) -> dict:
    """What gradcam.json holds (without the file list)."""
    region_arg = None if result.region_empty else result.region
    ts = result.cam_timesteps

    def per_step(name: str) -> list[dict]:
        return [{"t": t, "mass_in_region": None if region_arg is None else mass_in_region(cam, region_arg),
                 "peak": float(peak)} for t, cam, peak in zip(ts, result.cams[name], result.peaks[name])]

    v = result.views
    prior = None
    if v.prior:
        prior = {"layer": v.prior, "target": f"aux[{v.prior_target!r}]", "t": int(result.trajectory.timesteps[
            result.prior_step]), "logit": result.prior_logit, "probability": float(1 / (1 + np.exp(-result.prior_logit))),
            "peak": result.prior_peak,
            "mass_in_region": None if region_arg is None else mass_in_region(result.prior_cam, region_arg)}
    return {
        **meta, "timesteps": [int(t) for t in result.trajectory.timesteps], "cam_timesteps": ts,
        "cam_steps": [int(k) for k in result.cam_steps], "layers": v.groups, "psa_pairs": [list(p) for p in v.psa],
        "target": {"kind": "x0_logits" if result.target == "x0" else "eps",
                   "description": target_description(result.target)},
        "threshold": result.threshold, "region_empty": result.region_empty,
        "region": "whole image (the final prediction is empty)" if result.region_empty else
                  f"final prediction >= {result.threshold:g}",
        "region_fraction": float(result.region.mean()), "final_foreground_fraction":
            float((result.trajectory.final_prob >= result.threshold).mean()),
        "scores": {str(t): float(s) for t, s in zip(ts, result.scores)},
        "normalisation": "ReLU(sum_c mean(grad_c) A_c), bilinear to the network size, divided by its own maximum "
                         "(the raw maximum is 'peak'); mass_in_region = share of the map's sum inside R (None when R "
                         "is the whole image or the map is all zero)",
        "cams": {name: per_step(name) for name in v.layers}, "prior": prior,
    }


def write_outputs(out: str | Path, result: GradCamResult, meta: dict) -> dict:
    """The figures, gradcam.json and gradcam.md of ``result`` under ``out``; returns the json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(result, meta)
    title = _title(summary)
    files = [plot_grid(out / "gradcam_grid.png", result, title)[0]]
    if result.views.psa:
        files.append(plot_pairs(out / "psa.png", result, title))
    if result.prior_cam is not None:
        files.append(plot_prior(out / "prior.png", result, summary))
    files.append(plot_trajectory(out / "trajectory.png", result, title))
    summary["files"] = [p.name for p in [*files, out / "gradcam.json", out / "gradcam.md"]]
    atomic_write_text(out / "gradcam.md", format_table(summary))
    atomic_write_text(out / "gradcam.json", json.dumps(summary, indent=2))
    return summary


def _title(s: dict) -> str:
    where = "R = whole image (the final prediction is empty)" if s["region_empty"] else (
        f"R = final prediction >= {s['threshold']:g} ({100 * s['region_fraction']:.1f}% of the image)")
    return (f"{s.get('model', '')} {Path(str(s.get('run', ''))).name}, image {s.get('id', '')}, {s.get('sampler')} "
            f"{s.get('steps')} steps, seed {s.get('seed')}\ntarget: {s['target']['description']}; {where}")


def _suptitle(fig, text: str, width_in: float) -> None:
    """A figure title wrapped to the figure's width (about 16 characters per inch at 8 pt)."""
    lines = [textwrap.fill(line, max(40, int(16 * width_in))) for line in text.splitlines()]
    fig.suptitle("\n".join(lines), fontsize=8)


def _grey(image: np.ndarray) -> np.ndarray:
    """[C,H,W] in [-1,1] -> grey [H,W] in [0,1]."""
    return np.clip((image.mean(0) + 1) / 2, 0, 1)


def _show_image(ax, image: np.ndarray) -> None:
    rgb = np.clip((np.moveaxis(image, 0, -1) + 1) / 2, 0, 1)
    ax.imshow(rgb if rgb.shape[-1] == 3 else rgb[..., 0], cmap="gray", vmin=0, vmax=1)


def _outline(ax, mask: np.ndarray, colour: str, width: float = 1.0) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=width)


def _cam_cell(ax, grey: np.ndarray, cam: np.ndarray, region: np.ndarray | None):
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    handle = ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    if region is not None:
        _outline(ax, region, "white", 0.6)
    if not cam.any():  # the ReLU of Grad-CAM left nothing: no positive evidence anywhere
        ax.text(0.5, 0.5, "all zero", color="white", fontsize=7, ha="center", va="center", transform=ax.transAxes)
    return handle


def _finish(fig, axes: np.ndarray, handle, title: str, path: Path) -> None:
    """Clear the ticks, add the Grad-CAM colour bar and the wrapped title, and save the figure."""

    for ax in axes.flat:
        _clean(ax)
    fig.colorbar(handle, ax=axes.ravel().tolist(), shrink=min(1.0, 3.0 / axes.shape[0]), aspect=15,
                 label="Grad-CAM / its max")
    _suptitle(fig, title, fig.get_figwidth())
    save(fig, path)


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_grid(path: Path, result: GradCamResult, title: str) -> tuple[Path, tuple[int, int]]:
    """Fig. 6: one row per grid layer (grouped, labelled), one column per chosen step from T down to 0, after a
    first column with the image and the final prediction's outline. Returns the path and (rows, columns)."""

    plt = pyplot()
    rows = [(group, name) for group, names in result.views.groups.items() for name in names]
    k = len(result.cam_steps)
    shape = (len(rows), k + 1)
    fig, axes = plt.subplots(*shape, figsize=(1.45 * (k + 1) + 1.0, 1.45 * len(rows) + 0.8), squeeze=False,
                             layout="constrained")
    grey = _grey(result.image)
    region = None if result.region_empty else result.region
    final = result.trajectory.final_prob >= result.threshold
    handle = None
    for i, (group, name) in enumerate(rows):
        first = axes[i, 0]
        _show_image(first, result.image)
        _outline(first, final, "yellow", 1.0)
        first.set_ylabel(f"{group}\n{name}", fontsize=7)
        for j, t in enumerate(result.cam_timesteps):
            handle = _cam_cell(axes[i, j + 1], grey, result.cams[name][j], region)
            if i == 0:
                axes[i, j + 1].set_title(f"t = {t}", fontsize=8)
        if i > 0 and rows[i - 1][0] != group:
            for ax in axes[i]:
                ax.spines["top"].set(color="black", linewidth=2.5)
    axes[0, 0].set_title("image, final mask" + (" (empty)" if result.region_empty else ""), fontsize=8)
    _finish(fig, axes, handle, f"Grad-CAM per layer along the trajectory (t from T to 0; white outline: R)\n{title}",
            path)
    return path, shape


def plot_pairs(path: Path, result: GradCamResult, title: str) -> Path:
    """Fig. 7: per (before, after) pair, the CAM of the before layer (top) and of the after layer (bottom)."""

    plt = pyplot()
    pairs = result.views.psa
    k = len(result.cam_steps)
    fig, axes = plt.subplots(2 * len(pairs), k, figsize=(1.45 * k + 1.0, 1.45 * 2 * len(pairs) + 0.8),
                             squeeze=False, layout="constrained")
    grey = _grey(result.image)
    region = None if result.region_empty else result.region
    handle = None
    for p, (before, after) in enumerate(pairs):
        for r, (which, name) in enumerate((("before", before), ("after", after))):
            row = axes[2 * p + r]
            for j, t in enumerate(result.cam_timesteps):
                handle = _cam_cell(row[j], grey, result.cams[name][j], region)
                if p == 0 and r == 0:
                    row[j].set_title(f"t = {t}", fontsize=8)
            row[0].set_ylabel(f"{which}\n{name}", fontsize=7)
            if p > 0 and r == 0:
                for ax in row:
                    ax.spines["top"].set(color="black", linewidth=2.5)
    _finish(fig, axes, handle, f"Grad-CAM before (top) and after (bottom) each pair's module (white outline: R)\n"
            f"{title}", path)
    return path


def plot_prior(path: Path, result: GradCamResult, summary: dict) -> Path:
    """Fig. 8: the image and the CAM of the prior layer for its auxiliary classification logit."""

    plt = pyplot()
    p = summary["prior"]
    fig, axes = plt.subplots(1, 2, figsize=(5.6, 3.3), layout="constrained")
    _show_image(axes[0], result.image)
    _outline(axes[0], result.trajectory.final_prob >= result.threshold, "yellow")
    axes[0].set_title("image, final mask", fontsize=8)
    _cam_cell(axes[1], _grey(result.image), result.prior_cam, None if result.region_empty else result.region)
    axes[1].set_title(f"{p['layer']}\ntarget {p['target']} = {p['logit']:.2f} (p = {p['probability']:.2f}), "
                      f"t = {p['t']}", fontsize=7)
    for ax in axes:
        _clean(ax)
    fig.suptitle(f"prior branch Grad-CAM: {summary.get('model', '')}, image {summary.get('id', '')}", fontsize=8)
    save(fig, path)
    return path


def plot_trajectory(path: Path, result: GradCamResult, title: str) -> Path:
    """Fig. 13: x_t (top) and the x0 probability predicted (bottom) at the chosen steps, then the final sample
    (top) and the final mask (bottom)."""

    plt = pyplot()
    traj = result.trajectory
    k = len(result.cam_steps)
    fig, axes = plt.subplots(2, k + 1, figsize=(1.45 * (k + 1) + 0.8, 3.9), squeeze=False, layout="constrained")
    for j, step in enumerate(result.cam_steps):
        axes[0, j].imshow(traj.x_t[step], cmap="gray", vmin=-2, vmax=2)
        axes[0, j].set_title(f"t = {int(traj.timesteps[step])}", fontsize=8)
        axes[1, j].imshow(traj.x0_prob[step], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("x_t (grey -2..2)", fontsize=7)
    axes[1, 0].set_ylabel("x0 probability (0..1)", fontsize=7)
    axes[0, k].imshow(traj.final_prob, cmap="gray", vmin=0, vmax=1)
    axes[0, k].set_title("final (x_0 + 1) / 2", fontsize=8)
    _show_image(axes[1, k], result.image)
    final = traj.final_prob >= result.threshold
    axes[1, k].imshow(np.ma.masked_where(~final, final.astype(float)), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
    _outline(axes[1, k], final, "yellow")
    axes[1, k].set_title(f"final mask ({100 * final.mean():.1f}%)", fontsize=8)
    for ax in axes.flat:
        _clean(ax)
    _suptitle(fig, f"sampling trajectory ({len(traj.timesteps)} steps; columns: the Grad-CAM steps)\n{title}",
              fig.get_figwidth())
    save(fig, path)
    return path


def format_table(summary: dict) -> str:
    """gradcam.md: the settings, then per layer and step the share of the CAM's mass inside R and its peak."""
    s = summary
    ts = s["cam_timesteps"]
    lines = [f"# Grad-CAM along one sampling trajectory: {s.get('model', '')} {s.get('run', '')}", "",
             f"- image: {s.get('image', '')} (id {s.get('id', '')}, {s.get('size', '')} px)",
             f"- sampler: {s.get('sampler')} {s.get('steps')} steps, seed {s.get('seed')}; Grad-CAM at t = "
             f"{', '.join(map(str, ts))}",
             f"- target: {s['target']['description']}",
             f"- R: {s['region']} ({100 * s['region_fraction']:.1f}% of the image)", "",
             "Per cell: share of the CAM's mass inside R (peak = raw Grad-CAM maximum). A share above the R "
             f"fraction ({s['region_fraction']:.3f}) means the layer looks at R more than at the rest.", "",
             "| layer | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]

    def cell(entry: dict) -> str:
        share = "n/a" if entry["mass_in_region"] is None else f"{entry['mass_in_region']:.2f}"
        return f"{share} ({entry['peak']:.2g})"

    for name, entries in s["cams"].items():
        lines.append(f"| {name} | " + " | ".join(cell(e) for e in entries) + " |")
    lines += ["", "target value per step: " + ", ".join(f"t={t}: {v:.3g}" for t, v in s["scores"].items())]
    if s.get("prior"):
        p = s["prior"]
        share = "n/a" if p["mass_in_region"] is None else f"{p['mass_in_region']:.2f}"
        lines.append(f"prior: {p['layer']} for {p['target']} = {p['logit']:.3f} (p = {p['probability']:.2f}) at "
                     f"t = {p['t']}: share in R {share}, peak {p['peak']:.2g}")
    return "\n".join(lines) + "\n"
