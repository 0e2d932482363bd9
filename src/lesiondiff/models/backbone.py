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
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(chans))):
            c, attn = chans[level], attention_levels[level]
            blocks = nn.ModuleList()
            for i in range(num_res_blocks):
                blocks.append(ResBlock(cin + (c if i == 0 else 0), c, temb_dim, num_groups, dropout))
                cin = c
                if attn:
                    blocks.append(AttentionBlock(c, groups=num_groups))
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(c, chans[level - 1]))
                cin = chans[level - 1]
            else:
                self.upsample.append(nn.Identity())
        self.out = (nn.Sequential(norm(cin, num_groups), nn.SiLU(), nn.Conv2d(cin, out_channels, 3, padding=1))
                    if out_channels > 0 else nn.Identity())
        self.multiple = 2 ** (len(chans) - 1)
        n = len(chans)
        self.level_channels = [base_channels] + chans[:-1] + [chans[-1]]
        self.level_strides = [2 ** min(level, n - 1) for level in range(n + 1)]

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        for block in blocks:
            h = block(h, temb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None, merge=None) -> torch.Tensor:
        """``merge``: optional ``(level, h) -> h`` joining condition features at each level (see the module)."""
        skips = []
        for level, (blocks, down) in enumerate(zip(self.down, self.downsample)):
            if merge is not None:
                h = merge(level, h)
            h = self._run(blocks, h, temb)
            skips.append(h)
            h = down(h)
        if merge is not None:
            h = merge(len(self.down), h)
        h = self._run(self.mid, h, temb)
        for blocks, up in zip(self.up, self.upsample):
            h = self._run(blocks, torch.cat([h, skips.pop()], dim=1), temb)
            h = up(h)
        return self.out(h)
