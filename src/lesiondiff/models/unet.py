"""The feed-forward U-Net baseline (Ronneberger et al., MICCAI 2015), in the same residual body as EnsemDiff.

It segments the image directly: it ignores x_t and t, has no timestep embedding, and its head predicts x0
logits, trained with Dice + BCE. Every diffusion result is compared against it on the same data and budget.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from .backbone import UNetBody
from .base import MODELS, Denoiser, DenoiserOutput


@MODELS.register("unet")
class UNet(Denoiser):
    prediction = "x0"
    takes_noise = False  # denoise() ignores x_t

    def __init__(self, image_channels: int, prediction: str = "x0", base_channels: int = 32, **body) -> None:
        """``body``: the UNetBody layout (channel_mult, num_res_blocks, attention_levels, num_groups, dropout)."""
        super().__init__()
        if prediction != "x0":
            raise ValueError("the feed-forward U-Net predicts x0 only")
        self.image_in = nn.Conv2d(image_channels, base_channels, 3, padding=1)
        self.body = UNetBody(base_channels, **body)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_in(image)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> DenoiserOutput:
        return DenoiserOutput(x0=self.body(condition))


def load_frozen(module: nn.Module, checkpoint: str | Path) -> None:
    """Load a trained segmenter's weights into ``module`` (a design's pre-trained part: the EMA weights when the
    checkpoint has them) and freeze it."""
    from ..engine.checkpoint import Checkpoint

    ckpt = Checkpoint(Path(checkpoint))
    ckpt.load_module(module, "ema" if ckpt.section("ema") else "model")
    module.requires_grad_(False)


def segmenter_pretrain_config(cfg: Config, fraction: float, base_channels: int, name: str) -> Config:
    """The config of a design's pre-trained segmenter (UniSegDiff's CFENet, the refiner's prior): this U-Net
    with ``cfg``'s layout at width ``base_channels``, feed-forward Dice + BCE on the same data and recipe, for
    ``fraction`` of ``cfg``'s steps and time budget, without a curriculum; its preset reads ``<preset>/<name>``."""
    model = dataclasses.replace(cfg.model, name="unet", options={}, base_channels=base_channels)
    diffusion = dataclasses.replace(cfg.diffusion, mode="feedforward", prediction="x0", objective="feedforward",
                                    objective_options={})
    train = dataclasses.replace(cfg.train, steps=max(1, round(fraction * cfg.train.steps)),
                                max_minutes=fraction * cfg.train.max_minutes)
    return dataclasses.replace(cfg, preset=f"{cfg.preset}/{name}", model=model, diffusion=diffusion, train=train,
                               curriculum=dataclasses.replace(cfg.curriculum, enabled=False))
