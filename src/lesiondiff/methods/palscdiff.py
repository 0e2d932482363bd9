"""PalScDiff (Yang and Tong, J. Intelligent & Fuzzy Systems 2024): the method's own training pieces, the
dual-head alignment loss and Progressive Augmentation Learning.

Where the method lives:
- the network (two IBPA branches, parameter-shared, eps and x0 heads): ``models/palscdiff.py``;
- the loss (``eps_bce_align``) and the easy-to-hard curriculum: this file;
- the difficulty scores that split the training images into the easy pool and the hard groups:
  ``data/difficulty.py`` (``lesiondiff data difficulty``; scored when training starts if the manifest lacks them);
- the majority-vote fusion: ``fusion.py`` (``fusion.method=majority``);
- the settings: ``presets/palscdiff.yaml`` and its ablations, ``presets/ablations/palscdiff.yaml``.

Progressive Augmentation Learning (``Curriculum``, whose stage schedule the Trainer follows): the model is
first trained on the easy samples; the hard pool is split into three groups of rising difficulty that join one
after another, each stage at a lower learning rate, with the hard samples augmented (flips and scaling, noise
injection, boundary erosion or blur) and the blur strength rising with the stage.

Difficulty groups come from the manifest column ``difficulty_group`` (0 = easy pool, 1..G = hard groups;
``lesiondiff data difficulty``, ``data/difficulty.py``). When the training rows lack it, they are scored when
training starts, with the same defaults as that command.

Stages (``curriculum`` section of the config, recorded in every run's config.yaml):
- stage s = 0 .. G trains on the rows of groups 0 .. s, drawn uniformly, so the share of hard samples grows;
- stage s begins when the training progress passes ``stage_fractions[0] + ... + stage_fractions[s-1]``
  (normalised to sum 1). Progress is ``max(step / train.steps, elapsed / train.max_minutes)``, whichever limit
  ends the run first: with a wall-clock budget the stages split the budget's time;
- the learning rate of stage s is ``train.lr * lr_factor ** s`` (the paper: "a lower learning rate");
- a hard row (group >= 1) is augmented with ``hard_augment`` at probability ``hard_augment_p`` and strength
  ``hard_strength[s-1]`` (``data.transforms.Augment``: the strength scales the noise std, the blur sigma and the
  zoom range); easy rows keep ``data.augment``.
The paper gives none of the numbers; the defaults (40 % of training on the easy pool, 20 % per hard stage,
lr x 0.5 per stage, strengths 1, 1.5, 2) are ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import CurriculumConfig
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
class Stage:
    index: int  # 0: the easy pool alone
    start: float  # training progress in [0, 1) at which it begins
    lr: float
    n_rows: int  # rows in its pool
    strength: float | None  # augmentation strength of its hard rows (None in stage 0)

    def describe(self, n_stages: int) -> str:
        pool = "easy pool" + (f" + hard groups 1-{self.index}" if self.index > 1 else
                              " + hard group 1" if self.index == 1 else "")
        aug = f", hard rows augmented at strength {self.strength:g}" if self.strength is not None else ""
        return f"stage {self.index + 1}/{n_stages}: {pool} ({self.n_rows} images), lr {self.lr:.3g}{aug}"


class Curriculum:
    """The schedule over training rows with difficulty ``groups`` [N] (0 = easy, 1..G = hard)."""

    def __init__(self, cfg: CurriculumConfig, groups: Sequence[int], base_lr: float) -> None:
        n_hard = len(cfg.hard_strength)
        if len(cfg.stage_fractions) != n_hard + 1:
            raise LesiondiffError(f"curriculum.stage_fractions needs {n_hard + 1} values (the easy stage and one "
                                  f"per hard group of curriculum.hard_strength), got {len(cfg.stage_fractions)}")
        fractions = np.asarray(cfg.stage_fractions, dtype=np.float64)
        if (fractions <= 0).any():
            raise LesiondiffError(f"curriculum.stage_fractions must be > 0, got {cfg.stage_fractions}")
        if cfg.lr_factor <= 0:
            raise LesiondiffError(f"curriculum.lr_factor must be > 0, got {cfg.lr_factor}")
        self.groups = np.asarray(groups, dtype=np.int64)
        if len(self.groups) and (self.groups.min() < 0 or self.groups.max() > n_hard):
            raise LesiondiffError(f"difficulty groups must lie in 0..{n_hard} (one per hard stage), got "
                                  f"{sorted(set(self.groups.tolist()))}")
        if not (self.groups == 0).any():
            raise LesiondiffError("the curriculum's easy pool (difficulty_group 0) is empty")
        self.cfg = cfg
        # rounded so that 0.4 + 0.2 starts at exactly 0.6 (step 24 of 40), not at 0.6000000000000001
        starts = np.round(np.concatenate([[0.0], np.cumsum(fractions)[:-1] / fractions.sum()]), 9)
        self.stages = [Stage(s, float(starts[s]), base_lr * cfg.lr_factor ** s, int((self.groups <= s).sum()),
                             None if s == 0 else float(cfg.hard_strength[s - 1])) for s in range(n_hard + 1)]
        self._augments = [None] + [Augment(cfg.hard_augment, p=cfg.hard_augment_p, strength=st.strength)
                                   for st in self.stages[1:]]

    def stage_at(self, progress: float) -> int:
        """The stage at training progress ``progress`` in [0, 1] (the last one from its start on)."""
        return max(s.index for s in self.stages if s.start <= progress)

    def pool(self, stage: int) -> torch.Tensor:
        """Row indices [n] (int64) trained on in ``stage``: groups 0 .. stage."""
        return torch.from_numpy(np.flatnonzero(self.groups <= stage))

    def augment_for(self, index: int, stage: int) -> Augment | None:
        """The hard-sample augmentation for row ``index`` in ``stage``; None for easy rows."""
        return self._augments[stage] if self.groups[index] > 0 else None

    def schedule(self) -> list[dict]:
        return [{"stage": s.index + 1, "starts_at_progress": round(s.start, 4), "lr": s.lr, "images": s.n_rows,
                 "hard_strength": s.strength} for s in self.stages]


def training_progress(step: int, steps: int, elapsed_s: float, max_minutes: float) -> float:
    """max(step / steps, elapsed / budget): the fraction done of whichever limit ends the run first."""
    progress = step / steps if steps > 0 else 0.0
    if max_minutes > 0:
        progress = max(progress, elapsed_s / (60 * max_minutes))
    return min(progress, 1.0)


def row_groups(rows: list[dict], cfg: CurriculumConfig, log: Callable[[str], None] = print) -> np.ndarray:
    """``difficulty_group`` of each row [N] int64, scored now (and logged) when any row lacks the column."""
    if all(str(r.get(GROUP_COLUMN, "")).strip() != "" for r in rows):
        try:
            return np.asarray([int(float(r[GROUP_COLUMN])) for r in rows], dtype=np.int64)
        except ValueError:
            bad = next(r for r in rows if not str(r[GROUP_COLUMN]).strip().lstrip("-").isdigit())
            raise LesiondiffError(f"{bad['image']}: difficulty_group {bad[GROUP_COLUMN]!r} is not an integer") from None
    log("curriculum: the manifest has no difficulty columns for these rows; scoring them now "
        "(lesiondiff data difficulty writes them into the manifest once)")
    scored, summary = score_manifest(Manifest(rows), split=None, easy_fraction=cfg.easy_fraction,
                                     n_hard_groups=len(cfg.hard_strength), progress=False)
    log(format_summary(summary))
    return np.asarray([int(r[GROUP_COLUMN]) for r in scored.rows()], dtype=np.int64)
