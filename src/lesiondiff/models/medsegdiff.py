"""MedSegDiff: a condition encoder joined to the denoiser by dynamic conditional encoding, with the
feature-frequency parser (FF-Parser) cleaning the denoiser's features before each merge.

Wu et al., "MedSegDiff: Medical Image Segmentation with Diffusion Probabilistic Model", MIDL 2023; analysed in
"Analysing Diffusion Segmentation for Medical Images" (MICCAI workshops 2024).

- The condition encoder (``ConditionPyramid`` of time-free ResBlocks) computes image features c_l at every
  merge point of the body, once per image in ``encode``.
- Dynamic conditional encoding at the intermediate levels: the denoiser's features h_l first pass the FF-Parser
  (FFT, a learnable complex map, inverse FFT; ``blocks.FFParser``), then
  ``h_l <- h_l + (LN(c_l) * LN(FFP(h_l))) * c_l``, MedSegDiff's attention-like anchoring of the noisy-mask
  features on the condition. LN is a layer norm over channels and pixels (GroupNorm with one group).
- The condition's deepest features are added to the bottleneck input, where MedSegDiff integrates the two
  encoders before the decoder.

Choices (``model.options``): ``dce_levels`` (default: the intermediate levels 1 .. L-2 of an L-level body,
MedSegDiff's "middle stages"; level 0 and the bottleneck use plain addition), ``ff_size`` (32: the reference
frequency grid of the FF-Parser maps, resampled to each level's feature size; MedSegDiff fixes one size).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import UNetBody
from .base import MODELS, Denoiser, DenoiserOutput
from .blocks import ConditionPyramid, FFParser, ResBlock, TimeEmbedding


class DynamicConditionalEncoding(nn.Module):
    """``h + (LN(c) * LN(FFP(h))) * c`` for denoiser features h and condition features c of one level."""

    def __init__(self, channels: int, ff_size: int) -> None:
        super().__init__()
        self.ffp = FFParser(channels, ff_size)
        self.norm_c = nn.GroupNorm(1, channels)
        self.norm_h = nn.GroupNorm(1, channels)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return h + self.norm_c(c) * self.norm_h(self.ffp(h)) * c


@MODELS.register("medsegdiff")
class MedSegDiff(Denoiser):
    def __init__(self, image_channels: int, prediction: str = "epsilon", base_channels: int = 32,
                 dce_levels: list[int] | None = None, ff_size: int = 32, out_channels: int = 1, **body) -> None:
        """``body``: the UNetBody layout (channel_mult, num_res_blocks, attention_levels, num_groups, dropout).
        ``out_channels``: of the body's output layer (0: none, for designs that add their own heads)."""
        super().__init__()
        self.prediction = prediction
        temb_dim = 4 * base_channels
        self.time = TimeEmbedding(base_channels, temb_dim)
        self.mask_in = nn.Conv2d(1, base_channels, 3, padding=1)
        self.body = UNetBody(base_channels, temb_dim=temb_dim, out_channels=out_channels, **body)
        channels, strides = self.body.level_channels, self.body.level_strides
        groups = body.get("num_groups", 8)
        stem = nn.Sequential(nn.Conv2d(image_channels, base_channels, 3, padding=1),
                             ResBlock(base_channels, base_channels, None, groups))
        self.condition_encoder = ConditionPyramid(stem, channels, strides, groups)
        n_levels = len(channels) - 1
        levels = list(range(1, n_levels - 1)) if dce_levels is None else [int(v) for v in dce_levels]
        bad = [v for v in levels if not 0 <= v < n_levels]
        if bad:
            raise ValueError(f"dce_levels {bad} outside the body's encoder levels 0..{n_levels - 1}")
        self.dce = nn.ModuleDict({str(v): DynamicConditionalEncoding(channels[v], ff_size) for v in levels})

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.condition_encoder(image)

    def body_output(self, x_t: torch.Tensor, t: torch.Tensor, condition: list[torch.Tensor]) -> torch.Tensor:
        """The body's output [B, out_channels, H, W] (its last features when out_channels is 0)."""
        def merge(level: int, h: torch.Tensor) -> torch.Tensor:
            key = str(level)
            return self.dce[key](h, condition[level]) if key in self.dce else h + condition[level]

        return self.body(self.mask_in(x_t), self.time(t), merge=merge)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: list[torch.Tensor]) -> DenoiserOutput:
        return self.head_output(self.body_output(x_t, t, condition))
