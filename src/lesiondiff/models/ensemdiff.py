"""EnsemDiff: the image is concatenated to the noisy mask and a time-conditioned U-Net predicts the noise.

Wolleb et al., "Diffusion Models for Implicit Image Segmentation Ensembles", MIDL 2022; analysed as
"EnsemDiff" in "Analysing Diffusion Segmentation for Medical Images" (MICCAI workshops 2024).

The first convolution over ``concat(x_t, image)`` is split into a convolution over x_t plus one over the
image. The two are the same linear map, but the image part is computed once per image in ``encode`` and reused
across all samples and steps.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import UNetBody
from .base import MODELS, Denoiser, DenoiserOutput
from .blocks import TimeEmbedding


@MODELS.register("ensemdiff")
class EnsemDiff(Denoiser):
    def __init__(self, image_channels: int, prediction: str = "epsilon", base_channels: int = 32, **body) -> None:
        """``body``: the UNetBody layout (channel_mult, num_res_blocks, attention_levels, num_groups, dropout)."""
        super().__init__()
        self.prediction = prediction
        temb_dim = 4 * base_channels
        self.time = TimeEmbedding(base_channels, temb_dim)
        self.mask_in = nn.Conv2d(1, base_channels, 3, padding=1)
        self.image_in = nn.Conv2d(image_channels, base_channels, 3, padding=1, bias=False)
        self.body = UNetBody(base_channels, temb_dim=temb_dim, **body)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_in(image)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> DenoiserOutput:
        return self.head_output(self.body(self.mask_in(x_t) + condition, self.time(t)))
