"""Dataclass configuration, YAML round trip and dotted command-line overrides.

Configuration flows one way: preset YAML -> :class:`Config` -> constructors. The config a run used is
saved beside its checkpoints (``config.yaml``), so a run directory is self-describing.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import LesiondiffError

MAX_SIZE = 2048
"""The largest ``data.size`` (and ``--size``); the presets use 128 px at most. Every array of an image is
size x size, S of them at predict time (``engine/memory.py``): 16384 px ended in an allocator traceback instead
of a one-line error."""
MAX_SAMPLES = 1024
"""The largest ``sample.samples`` and ``train.val_samples`` (and ``--samples``); the presets draw 20 at most. An
image's S x size x size probabilities are held at once: 100000 samples at 128 px are 6.1 GiB for one image.
What fits this machine within the bound is checked by ``engine.memory.check_run_memory``."""



def ranged(default: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Any:
    """A field with its value range declared beside it: ``lo``/``hi`` the bounds (None: unbounded), ``*_open``
    True where the bound itself is excluded. Whenever a Config is built (preset, file, overrides),
    :func:`check_values` refuses a value out of range in one line naming the key, before anything loads; the
    CLI's options and serve's limits for the same setting read the same declaration (:func:`range_of`)."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


@dataclass(frozen=True)
class DataConfig:
    manifest: str = ""
    size: int = ranged(128, 8, MAX_SIZE)  # square side in px that images and masks are resized to for the network
    channels: int = ranged(0, 0, 3)  # 0: decided from the manifest's images (1 if all grey, else 3)
    intensity_window: list[float] | None = None  # [lo, hi] in 0..255 grey levels, clipped before scaling
    augment: list[str] = field(default_factory=lambda: ["flip", "rot90"])
    train_split: str = "train"
    val_split: str = "val"
    fold: int | None = None  # with k-fold manifests: train on folds != fold, validate on fold
    val_max_images: int = ranged(32, 0, None)  # validation images, spread evenly over the validation split (sorted by id)
    include_labels: list[str] | None = None  # e.g. drop BUSI "normal" from training: ["benign", "malignant"]
    # [F, k]: train only on the training rows whose case lies outside fold k of F (data/splits.case_folds, over the
    # training rows left after include_labels); cross-fitting, the refiner's fold priors (model.options.prior_folds)
    train_folds: list[int] | None = None
    # DiffSeg's class-labelled data: also build each image's healthy version, its lesion filled from the
    # surrounding skin at the model size by "biharmonic" or "harmonic" (data/healthy.py); None: not built.
    healthy: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ensemdiff"
    base_channels: int = ranged(32, 1, None)
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = ranged(1, 1, None)
    attention_levels: list[bool] = field(default_factory=lambda: [False, False, False, True])
    num_groups: int = ranged(8, 1, None)
    dropout: float = ranged(0.0, 0, 1, False, True)
    options: dict[str, Any] = field(default_factory=dict)  # design-specific constructor arguments


