"""Shared building blocks: timestep embedding, residual, attention, up/down sampling, RRDB, FF-Parser.

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


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and all earlier outputs (ESRGAN's dense block)."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(4)]
            + [nn.Conv2d(channels + 4 * growth, channels, 3, padding=1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.convs[-1](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block (Wang et al., ESRGAN, 2018), the unit of SegDiff's image encoder.

    Three dense blocks, each added back to its input scaled by ``beta`` (0.2, as ESRGAN), and the whole added
    back to the block input scaled by ``beta`` again.
    """

    def __init__(self, channels: int, growth: int = 16, beta: float = 0.2) -> None:
        super().__init__()
        self.beta = beta
        self.dense = nn.ModuleList([DenseBlock(channels, growth) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.dense:
            h = h + self.beta * block(h)
        return x + self.beta * h


class FFParser(nn.Module):
    """MedSegDiff's feature-frequency parser: ``irfft2(rfft2(x) * W)`` with a learnable complex map W [C,h,w].

    Wu et al. (MIDL 2023) learn W at one fixed feature size. Here W lives on a reference frequency grid of
    ``size`` x ``size`` pixels (``size // 2 + 1`` columns of the real FFT), stored with its rows centred
    (fftshift), and is resampled bilinearly to the grid of the features it meets. One module then serves any
    image size, and a map learnt at one size is the same filter in normalised frequency at another. W starts at
    1 + 0j, the identity. The FFT runs in float32 with orthonormal scaling.
    """

    def __init__(self, channels: int, size: int = 32) -> None:
        super().__init__()
        self.real = nn.Parameter(torch.ones(channels, size, size // 2 + 1))
        self.imag = nn.Parameter(torch.zeros(channels, size, size // 2 + 1))

    def filter(self, rows: int, cols: int) -> torch.Tensor:
        """The complex map resampled to a ``rows`` x ``cols`` real-FFT grid, in FFT (unshifted) row order."""
        w = torch.stack([self.real, self.imag])  # [2, C, h, w]
        if w.shape[-2:] != (rows, cols):
            c = w.shape[1]
            w = F.interpolate(w.reshape(1, 2 * c, *w.shape[-2:]), size=(rows, cols), mode="bilinear",
                              align_corners=True).reshape(2, c, rows, cols)
        w = torch.fft.ifftshift(w, dim=-2)
        return torch.complex(w[0].float(), w[1].float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        spectrum = torch.fft.rfft2(x.float(), norm="ortho")
        out = torch.fft.irfft2(spectrum * self.filter(*spectrum.shape[-2:]), s=(h, w), norm="ortho")
        return out.to(x.dtype).contiguous(memory_format=torch.channels_last)


class ConditionPyramid(nn.Module):
    """An image encoder whose outputs match a UNetBody's merge points (``level_channels``/``level_strides``).

    ``stem`` maps the image to features at full resolution with ``level_channels[0]`` channels; every further
    level downsamples (3x3 stride-2 convolution, where the body downsamples) and applies one time-free
    ResBlock to reach that level's channel count. Returns one feature map per merge point.
    """

    def __init__(self, stem: nn.Module, level_channels: list[int], level_strides: list[int],
                 groups: int = 8) -> None:
        super().__init__()
        self.stem = stem
        self.levels = nn.ModuleList()
        for i in range(1, len(level_channels)):
            cin, cout = level_channels[i - 1], level_channels[i]
            down = level_strides[i] > level_strides[i - 1]
            self.levels.append(nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride=2 if down else 1, padding=1), ResBlock(cin, cout, None, groups)))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(image)]
        for level in self.levels:
            feats.append(level(feats[-1]))
        return feats


def pool_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` average-pooled to at most ``size`` x ``size`` positions (unchanged when already that small)."""
    h, w = x.shape[-2:]
    if h <= size and w <= size:
        return x
    return F.adaptive_avg_pool2d(x, (min(h, size), min(w, size)))


def cross_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B,d,H,W], k [B,d,h,w], v [B,C,h,w] -> [B,C,H,W]: softmax(q^T k / sqrt(d)) v^T per query pixel."""
    b, c, hh, ww = v.shape[0], v.shape[1], q.shape[-2], q.shape[-1]
    out = F.scaled_dot_product_attention(q.flatten(2).transpose(1, 2), k.flatten(2).transpose(1, 2),
                                         v.flatten(2).transpose(1, 2))
    return out.transpose(1, 2).reshape(b, c, hh, ww)


class CrossAttention(nn.Module):
    """queries [B,Cq,H,W] attend to context [B,Ck,h,w] (pooled to at most ``kv_size``^2 keys) -> [B,Cq,H,W],
    added back to the queries: ``x + W_o softmax(q k^T / sqrt(d)) v``. Query/key dimension max(4, Cq //
    reduction); the queries keep full resolution (spatial-reduction attention, as PGDiffSeg's PSA here)."""

    def __init__(self, channels: int, context_channels: int, reduction: int = 8, kv_size: int = 16,
                 groups: int = 8) -> None:
        super().__init__()
        if kv_size < 1:
            raise ValueError(f"kv_size must be >= 1, got {kv_size}")
        dim = max(4, channels // reduction)
        self.kv_size = kv_size
        self.norm_x, self.norm_context = norm(channels, groups), norm(context_channels, groups)
        self.query = nn.Conv2d(channels, dim, 1)
        self.key = nn.Conv2d(context_channels, dim, 1)
        self.value = nn.Conv2d(context_channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        ctx = pool_to(self.norm_context(grad_safe(context)), self.kv_size)
        return x + self.proj(cross_attend(self.query(self.norm_x(grad_safe(x))), self.key(ctx), self.value(ctx)))


def grad_safe(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the standard layout when it is channels-last and needs no gradient while autograd records.

    Works around a crash of PyTorch 2.13 on the CPU: GroupNorm's backward segfaults on a channels-last input
    that does not require grad (a frozen network's features, UniSegDiff's CFENet) when its weights do.
    """
    if (torch.is_grad_enabled() and not x.requires_grad and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return x.contiguous()
    return x


class DualCrossAttention(nn.Module):
    """UniSegDiff's Dual Cross-Attention (DCA): (denoising d [B,Cd,H,W], condition c [B,Cc,H,W]) -> d'.

    Two cascaded cross-attention blocks in which the two feature maps take turns as the queries (the paper,
    sec. 2.3): first the condition queries the denoising features, c' = c + CA(c -> d); then the denoising
    features query the updated condition, d' = d + CA(d -> c'). Both maps must share H x W. The paper gives no
    further detail; ours: keys and values pooled to at most ``kv_size``^2 positions (``CrossAttention``).
    """

    def __init__(self, channels: int, condition_channels: int, reduction: int = 8, kv_size: int = 16,
                 groups: int = 8) -> None:
        super().__init__()
        self.condition_queries = CrossAttention(condition_channels, channels, reduction, kv_size, groups)
        self.denoising_queries = CrossAttention(channels, condition_channels, reduction, kv_size, groups)

    def forward(self, d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.denoising_queries(d, self.condition_queries(c, d))
