"""The "Analysing Diffusion Segmentation for Medical Images" study (Öttl et al., arXiv preprint 2024): its own pieces.

Where the study lives:
- the three architectures it compares: ``models/ensemdiff.py`` (EnsemDiff), ``models/segdiff.py`` (SegDiff),
  ``models/medsegdiff.py`` (MedSegDiff), and their presets;
- the feed-forward rule (experiment E1: the same network trained with random noise as x_t and Dice + BCE, sampled
  in one shot): :data:`FEEDFORWARD` and the ``feedforward`` objective here; ``build.py`` applies the rule once
  to every part it builds for a ``diffusion.mode: feedforward`` run;
- the timestep fingerprint (sec. 4.3: the per-timestep mask error, with and without the image) and the
  fingerprint timestep sampler that weights training by its slope: ``fingerprint`` here, the curve in
  ``diffusion/recoverability.py``, the analysis and its figures ``analysis/fingerprint.py`` (``lesiondiff
  analyze fingerprint``);
- the diffusion against feed-forward comparison: ``experiments/compare.py`` (``lesiondiff compare``);
- ECE (10 bins): ``uncertainty.py`` and ``engine/evaluate.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..config import DiffusionConfig
from ..diffusion.objectives import OBJECTIVES, LossOutput, Objective, dice_bce
from ..diffusion.recoverability import training_slope
from ..diffusion.timesteps import TIMESTEP_SAMPLERS, TimestepSampler
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput

FEEDFORWARD = {"objective": "feedforward", "prediction": "x0", "sampler": "oneshot"}
"""What a feed-forward run trains and samples with, whatever its preset's diffusion settings say."""


@OBJECTIVES.register("feedforward")
class FeedForward(Objective):
    """Feed-forward training of a diffusion architecture: x_t is replaced by pure noise and t by T-1, and the
    head's x0 logits are trained with Dice + BCE (Analysing Diffusion Segmentation, experiment E1). Its loss has
    no options; the named objective's ``objective_options`` are ignored in this mode."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__(dataclasses.replace(cfg, objective_options={}))

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        t_last = torch.full_like(t, self.cfg.num_train_timesteps - 1)
        out: DenoiserOutput = model(noise, t_last, batch["image"])
        total, parts = dice_bce(out.x0, (batch["mask"] > 0).float())
        return LossOutput(total, parts)


@TIMESTEP_SAMPLERS.register("fingerprint")
class FingerprintTimesteps(TimestepSampler):
    """t drawn (with replacement) from ``fingerprint_probabilities(slope, cfg.timestep_uniform_mix)``.

    The paper (Analysing Diffusion Segmentation, sec. 4.3) proposes weighting timesteps by the derivative of
    the mask error. We change how often each t is *sampled*, not the loss weight of a uniform draw: in
    expectation both equal weighting the loss at t by T p(t), but sampling spends the batch on the informative t
    (lower gradient variance than near-zero weights on most of a uniform batch) and keeps the objective's scale.
    ``slope`` [T] is -d(recoverability)/dt of the training masks (``diffusion.recoverability.training_slope``): a
    model-free stand-in for the derivative of the mask error, known before training starts.
    """

    def __init__(self, cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None,
                 visited: list[int] | None = None, masks: torch.Tensor | None = None, seed: int = 0) -> None:
        """``slope``: the curve, when the caller has it; else computed here from the training ``masks`` [N,1,H,W]
        (un-augmented, at data.size) with noise seeded by ``seed`` from its own generator
        (``diffusion.recoverability.training_slope``), so the Trainer needs no branch for it."""
        if cfg.feedforward:
            raise LesiondiffError("diffusion.timestep_sampling=fingerprint needs diffusion mode: feed-forward "
                                  "training has no timesteps")
        if slope is None and masks is not None:
            slope = training_slope(masks, cfg, seed=seed)
        if slope is None:
            raise LesiondiffError("diffusion.timestep_sampling=fingerprint needs the training masks (or their "
                                  "recoverability slope)")
        if len(slope) != cfg.num_train_timesteps:
            raise LesiondiffError(f"fingerprint slope has {len(slope)} values; expected one per timestep "
                                  f"({cfg.num_train_timesteps})")
        super().__init__(fingerprint_probabilities(slope, cfg.timestep_uniform_mix))

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.probs, batch_size, replacement=True, generator=generator)


def fingerprint_probabilities(slope: torch.Tensor | np.ndarray, mix: float = 0.1) -> torch.Tensor:
    """p(t) = (1 - mix) * s(t) / sum(s) + mix / T with s = max(slope, 0), float64 [T] summing to 1.

    ``mix`` keeps every t at probability >= mix / T (the network must still denoise everywhere); negative slopes
    (noise in the curve) count as 0; a slope that is 0 everywhere gives the uniform distribution.
    """
    if not 0.0 <= mix <= 1.0:
        raise LesiondiffError(f"diffusion.timestep_uniform_mix must be in [0, 1], got {mix}")
    s = torch.as_tensor(np.asarray(slope, dtype=np.float64)).clamp_min(0)
    if not torch.isfinite(s).all():
        raise LesiondiffError("fingerprint slope has non-finite values")
    n = len(s)
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if s.sum() <= 0:
        return uniform
    p = (1 - mix) * s / s.sum() + mix * uniform
    return p / p.sum()
