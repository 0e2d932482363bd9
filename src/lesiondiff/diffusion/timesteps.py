"""Training timestep samplers ``(batch_size, generator) -> t [B]``: which t the Trainer trains on: ``uniform`` (Ho
et al. 2020), ``aligned`` (only the timesteps the run's sampler visits; Fu et al. 2023) and, registered by its
method, ``fingerprint`` (methods/analysing.py). A sampler is built as ``cls(cfg, slope=..., visited=...,
masks=..., seed=...)`` by ``build.build_timestep_sampler``; each takes what it needs of those."""

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
                 visited: list[int] | None = None, masks: torch.Tensor | None = None, seed: int = 0) -> None:
        t = cfg.num_train_timesteps
        super().__init__(torch.full((t,), 1.0 / t, dtype=torch.float64))

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.probs), (batch_size,), generator=generator)


MAX_ALIGNED = 5


@TIMESTEP_SAMPLERS.register("aligned")
class AlignedTimesteps(TimestepSampler):
    """Train only on the K timesteps the run's sampler visits (``visited``: K = ``sample.steps`` <= 5), each with
    probability 1/K: the network learns exactly the steps it will take (Fu et al., "Importance of aligning
    training strategy with evaluation for diffusion models in 3D multiclass segmentation", DGM4MICCAI 2023). The
    run records them (``summary.json``'s ``aligned_timesteps``, ``timestep_weights.csv``)."""

    def __init__(self, cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None,
                 visited: list[int] | None = None, masks: torch.Tensor | None = None, seed: int = 0) -> None:
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
