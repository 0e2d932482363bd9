"""One reverse process, step by step, as ``lesiondiff predict`` samples one mask, keeping x_t and the x0
probability each step implies; and the steps of it that Grad-CAM explains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...config import Config
from ...data.manifest import evenly_spaced
from ...diffusion.samplers import SAMPLERS, SchedulerSampler, start_noise
from ...diffusion.schedules import alphas_cumprod
from ...errors import LesiondiffError
from ...models import Denoiser, DenoiserOutput

DEFAULT_CAM_STEPS = 6


@dataclass
class Trajectory:
    """One reverse process: ``timesteps`` [N] (T-1 .. near 0), ``x_t`` [N,H,W] the input of each step,
    ``x0_prob`` [N,H,W] in [0,1] the x0 probability predicted at each step (clipped for eps models),
    ``final_prob`` [H,W] in [0,1] the final sample (x_0 + 1) / 2."""

    timesteps: np.ndarray
    x_t: np.ndarray
    x0_prob: np.ndarray
    final_prob: np.ndarray


def timestep_batch(t: int, like: torch.Tensor) -> torch.Tensor:
    """``t`` once per image of ``like``: [B] long, on its device."""
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


def sample_trajectory(model: Denoiser, cfg: Config, image: torch.Tensor, steps: int = 20, sampler: str = "ddim",
                      generator: torch.Generator | None = None) -> tuple[Trajectory, str]:
    """The reverse process of ``sampler`` (a scheduler-based one) for ``image`` [1,C,H,W] in [-1,1], step by step,
    with the same noise and updates as ``SchedulerSampler``. Returns the trajectory and the target kind
    ("x0" when the output carries x0 logits, else "eps")."""
    if cfg.diffusion.feedforward:
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
