"""PalScDiff (Yang and Tong, J. Intelligent & Fuzzy Systems 2024): the method's own training pieces, the
dual-head alignment loss and Progressive Augmentation Learning.

Where the method lives:
- the network (two IBPA branches, parameter-shared, eps and x0 heads): ``models/palscdiff.py``;
- the loss (``eps_bce_align``) and the easy-to-hard curriculum: this file;
- the difficulty scores that split the training images into the easy pool and the hard groups:
  ``data/difficulty.py`` (``lesiondiff data difficulty``; scored when training starts if the manifest lacks them);
- the majority-vote fusion: ``fusion.py`` (``fusion.method=majority``);
- the settings: ``presets/palscdiff.yaml`` and its ablations, ``presets/ablations/palscdiff.yaml``.

Progressive Augmentation Learning (``ProgressiveAugmentation``, registered as the curriculum ``palscdiff``, whose
levels the generic Trainer follows through ``curricula.Curriculum``): the model is first trained on the easy
samples; the hard pool is split into three groups of rising difficulty that join one after another, each level at
a lower learning rate, with the hard samples augmented (flips and scaling, noise injection, boundary erosion or
blur) and the blur strength rising with the level. (The paper calls them stages; lesiondiff keeps "stage" for
UniSegDiff's timestep stages.)

Difficulty groups come from the manifest column ``difficulty_group`` (0 = easy pool, 1..G = hard groups;
``lesiondiff data difficulty``, ``data/difficulty.py``). When the training rows lack it, they are scored when
training starts, with the same defaults as that command.

Levels (``curriculum: {name: palscdiff, options: {...}}`` in the config, recorded in every run's config.yaml):
- level k = 0 .. G trains on the rows of groups 0 .. k, drawn uniformly, so the share of hard samples grows;
- level k begins when the training progress passes ``level_fractions[0] + ... + level_fractions[k-1]``
  (normalised to sum 1). Progress is ``max(step / train.steps, elapsed / train.max_minutes)``, whichever limit
  ends the run first (``engine/lr_schedule.training_progress``): with a time budget the levels split its time;
- the learning rate of level k is ``train.lr * lr_factor ** k`` (the paper: "a lower learning rate");
- a hard row (group >= 1) is augmented with ``hard_augment`` at probability ``hard_augment_p`` and strength
  ``hard_strength[k-1]`` (``data.transforms.Augment``: the strength scales the noise std, the blur sigma and the
  zoom range); easy rows keep ``data.augment``.
The paper gives none of the numbers; the defaults (40 % of training on the easy pool, 20 % per hard level,
lr x 0.5 per level, strengths 1, 1.5, 2) are ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..curricula import CURRICULA, Curriculum
from ..data.difficulty import format_summary, score_manifest
from ..data.manifest import Manifest
from ..data.transforms import Augment
from ..diffusion.objectives import OBJECTIVES, LossOutput, Objective
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput


def symmetric_bernoulli_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel KL(p||q) + KL(q||p) of Bernoulli(p = sigmoid(a)) and Bernoulli(q = sigmoid(b)), from logits.

    Closed form: (p - q) * (a - b), since log(p / (1-p)) = a. Non-negative, 0 exactly where a = b, and finite
    for any logits (no log of a saturated probability).
    """
    return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)


