"""SegDiff: a separate image encoder of residual-in-residual dense blocks whose features are added to the
denoiser's encoder features at every resolution level.

Amit et al., "SegDiff: Image Segmentation with Diffusion Probabilistic Models", 2021; analysed in "Analysing
Diffusion Segmentation for Medical Images" (MICCAI workshops 2024).

SegDiff sums F(image), an RRDB stack, with G(x_t), a convolution over the noisy mask, and feeds the sum to a
time-conditioned U-Net. As the Analysing study describes it, the image features also join the denoiser's
encoder at every resolution level. Here F is an RRDB trunk at full resolution followed by a pyramid (one
stride-2 convolution and one ResBlock per level, ``ConditionPyramid``); level 0 of the pyramid is added to the
noisy-mask stem (SegDiff's F + G), and level l to the body's features at the input of encoder level l.

Choices where this differs from the paper (configurable through ``model.options``): ``num_rrdb`` (default 1;
SegDiff used more) and ``rrdb_growth`` (default 8; ESRGAN used 32) keep the full-resolution image encoder at
about the cost of the denoiser body, so that it does not dominate a training step on a CPU. The whole image encoder is
in ``encode``, so it runs once per image and is reused by all S samples and all sampling steps.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import UNetBody
from .base import MODELS, Denoiser, DenoiserOutput
from .blocks import RRDB, ConditionPyramid, TimeEmbedding


@MODELS.register("segdiff")
class SegDiff(Denoiser):
    def __init__(self, image_channels: int, prediction: str = "epsilon", base_channels: int = 32,
                 num_rrdb: int = 1, rrdb_growth: int = 8, **body) -> None:
        """``body``: the UNetBody layout (channel_mult, num_res_blocks, attention_levels, num_groups, dropout)."""
        super().__init__()
        self.prediction = prediction
        temb_dim = 4 * base_channels
        self.time = TimeEmbedding(base_channels, temb_dim)
        self.mask_in = nn.Conv2d(1, base_channels, 3, padding=1)  # G
        self.body = UNetBody(base_channels, temb_dim=temb_dim, **body)
        stem = nn.Sequential(
            nn.Conv2d(image_channels, base_channels, 3, padding=1),
            *[RRDB(base_channels, rrdb_growth) for _ in range(num_rrdb)],
            nn.Conv2d(base_channels, base_channels, 3, padding=1),
        )
        channels, strides = self.body.level_channels[:-1], self.body.level_strides[:-1]  # not the bottleneck
        self.image_encoder = ConditionPyramid(stem, channels, strides, body.get("num_groups", 8))  # F

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.image_encoder(image)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: list[torch.Tensor]) -> DenoiserOutput:
        def add(level: int, h: torch.Tensor) -> torch.Tensor:
            return h + condition[level] if level < len(condition) else h

        return self.head_output(self.body(self.mask_in(x_t), self.time(t), merge=add))
