"""Training objectives: ``(model, batch, t, noise) -> LossOutput(total, parts)``, the generic ones (eps, x0,
feed-forward); each paper's own loss is in ``methods/``.

batch: {"image": [B,C,H,W] in [-1,1], "mask": [B,1,H,W] in {-1,+1}, ...}; t: [B] integer timesteps; noise:
[B,1,H,W] standard normal, or [B,C,H,W] like the image for objectives whose ``noise_like`` is "image" (the
Trainer draws it that shape). Parts are detached scalars logged by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import DiffusionConfig
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput
from ..registry import Registry
from .schedules import training_scheduler

OBJECTIVES = Registry("objective")


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def soft_dice_per_image(logits: torch.Tensor, target01: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of each image [B] (``soft_dice_loss`` before the batch mean)."""
    p = torch.sigmoid(logits).flatten(1)
    y = target01.flatten(1)
    return 1 - (2 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)


def soft_dice_loss(logits: torch.Tensor, target01: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image (smoothing ``eps`` so empty masks give a finite, small loss), averaged."""
    return soft_dice_per_image(logits, target01, eps).mean()


def dice_bce(logits: torch.Tensor, target01: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Equal-weight soft Dice + binary cross-entropy, as the feed-forward runs of the Analysing study."""
    dice = soft_dice_loss(logits, target01)
    bce = F.binary_cross_entropy_with_logits(logits, target01)
    return dice + bce, {"dice": dice.detach(), "bce": bce.detach()}


class Objective:
    """Base: holds the forward process; subclasses implement ``__call__``.

    ``weights``: the objective's loss weights, ``defaults`` updated by ``diffusion.objective_options``; an
    option the objective does not know is an error.
    """

    defaults: dict[str, float] = {}
    noise_like: str = "mask"  # the shape of the noise the Trainer draws: "mask" [B,1,H,W] or "image" [B,C,H,W]

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.cfg = cfg
        self.scheduler = training_scheduler(cfg)
        options = dict(cfg.objective_options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise LesiondiffError(f"diffusion.objective_options: {unknown[0]!r} is not an option of objective "
                                  f"{cfg.objective!r} (known: {known})")
        try:
            self.weights = {**self.defaults, **{k: float(v) for k, v in options.items()}}
        except (TypeError, ValueError):
            raise LesiondiffError(f"diffusion.objective_options must be numbers, got {options}") from None

    def noisy(self, mask: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0 = b mask), b = ``diffusion.input_scale`` (1 unless input scaling is on)."""
        abar = self.scheduler.alphas_cumprod.to(mask.device, mask.dtype)[t].view(-1, 1, 1, 1)
        return abar.sqrt() * self.cfg.input_scale * mask + (1 - abar).sqrt() * noise

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        raise NotImplementedError


@OBJECTIVES.register("eps_mse")
class EpsMSE(Objective):
    """L = || eps - eps_theta(x_t, t, image) ||^2 (Ho et al. 2020), the loss of EnsemDiff, SegDiff, MedSegDiff."""

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), t, batch["image"], batch.get("fold"))
        mse = F.mse_loss(out.eps, noise)
        return LossOutput(mse, {"mse": mse.detach()})


@OBJECTIVES.register("x0_hybrid")
class X0Hybrid(Objective):
    """For x0-predicting designs: MSE between tanh(x0/2) and the mask in diffusion space, plus Dice + BCE."""

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), t, batch["image"], batch.get("fold"))
        mse = F.mse_loss(out.x0_diffusion_space(), batch["mask"])
        seg, parts = dice_bce(out.x0, (batch["mask"] > 0).float())
        return LossOutput(mse + seg, {"mse": mse.detach(), **parts})


@OBJECTIVES.register("x0_dice_bce")
class X0DiceBCE(Objective):
    """Dice + BCE on the x0 estimate alone, with recycling: the training of Fu et al. ("Importance of aligning
    training strategy with evaluation for diffusion models in 3D multiclass segmentation", DGM4MICCAI 2023;
    "A recycling training strategy for medical image segmentation with diffusion denoising models", MELBA
    2023), meant for ``diffusion.timestep_sampling: aligned``.

    Recycling (option ``recycle`` = p, 0 by default): with probability p per image, x_t is made from the model's
    own x0 estimate instead of the ground truth, as at inference, where the network sees its own estimate
    noised: the estimate comes from the previous, noisier timestep of the sampler's sequence (``visited``),
    x0_hat = tanh(f(q(x_prev | mask), prev) / 2), computed under ``no_grad`` and detached, then
    x_t ~ q(x_t | x0_hat). The noisiest timestep has no previous one and always starts from the ground truth.
    It costs one extra forward pass of the recycled images (within the training step, so a time budget counts
    it). Its randomness (which images, the previous step's noise) comes from torch's global generator, which
    checkpoints save, so resume stays exact."""

    defaults = {"recycle": 0.0}

    def __init__(self, cfg: DiffusionConfig, visited: list[int] | None = None) -> None:
        super().__init__(cfg)
        self.recycle = self.weights["recycle"]
        if not 0 <= self.recycle <= 1:
            raise LesiondiffError(f"diffusion.objective_options.recycle must be in [0, 1], got {self.recycle:g}")
        order = sorted(set(visited or []), reverse=True)
        self.previous = {t: order[k - 1] for k, t in enumerate(order) if k > 0}
        if self.recycle > 0 and not self.previous:
            raise LesiondiffError("diffusion.objective_options.recycle needs the sampler's timesteps: set "
                                  "diffusion.timestep_sampling: aligned with sample.steps >= 2")

    def inputs(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t of every image: from the ground truth, or (recycled) from the model's detached estimate."""
        mask = batch["mask"]
        x_t = self.noisy(mask, noise, t)
        if self.recycle <= 0:
            return x_t
        prev = torch.tensor([self.previous.get(int(v), -1) for v in t.tolist()], device=t.device)
        pick = ((prev >= 0) & (torch.rand(len(t)) < self.recycle).to(t.device)).nonzero().flatten()
        if len(pick) == 0:
            return x_t
        with torch.no_grad():
            earlier = self.noisy(mask[pick], torch.randn_like(mask[pick]), prev[pick])
            fold = batch["fold"][pick] if "fold" in batch else None
            estimate = model(earlier, prev[pick], batch["image"][pick], fold).x0_diffusion_space().detach()
        x_t = x_t.clone()
        x_t[pick] = self.noisy(estimate, noise[pick], t[pick])
        return x_t

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.inputs(model, batch, t, noise), t, batch["image"], batch.get("fold"))
        total, parts = dice_bce(out.x0, (batch["mask"] > 0).float())
        return LossOutput(total, parts)
