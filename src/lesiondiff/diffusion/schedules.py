"""Beta schedules, expressed as diffusers scheduler configurations so training and every sampler agree.

``linear``: betas linear from beta_start to beta_end over T steps (Ho et al. 2020; 1e-4..2e-2, T=1000 in all
five papers). ``cosine``: Nichol & Dhariwal's squared-cosine schedule. ``scaled_linear``: linear in sqrt(beta).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from ..config import DiffusionConfig
from ..errors import LesiondiffError

_DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}


def scheduler_config(cfg: DiffusionConfig) -> dict:
    """Keyword arguments shared by every diffusers scheduler built for ``cfg``."""
    if cfg.schedule not in _DIFFUSERS_NAMES:
        raise LesiondiffError(f"unknown schedule {cfg.schedule!r}; known: {', '.join(_DIFFUSERS_NAMES)}")
    return dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=_DIFFUSERS_NAMES[cfg.schedule],
    )


def training_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), via ``add_noise``."""
    return DDPMScheduler(**scheduler_config(cfg))


def alphas_cumprod(cfg: DiffusionConfig) -> torch.Tensor:
    """abar_t for t = 0..T-1, float32 [T]."""
    return training_scheduler(cfg).alphas_cumprod.float()