def distillation_bce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE of sigmoid(logits) against the detached soft target q = sigmoid(target_logits), minus the
    target's own entropy H(q): that is KL(q || p). The gradient is BCE's (H(q) is a constant once q is
    detached), and the value is 0 when the two agree (plain soft-target BCE would bottom out at H(q) > 0)."""
    target_logits = target_logits.detach()
    q = torch.sigmoid(target_logits)
    return (F.binary_cross_entropy_with_logits(logits, q, reduction="none")
            - F.binary_cross_entropy_with_logits(target_logits, q, reduction="none"))


def branch_alignment(a: torch.Tensor, b: torch.Tensor, w_kl: float = 1.0, w_bce: float = 1.0) -> tuple[
        torch.Tensor, dict[str, torch.Tensor]]:
    """PalScDiff's alignment loss between two branches' mask logits a, b [B,1,H,W] (pixel means):
    ``w_kl * symKL(a, b) + w_bce * (BCE(a | sg(b)) + BCE(b | sg(a))) / 2`` with the BCE terms as in
    ``distillation_bce``. 0 for identical predictions, positive otherwise."""
    kl = symmetric_bernoulli_kl(a, b).mean()
    bce = (distillation_bce(a, b).mean() + distillation_bce(b, a).mean()) / 2
    return w_kl * kl + w_bce * bce, {"align_kl": kl.detach(), "align_bce": bce.detach()}


@OBJECTIVES.register("eps_bce_align")
class EpsBCEAlign(Objective):
    """PalScDiff: L = ||eps - eps_theta||^2 + w_bce BCE(x0 logits, mask) + alignment (``branch_alignment``)
    between the two IBPA branches' x0 logits (``aux["x0_branch0"]``, ``aux["x0_branch1"]``).

    The paper's equations were lost in extraction; its text says the diffusion loss holds the noise MSE and a
    BCE on the predicted mask, and the alignment loss combines KL divergence and BCE between the branches. The
    exact forms here are ours: the BCE is on the model's x0 logits (the mean of the branches; ``models/
    palscdiff.py``), the KL is the symmetric Bernoulli KL per pixel, and each branch is pulled by BCE towards
    the other's detached prediction. A one-branch model (the ablation baseline) gets no alignment term.
    Weights (``diffusion.objective_options``, all 1 by default, not given in the paper): ``bce``, ``align_kl``,
    ``align_bce``.
    """

    defaults = {"bce": 1.0, "align_kl": 1.0, "align_bce": 1.0}

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), t, batch["image"])
        if out.eps is None or out.x0 is None:
            raise LesiondiffError("objective eps_bce_align needs a design that predicts both eps and x0 "
                                  "(e.g. palscdiff)")
        w = self.weights
        mse = F.mse_loss(out.eps, noise)
        bce = F.binary_cross_entropy_with_logits(out.x0, (batch["mask"] > 0).float())
        total, parts = mse + w["bce"] * bce, {"mse": mse.detach(), "bce": bce.detach()}
        if "x0_branch0" in out.aux and "x0_branch1" in out.aux:
            align, align_parts = branch_alignment(out.aux["x0_branch0"], out.aux["x0_branch1"], w["align_kl"],
                                                  w["align_bce"])
            total = total + align
            parts.update(align_parts)
        return LossOutput(total, parts)


GROUP_COLUMN = "difficulty_group"


@dataclass
class Level:
    index: int  # 0: the easy pool alone
    start: float  # training progress in [0, 1) at which it begins
    lr_factor: float  # its learning rate as a multiple of train.lr
    n_rows: int  # rows in its pool
    strength: float | None  # augmentation strength of its hard rows (None at level 0)

    def describe(self, n_levels: int, base_lr: float) -> str:
        pool = "easy pool" + (f" + hard groups 1-{self.index}" if self.index > 1 else
                              " + hard group 1" if self.index == 1 else "")
        aug = f", hard rows augmented at strength {self.strength:g}" if self.strength is not None else ""
        return (f"level {self.index + 1}/{n_levels}: {pool} ({self.n_rows} images), lr "
                f"{base_lr * self.lr_factor:.3g}{aug}")


@CURRICULA.register("palscdiff")
class ProgressiveAugmentation(Curriculum):
    """PalScDiff's Progressive Augmentation Learning over training rows with difficulty groups (0 = easy,
    1..G = hard; the manifest's ``difficulty_group`` column, scored now when absent): level 0 trains on the easy
    pool, each later level adds the next hard group, at ``lr_factor`` times the previous level's rate, its hard
    rows augmented with ``hard_augment`` (each with probability ``hard_augment_p``) at that level's
    ``hard_strength``. ``level_fractions``: each level's share of the run (normalised), one more than the hard
    groups. ``easy_fraction``: the share scored easy when the manifest has no difficulty columns."""

    def __init__(self, rows: list[dict], base_lr: float, log: Callable[[str], None] = print,
                 level_fractions: list[float] = (0.4, 0.2, 0.2, 0.2), lr_factor: float = 0.5,
                 hard_augment: list[str] = ("flip", "scale", "noise", "blur", "erosion"),
                 hard_augment_p: float = 0.5, hard_strength: list[float] = (1.0, 1.5, 2.0),
                 easy_fraction: float = 0.5, groups: Sequence[int] | None = None) -> None:
        """``groups``: the rows' difficulty groups [N], when the caller has them (else read or scored)."""
        super().__init__(rows, base_lr, log)
        n_hard = len(hard_strength)
        if len(level_fractions) != n_hard + 1:
            raise LesiondiffError(f"curriculum.options.level_fractions needs {n_hard + 1} values (the easy level "
                                  f"and one per hard group of hard_strength), got {len(level_fractions)}")
        fractions = np.asarray(level_fractions, dtype=np.float64)
        if (fractions <= 0).any():
            raise LesiondiffError(f"curriculum.options.level_fractions must be > 0, got {list(level_fractions)}")
        if lr_factor <= 0:
            raise LesiondiffError(f"curriculum.options.lr_factor must be > 0, got {lr_factor}")
        if not 0 <= hard_augment_p <= 1 or not 0 < easy_fraction < 1:
            raise LesiondiffError("curriculum.options: hard_augment_p must lie in [0, 1] and easy_fraction in "
                                  f"(0, 1), got {hard_augment_p}, {easy_fraction}")
        self.hard_augment, self.hard_augment_p = list(hard_augment), hard_augment_p
        self.groups = np.asarray(groups if groups is not None else row_groups(rows, easy_fraction, n_hard, log),
                                 dtype=np.int64)
        if len(self.groups) and (self.groups.min() < 0 or self.groups.max() > n_hard):
            raise LesiondiffError(f"difficulty groups must lie in 0..{n_hard} (one per hard level), got "
                                  f"{sorted(set(self.groups.tolist()))}")
        if not (self.groups == 0).any():
            raise LesiondiffError("the curriculum's easy pool (difficulty_group 0) is empty")
        # rounded so that 0.4 + 0.2 starts at exactly 0.6 (step 24 of 40), not at 0.6000000000000001
        starts = np.round(np.concatenate([[0.0], np.cumsum(fractions)[:-1] / fractions.sum()]), 9)
        self.levels = [Level(k, float(starts[k]), lr_factor ** k, int((self.groups <= k).sum()),
                             None if k == 0 else float(hard_strength[k - 1])) for k in range(n_hard + 1)]
        self._augments = [None] + [Augment(self.hard_augment, p=hard_augment_p, strength=lv.strength)
                                   for lv in self.levels[1:]]

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def start(self, level: int) -> float:
        return self.levels[level].start

    def level_at(self, progress: float) -> int:
        """The level at training progress ``progress`` in [0, 1] (the last one from its start on)."""
        return max(lv.index for lv in self.levels if lv.start <= progress)

    def pool(self, level: int) -> torch.Tensor:
        """Row indices [n] (int64) trained on at ``level``: groups 0 .. level."""
        return torch.from_numpy(np.flatnonzero(self.groups <= level))

    def augment_for(self, index: int, level: int) -> Augment | None:
        """The hard-sample augmentation for row ``index`` at ``level``; None for easy rows."""
        return self._augments[level] if self.groups[index] > 0 else None

    def lr_factor(self, level: int) -> float:
        return self.levels[level].lr_factor

    def describe(self, level: int) -> str:
        return self.levels[level].describe(self.n_levels, self.base_lr)

    def schedule(self) -> list[dict]:
        return [{"level": lv.index + 1, "starts_at_progress": round(lv.start, 4), "lr": self.base_lr * lv.lr_factor,
                 "images": lv.n_rows, "hard_strength": lv.strength} for lv in self.levels]


def row_groups(rows: list[dict], easy_fraction: float = 0.5, n_hard_groups: int = 3,
               log: Callable[[str], None] = print) -> np.ndarray:
    """``difficulty_group`` of each row [N] int64, scored now (and logged) when any row lacks the column."""
    if all(str(r.get(GROUP_COLUMN, "")).strip() != "" for r in rows):
        try:
            return np.asarray([int(float(r[GROUP_COLUMN])) for r in rows], dtype=np.int64)
        except ValueError:
            bad = next(r for r in rows if not str(r[GROUP_COLUMN]).strip().lstrip("-").isdigit())
            raise LesiondiffError(f"{bad['image']}: difficulty_group {bad[GROUP_COLUMN]!r} is not an integer") from None
    log("curriculum: the manifest has no difficulty columns for these rows; scoring them now "
        "(lesiondiff data difficulty writes them into the manifest once)")
    scored, summary = score_manifest(Manifest(rows), split=None, easy_fraction=easy_fraction,
                                     n_hard_groups=n_hard_groups, progress=False)
    log(format_summary(summary))
    return np.asarray([int(r[GROUP_COLUMN]) for r in scored.rows()], dtype=np.int64)
