"""Shared building blocks: timestep embedding, residual, attention, up/down sampling.

The residual block and attention follow improved-diffusion (Nichol & Dhariwal, 2021), which the
diffusion-segmentation papers built on. Attention uses ``scaled_dot_product_attention`` so PyTorch picks
the fastest kernel for the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer or real timesteps: t [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """t [B] -> [B, dim] through sinusoids and a two-layer MLP."""

    def __init__(self, base: int, dim: int) -> None:
        super().__init__()
        self.base = base
        self.mlp = nn.Sequential(nn.Linear(base, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Samplers pass one timestep for the whole batch of S samples: embed it once and broadcast.
        if t.numel() > 1 and bool((t == t[0]).all()):
            return self.mlp(timestep_embedding(t[:1], self.base)).expand(t.numel(), -1)
        return self.mlp(timestep_embedding(t, self.base))


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """GN-SiLU-conv, add the timestep embedding (if any), GN-SiLU-dropout-conv, plus a skip path."""

    def __init__(self, cin: int, cout: int, temb_dim: int | None, groups: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.temb = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, cout)) if temb_dim else None
        self.out_layers = nn.Sequential(
            norm(cout, groups), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.temb is not None and temb is not None:
            h = h + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """3x3 convolution from ``cin`` to ``cout`` channels at the coarse resolution, then nearest 2x upsampling.

    Convolving before upsampling costs a quarter of convolving after it; at the finest level, where most of a
    U-Net's time goes, that is the largest single saving of this body.
    """

    def __init__(self, cin: int, cout: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout or cin, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")