@dataclass(frozen=True)
class DiffusionConfig:
    mode: str = "diffusion"  # "diffusion" or "feedforward" (random noise as x_t, Dice+BCE on x0)
    schedule: str = "linear"
    num_train_timesteps: int = ranged(1000, 2, None)
    beta_start: float = ranged(1e-4, 0, 1, True, True)
    beta_end: float = ranged(2e-2, 0, 1, True, True)
    prediction: str = "epsilon"  # what the network's head predicts: "epsilon" or "x0"
    objective: str = "eps_mse"
    # Training timesteps: "uniform" (t ~ U{0..T-1}) or "fingerprint" (p(t) from the slope of the training masks'
    # recoverability curve, Analysing Diffusion Segmentation sec. 4.3; see diffusion/timesteps.py).
    timestep_sampling: str = "uniform"
    timestep_uniform_mix: float = ranged(0.1, 0, 1)  # fingerprint sampling: share of the probability spread evenly over all t
    fingerprint_sigma: float = ranged(2.0, 0, None)  # px at data.size: Gaussian smoothing of x_t before thresholding it at 0
    objective_options: dict[str, Any] = field(default_factory=dict)  # the objective's loss weights (methods/)
    # Input scaling (Chen, "On the importance of noise scheduling for diffusion models", 2023): the mask's signal
    # enters the forward process as input_scale * mask, x_t = sqrt(abar) b m + sqrt(1 - abar) eps, a harder noise
    # level at the same schedule for b < 1; the samplers work in that scaled space and map back (1: off)
    input_scale: float = ranged(1.0, 0, 1, True, False)

    @property
    def feedforward(self) -> bool:
        """A feed-forward run: what it implies (objective, prediction, sampler) is applied in ``build.py``."""
        return self.mode == "feedforward"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = ranged(2000, 1, None)
    batch_size: int = ranged(8, 1, None)
    lr: float = ranged(1e-4, 0, None, True, False)  # the peak learning rate (after warm-up), or the constant one
    # Learning-rate schedule (engine/lr_schedule.py): "constant" or "cosine", from lr down to lr * final_lr_ratio at
    # the end of whichever limit stops the run first (train.steps, or train.max_minutes on train.clock), after a
    # linear warm-up over the first ``warmup`` steps
    schedule: str = "constant"
    warmup: int = ranged(0, 0, None)
    final_lr_ratio: float = ranged(0.0, 0, 1)
    weight_decay: float = ranged(0.0, 0, None)
    ema_decay: float = ranged(0.999, 0, 1, False, True)
    grad_clip: float = ranged(1.0, 0, None)
    val_every: int = ranged(250, 1, None)
    val_sampler: str = "ddim"
    val_steps: int = ranged(10, 1, None)
    val_samples: int = ranged(1, 1, MAX_SAMPLES)
    log_every: int = ranged(25, 1, None)
    seed: int = 0
    max_minutes: float = ranged(0.0, 0, None)  # time budget; 0 means no limit (stops cleanly, keeps last and best)
    clock: str = "wall"  # what max_minutes counts: "wall" clock or "process" CPU time (all threads)
    mixed_precision: str = "no"  # passed to Accelerate: "no", "fp16", "bf16"


@dataclass(frozen=True)
class CurriculumConfig:
    """Which rows the Trainer draws when, how it augments them and at what learning rate (``curricula.py``):
    ``name`` a registered curriculum (``palscdiff``: PalScDiff's Progressive Augmentation Learning) or ``none``,
    and its ``options``, checked against its constructor when the run is built."""

    name: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "ddim"
    steps: int = ranged(20, 1, None)
    samples: int = ranged(5, 1, MAX_SAMPLES)
    threshold: float = ranged(0.5, 0, 1, True, True)
    seed: int = ranged(0, 0, 2**63 - 1)
    max_batch: int = ranged(0, 0, None)  # most samples per network evaluation; 0: automatic by image size (see diffusion/samplers.py)
    # what the coherence, ambiguity and entropy maps are computed from: the S "probabilities" as sampled, or
    # the S "masks" (each sample >= threshold; DiffSeg's Eqs. 3-4 over its binarised outputs)
    maps: str = "probabilities"
    # the refine sampler (refiner preset): start from pure "noise" at t = T-1, or from the prior's own mask
    # noised to t = start_t ("prior", as SegRefiner starts from the coarse mask)
    start: str = "noise"
    start_t: int = ranged(500, 0, None)
    # the run's sampler's own settings, checked against its constructor (build.build_sampler): e.g. DiffSeg's
    # class_difference t_first, sigma, otsu ...; UniSegDiff's staged stride and final_eta
    options: dict[str, Any] = field(default_factory=dict)
    # members beyond the sampler's own draws (engine/members.py): test-time augmentation, member k sees the
    # image under the k-th transform of the group "none", "flips" (identity, left-right, up-down, both) or
    # "d4" (the eight flips and quarter turns), mapped back exactly; and MC dropout, the network's dropout
    # layers left on while sampling (a run trained with model.dropout > 0), so each member draws its own mask
    tta: str = "none"
    mc_dropout: bool = False


