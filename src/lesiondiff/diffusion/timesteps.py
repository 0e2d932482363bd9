"""Training timestep samplers ``(batch_size, generator) -> t [B]``: which t the Trainer trains on, ``uniform``
(Ho et al. 2020) or ``fingerprint``, which emphasises the timesteps where the masks' information is being lost
(Analysing Diffusion Segmentation, sec. 4.3; the curve is ``diffusion/recoverability.py``)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import DiffusionConfig
from ..errors import LesiondiffError
from ..registry import Registry

TIMESTEP_SAMPLERS = Registry("timestep sampling")


class TimestepSampler:
    """Draws training timesteps t [B] (int64, in [0, T)) with probabilities ``probs`` [T] (float64, sum 1)."""

    def __init__(self, probs: torch.Tensor) -> None:
        self.probs = probs

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


@TIMESTEP_SAMPLERS.register("uniform")
class UniformTimesteps(TimestepSampler):
    """p(t) = 1/T, drawn by ``torch.randint(0, T, (B,), generator)``: the draw every run made before timestep
    samplers existed, so the generator stream, and with it exact resume, is unchanged."""

    def __init__(self, cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None,
                 visited: list[int] | None = None) -> None:
        t = cfg.num_train_timesteps
        super().__init__(torch.full((t,), 1.0 / t, dtype=torch.float64))

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.probs), (batch_size,), generator=generator)


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
                 visited: list[int] | None = None) -> None:
        if cfg.feedforward:
            raise LesiondiffError("diffusion.timestep_sampling=fingerprint needs diffusion mode: feed-forward "
                                  "training has no timesteps")
        if slope is None:
            raise LesiondiffError("diffusion.timestep_sampling=fingerprint needs the training masks' "
                                  "recoverability slope (the Trainer computes it)")
        if len(slope) != cfg.num_train_timesteps:
            raise LesiondiffError(f"fingerprint slope has {len(slope)} values; expected one per timestep "
                                  f"({cfg.num_train_timesteps})")
        super().__init__(fingerprint_probabilities(slope, cfg.timestep_uniform_mix))

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.probs, batch_size, replacement=True, generator=generator)


MAX_ALIGNED = 5


@TIMESTEP_SAMPLERS.register("aligned")
class AlignedTimesteps(TimestepSampler):
    """Train only on the K timesteps the run's sampler visits (``visited``: K = ``sample.steps`` <= 5), each with
    probability 1/K: the network learns exactly the steps it will take (Fu et al., "Importance of aligning
    training strategy with evaluation for diffusion models in 3D multiclass segmentation", DGM4MICCAI 2023). The
    run records them (``summary.json``'s ``aligned_timesteps``, ``timestep_weights.csv``)."""

    def __init__(self, cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None,
                 visited: list[int] | None = None) -> None:
        if cfg.feedforward:
            raise LesiondiffError("diffusion.timestep_sampling=aligned needs diffusion mode: feed-forward training "
                                  "has no timesteps")
        if not visited:
            raise LesiondiffError("diffusion.timestep_sampling=aligned needs a sampler that visits a fixed "
                                  "sequence of timesteps (ddim, ddpm, dpmsolver, unipc, refine)")
        if len(visited) > MAX_ALIGNED:
            raise LesiondiffError(f"diffusion.timestep_sampling=aligned trains on the sampler's sample.steps "
                                  f"timesteps, at most {MAX_ALIGNED}; this run's sampler visits {len(visited)}")
        self.visited = torch.tensor(sorted(set(visited), reverse=True), dtype=torch.int64)
        probs = torch.zeros(cfg.num_train_timesteps, dtype=torch.float64)
        probs[self.visited] = 1.0 / len(self.visited)
        super().__init__(probs)

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.visited[torch.randint(0, len(self.visited), (batch_size,), generator=generator)]


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

