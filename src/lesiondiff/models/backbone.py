"""A lean residual U-Net body shared by the designs (EnsemDiff, SegDiff, MedSegDiff, the feed-forward U-Net).

Compared with the improved-diffusion U-Net (and MONAI's DiffusionModelUNet) it keeps one skip connection per
resolution level instead of one per block, and puts attention only where ``attention_levels`` asks (by default
the lowest resolution). Most of the compute of a U-Net is at full resolution; this layout moves the parameters
to the coarse levels, which is what makes it fast on a CPU at a given parameter count.

Designs with a separate image encoder join it to the body through ``merge(level, h) -> h``, called at the input
of every encoder level (level 0 at full resolution, after the design's stem; level l after l downsamplings) and
once more at the input of the bottleneck (level ``len(channel_mult)``). ``level_channels`` and
``level_strides`` give the channels and the downsampling factor of ``h`` at each of those points.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionBlock, Downsample, ResBlock, Upsample, norm


class UNetBody(nn.Module):
    """Features [B, base, H, W] (after the design's own input convolution) -> output [B, out_channels, H, W].

    H and W must be divisible by 2 ** (len(channel_mult) - 1). ``out_channels=0``: no output layer; the
    decoder's last features [B, base, H, W] are returned, for designs with their own heads (PalScDiff).
    """

    def __init__(
        self,
        base_channels: int = 32,
        channel_mult: list[int] = (1, 2, 4, 4),
        num_res_blocks: int = 1,
        attention_levels: list[bool] = (False, False, False, True),
        num_groups: int = 8,
        dropout: float = 0.0,
        *,
        out_channels: int = 1,
        temb_dim: int | None = None,
    ) -> None:
        super().__init__()
        channel_mult, attention_levels = list(channel_mult), list(attention_levels)
        if len(attention_levels) != len(channel_mult):
            raise ValueError("attention_levels needs one entry per channel_mult level")
        chans = [base_channels * m for m in channel_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cin = base_channels
        for level, (c, attn) in enumerate(zip(chans, attention_levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cin, c, temb_dim, num_groups, dropout))
                cin = c
                if attn:
                    blocks.append(AttentionBlock(c, groups=num_groups))
            self.down.append(blocks)
            self.downsample.append(Downsample(c) if level < len(chans) - 1 else nn.Identity())
        self.mid = nn.ModuleList(
            [ResBlock(cin, cin, temb_dim, num_groups, dropout), AttentionBlock(cin, groups=num_groups),
             ResBlock(cin, cin, temb_dim, num_groups, dropout)]
        )
        self.up, self.upsample, self.out = build_decoder(chans, attention_levels, num_res_blocks, num_groups, dropout,
                                                         out_channels, temb_dim)
        self.multiple = 2 ** (len(chans) - 1)
        n = len(chans)
        self.level_channels = [base_channels] + chans[:-1] + [chans[-1]]
        self.level_strides = [2 ** min(level, n - 1) for level in range(n + 1)]

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        for block in blocks:
            h = block(h, temb) if isinstance(block, ResBlock) else block(h)
        return h

    def encode(self, h: torch.Tensor, temb: torch.Tensor | None = None, merge=None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder and the bottleneck: ``(bottleneck output, skips)`` (one skip per level)."""
        skips = []
        for level, (blocks, down) in enumerate(zip(self.down, self.downsample)):
            if merge is not None:
                h = merge(level, h)
            h = self._run(blocks, h, temb)
            skips.append(h)
            h = down(h)
        if merge is not None:
            h = merge(len(self.down), h)
        return self._run(self.mid, h, temb), skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor | None = None,
               decoder: tuple[nn.ModuleList, nn.ModuleList, nn.Module] | None = None,
               features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """A decoder (this body's own, or ``decoder = (up, upsample, out)`` from ``build_decoder`` for designs
        with several) over the encoder's output. ``features``: if a list, it receives the decoder's features at
        each level, coarsest first (before each upsampling; channels ``chans[level]``, stride ``2 ** level``)."""
        up, upsample, out = decoder or (self.up, self.upsample, self.out)
        skips = list(skips)
        for blocks, upsampling in zip(up, upsample):
            h = self._run(blocks, torch.cat([h, skips.pop()], dim=1), temb)
            if features is not None:
                features.append(h)
            h = upsampling(h)
        return out(h)

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None, merge=None,
                features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``merge``: optional ``(level, h) -> h`` joining condition features at each level (see the module);
        ``features``: optional list that receives the bottleneck output, then the decoder features (``decode``)."""
        h, skips = self.encode(h, temb, merge)
        if features is not None:
            features.append(h)
        return self.decode(h, skips, temb, features=features)


def build_decoder(chans: list[int], attention_levels: list[bool], num_res_blocks: int, num_groups: int,
                  dropout: float, out_channels: int, temb_dim: int | None
                  ) -> tuple[nn.ModuleList, nn.ModuleList, nn.Module]:
    """``(up, upsample, out)`` of a U-Net decoder over levels of widths ``chans`` (see ``UNetBody``): per level,
    coarsest first, ResBlocks joining that level's skip, then an upsampling to the next level's width; ``out``
    maps the full-resolution features to ``out_channels`` (0: identity)."""
    up, upsample = nn.ModuleList(), nn.ModuleList()
    cin = chans[-1]
    for level in reversed(range(len(chans))):
        c, attn = chans[level], attention_levels[level]
        blocks = nn.ModuleList()
        for i in range(num_res_blocks):
            blocks.append(ResBlock(cin + (c if i == 0 else 0), c, temb_dim, num_groups, dropout))
            cin = c
            if attn:
                blocks.append(AttentionBlock(c, groups=num_groups))
        up.append(blocks)
        if level > 0:
            upsample.append(Upsample(c, chans[level - 1]))
            cin = chans[level - 1]
        else:
            upsample.append(nn.Identity())
    out = (nn.Sequential(norm(cin, num_groups), nn.SiLU(), nn.Conv2d(cin, out_channels, 3, padding=1))
           if out_channels > 0 else nn.Identity())
    return up, upsample, out
