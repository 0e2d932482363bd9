"""The feed-forward U-Net baseline (Ronneberger et al., MICCAI 2015), in the same residual body as EnsemDiff.

It segments the image directly: it ignores x_t and t, has no timestep embedding, and its head predicts x0
logits, trained with Dice + BCE. Every diffusion result is compared against it on the same data and budget.
"""

from __future__ import annotations

import torch
from torch import nn

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