@dataclass(frozen=True)
class FusionConfig:
    # "mean", "majority", "staple", "densecrf" (the mean, then DenseCRF) or "crf_rounds" (DiffSeg's K rounds
    # of DenseCRF on random subsets of the samples, Eq. 12); the last two need pydensecrf2 (fusion.py)
    method: str = "mean"
    crf: bool = False  # DenseCRF refinement of the fused probability (needs pydensecrf2)
    # the fuser's own options, checked against its signature in fusion.py (build.build_fusion): STAPLE's
    # max_iterations, sensitivity, specificity, prior (UniSegDiff: 20, 0.9, 0.9, 0.5); densecrf's kernels
    # (iterations, w1, theta_alpha, theta_beta, w2, theta_gamma, in DiffSeg's Eq. 10 names); crf_rounds' rounds,
    # per_round, seed and the same kernels
    options: dict[str, Any] = field(default_factory=dict)
    crf_options: dict[str, Any] = field(default_factory=dict)  # crf=true: the kernels (fusion.crf_kernels)


@dataclass(frozen=True)
class Config:
    """A run's whole configuration, frozen once built (a new Config comes from :meth:`override` or
    ``dataclasses.replace``); values a run derives (its channel count) go to the run's own config.yaml."""

    preset: str = "custom"
    # the training recipe applied over the preset's method (presets/recipes/<name>.yaml); a record only: its
    # settings are already in the train and data sections
    recipe: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from .io_utils import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        cfg = _build(cls, migrate(data or {}, source), prefix="", source=source)
        check_values(cfg, source)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise LesiondiffError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise LesiondiffError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(data, source=str(path))

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` strings (values parsed as YAML) and return a new, checked Config."""
        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise LesiondiffError(f"override {item!r}: expected section.key=value")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
            node = data
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise LesiondiffError(f"unknown config key {key!r} (from override {item!r})")
                node = node[part]
            last = parts[-1]
            free = (("model", "options"), ("diffusion", "objective_options"), ("sample", "options"),
                    ("curriculum", "options"), ("fusion", "options"), ("fusion", "crf_options"))  # checked
            # against the part's constructor when it is built (build.py)
            old_key = len(parts) == 2 and (parts[0] == "curriculum" and last in OLD_CURRICULUM
                                           or parts[0] == "fusion" and last in OLD_FUSION)
            if last not in node and not (len(parts) == 3 and tuple(parts[:2]) in free) and not old_key:
                raise LesiondiffError(f"unknown config key {key!r} (from override {item!r})")
            node[last] = value
        return Config.from_dict(data, source="command-line overrides")


# Keys that moved, old -> new (section, mapping, key): still read, with one notice per config naming them.
MOVED = {("diffusion", "objective_options", k): ("sample", "options", k)
         for k in ("t_first", "t_stride", "sigma", "otsu", "threshold", "temperature", "shared_noise")}


# The curriculum section before curricula were registered (``enabled`` and PalScDiff's settings as its keys):
# old key -> its option of the palscdiff curriculum
OLD_CURRICULUM = {"enabled": None, "stage_fractions": "level_fractions", "lr_factor": "lr_factor",
                  "hard_augment": "hard_augment", "hard_augment_p": "hard_augment_p",
                  "hard_strength": "hard_strength", "easy_fraction": "easy_fraction"}


def _migrate_curriculum(section: Any) -> tuple[Any, bool]:
    """An old-style curriculum section as ``{name, options}`` (enabled: the palscdiff curriculum with its
    settings as options; disabled: none), and whether it was an enabled old-style one (worth a notice)."""
    if not isinstance(section, dict) or not any(k in section for k in OLD_CURRICULUM):
        return section, False
    enabled = bool(section.get("enabled", section.get("name", "none") != "none"))
    if not enabled:
        return {"name": "none", "options": {}}, False
    options = dict(section.get("options") or {})
    options.update({new: section[old] for old, new in OLD_CURRICULUM.items() if new and old in section})
    return {"name": section.get("name") if section.get("name", "none") != "none" else "palscdiff",
            "options": options}, True


# The flat fusion keys before fusers took typed options: old key -> (default, its option name); a key applies to
# fusion.options where the method uses it, to fusion.crf_options (the kernels) where crf is on
_KERNEL = {"crf_iterations": (5, "iterations"), "crf_w1": (10.0, "w1"), "crf_theta_alpha": (80.0, "theta_alpha"),
           "crf_theta_beta": (13.0, "theta_beta"), "crf_w2": (3.0, "w2"), "crf_theta_gamma": (3.0, "theta_gamma")}
OLD_FUSION = {"staple_max_iterations": (20, "max_iterations"), "staple_sensitivity": (0.9, "sensitivity"),
              "staple_specificity": (0.9, "specificity"), "staple_prior": (0.5, "prior"),
              "crf_rounds": (3, "rounds"), "crf_per_round": (4, "per_round"), "crf_seed": (0, "seed"), **_KERNEL}
_USES = {"staple": ("staple_",), "densecrf": tuple(_KERNEL), "crf_rounds": ("crf_rounds", "crf_per_round", "crf_seed",
                                                                           *_KERNEL)}


def _migrate_fusion(section: Any) -> tuple[Any, bool]:
    """An old flat fusion section as ``{method, crf, options, crf_options}``: each old key moves to the option
    of the fuser that uses it (and the kernels to crf_options when crf is on); keys no part used are dropped.
    Whether an old key set a value other than its default (worth a notice)."""
    if not isinstance(section, dict) or not any(k in section for k in OLD_FUSION):
        return section, False
    method, crf = section.get("method", "mean"), bool(section.get("crf", False))
    options, crf_options = dict(section.get("options") or {}), dict(section.get("crf_options") or {})
    changed = False
    for key, (default, name) in OLD_FUSION.items():
        if key not in section:
            continue
        value = section[key]
        changed = changed or value != default
        if any(key.startswith(prefix) for prefix in _USES.get(method, ())):
            options[name] = value
        if crf and key in _KERNEL:
            crf_options[name] = value
    rest = {k: v for k, v in section.items() if k not in OLD_FUSION}
    return {**rest, "options": options, "crf_options": crf_options}, changed


def migrate(data: dict[str, Any], source: str, notice: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``data`` with the keys of :data:`MOVED` at their new place (an old key's value replaces the new one's: it
    was given, e.g. as an override) and an old-style curriculum section as ``{name, options}``, and one
    deprecation line on stderr (``notice``) naming the old keys."""
    curriculum, changed = _migrate_curriculum(data.get("curriculum"))
    if curriculum is not data.get("curriculum"):
        data = {**data, "curriculum": curriculum}
    if changed:
        (notice or _stderr)(f"{source}: deprecated curriculum keys (enabled, stage_fractions, ...): now "
                            "curriculum.name palscdiff with curriculum.options (read from the old place)")
    fusion, changed = _migrate_fusion(data.get("fusion"))
    if fusion is not data.get("fusion"):
        data = {**data, "fusion": fusion}
    if changed:
        (notice or _stderr)(f"{source}: deprecated keys fusion.{{staple_*, crf_*}}: now fusion.options (the fuser's "
                            "own options) and fusion.crf_options (read from the old place)")
    moved = []
    for (sec, mapping, key), (new_sec, new_mapping, new_key) in MOVED.items():
        old = (data.get(sec) or {}).get(mapping) or {}
        if not isinstance(old, dict) or key not in old:
            continue
        data = {**data, sec: {**data[sec], mapping: {k: v for k, v in old.items() if k != key}}}
        target = dict((data.get(new_sec) or {}).get(new_mapping) or {})
        target[new_key] = old[key]
        data = {**data, new_sec: {**(data.get(new_sec) or {}), new_mapping: target}}
        moved.append((f"{sec}.{mapping}", key, f"{new_sec}.{new_mapping}"))
    if moved:
        old, new = moved[0][0], moved[0][2]
        (notice or _stderr)(f"{source}: deprecated keys {old}.{{{', '.join(k for _, k, _ in moved)}}}: now {new} "
                            "(read from the old place)")
    return data


def _stderr(line: str) -> None:
    print(f"lesiondiff: {line}", file=sys.stderr)


def ranges() -> dict[str, tuple[float | None, float | None, bool, bool]]:
    """Every ranged key's ``(lowest, highest, lowest excluded, highest excluded)``, read from the fields' own
    declarations (:func:`ranged`) each time, so that a range is declared once, beside its field, and the
    config's, the CLI's and serve's checks all read it."""
    out = {}
    for section in dataclasses.fields(Config):
        cls = section.default_factory if section.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(cls):
            out.update({f"{section.name}.{f.name}": f.metadata["range"] for f in dataclasses.fields(cls)
                        if "range" in f.metadata})
    return out


def range_of(key: str) -> tuple[float | None, float | None, bool, bool]:
    """The declared range of ``section.key`` (:func:`ranges`)."""
    return ranges()[key]


def out_of_range(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str | None:
    """None when ``value`` is within the range, else what the range is ("must be >= 1", "in (0, 1)")."""
    if (lo is None or (value > lo if lo_open else value >= lo)) and (
            hi is None or (value < hi if hi_open else value <= hi)):
        return None
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_values(cfg: Config, source: str = "config") -> None:
    """Every ranged key (:func:`ranges`) within its range, ``model.channel_mult`` positive and, for the samplers that
    start part-way, ``sample.start_t`` below the schedule's length; else a one-line error naming the key."""
    for key, rng in ranges().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        wanted = out_of_range(value, *rng)
        if wanted:
            raise LesiondiffError(f"{source}: {key} must be {wanted}, got {value!r}")
    if not cfg.model.channel_mult or any(m < 1 for m in cfg.model.channel_mult):
        raise LesiondiffError(f"{source}: model.channel_mult must be a non-empty list of integers >= 1, got "
                              f"{cfg.model.channel_mult!r}")
    if cfg.sample.start_t >= cfg.diffusion.num_train_timesteps:
        raise LesiondiffError(f"{source}: sample.start_t must be below diffusion.num_train_timesteps "
                              f"({cfg.diffusion.num_train_timesteps}), got {cfg.sample.start_t}")
    if cfg.diffusion.beta_start > cfg.diffusion.beta_end:
        raise LesiondiffError(f"{source}: diffusion.beta_start ({cfg.diffusion.beta_start:g}) must not exceed "
                              f"diffusion.beta_end ({cfg.diffusion.beta_end:g})")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise LesiondiffError(f"{source}: section {prefix.rstrip('.') or '<top>'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LesiondiffError(f"{source}: unknown config key {prefix + unknown[0]!r}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, value, prefix + name + ".", source)
        else:
            kwargs[name] = _coerce(prefix + name, value, hints[name], source)
    return cls(**kwargs)


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _scalar_kind(hint: Any) -> tuple[str | None, bool]:
    """(the scalar type a hint names, or None for anything else, such as lists; whether None is allowed), for a
    type, a typing hint (``int | None``) or an annotation string (``"int | None"``, as ``inspect`` gives for
    modules with postponed annotations)."""
    if isinstance(hint, str):
        names = [p.strip() for p in hint.split("|")]
        optional = "None" in names
        kinds = [n for n in names if n != "None"]
        return (kinds[0] if len(kinds) == 1 and kinds[0] in _SCALARS else None), optional
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0].__name__ if len(rest) == 1 and rest[0] in _SCALARS.values() else None), True
    return (hint.__name__ if hint in _SCALARS.values() else None), False


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` names (the one coercion of config keys and of the parts' options): an int
    exactly (whole floats and numeric strings too, never through float), a float (numbers and numeric strings:
    YAML reads 3e-4 as a string), a bool (True, False, 1, 0), a str; None where the hint allows it; anything else
    (lists, mappings) as it is. A value of the wrong type raises ``TypeError`` with the expected type's name."""
    kind, optional = _scalar_kind(hint)
    if value is None and optional:
        return None
    if kind is None:
        return value
    try:
        if kind == "bool":
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise ValueError
        if kind == "int":
            return _as_int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, (list, dict)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise TypeError(kind) from None


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """A config key's value checked against its field's type (:func:`coerce`): a typo should fail here, in one
    line naming the key, not deep inside an optimizer."""
    try:
        return coerce(value, hint)
    except TypeError as exc:
        raise LesiondiffError(f"{source}: config key {key!r} must be {exc}, got {value!r}") from None


def _as_int(value: Any) -> int:
    """``value`` as an exact int: ints as they are (never through float, which rounds above 2**53, so a seed of
    9007199254740993 would become ...992), whole floats (``1e3``, ``2.0``) and numeric strings; ValueError for
    anything else (a bool, a fraction, inf, nan)."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return _as_int(float(text))
