"""Preprocessing into diffusion space and augmentation there.

Diffusion space: images are ``[C,S,S]`` float32 in [-1,1], masks ``[1,S,S]`` float32 in {-1,+1}.
Images are resized to a square without keeping the aspect ratio, as the implemented papers do; the
predictions are brought back to the original size with :func:`resize_prob`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LesiondiffError
from ..filters import gaussian_blur

# ITU-R BT.601 luma weights.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preprocess_image(
    image: np.ndarray, size: int, channels: int, intensity_window: tuple[float, float] | None = None
) -> torch.Tensor:
    """``image [H,W,C]`` (or ``[H,W]``) in grey levels 0..255 -> ``[channels,size,size]`` float32 in [-1,1].

    1. ``intensity_window=(lo, hi)``: clip to [lo, hi], then stretch to [0, 255] (PGDiffSeg truncates BUSI
       to [30, 235]).
    2. Channels: grey is repeated to RGB; RGB becomes grey by BT.601 luma (0.299 R + 0.587 G + 0.114 B);
       any other mismatch (RGBA, two channels, ...) is an error.
    3. Resize to ``size x size`` by antialiased bilinear interpolation. The aspect ratio is not preserved.
    4. Scale 0..255 to [-1, 1].
    """
    if channels not in (1, 3):
        raise LesiondiffError(f"channels must be 1 or 3, got {channels}")
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise LesiondiffError(f"expected an image of shape HxWxC, got shape {arr.shape}")
    if intensity_window is not None:
        lo, hi = (float(v) for v in intensity_window)
        if not hi > lo:
            raise LesiondiffError(f"intensity window must have low < high, got {intensity_window}")
        arr = (np.clip(arr, lo, hi) - lo) * np.float32(255.0 / (hi - lo))
    have = arr.shape[2]
    if have == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=2)
    elif have == 3 and channels == 1:
        arr = arr @ _LUMA[:, None]
    elif have != channels:
        raise LesiondiffError(f"cannot use a {have}-channel image where {channels} channel(s) are expected")
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if tuple(tensor.shape[-2:]) != (size, size):
        tensor = F.interpolate(
            tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return (tensor / 127.5 - 1.0).clamp_(-1.0, 1.0)


def preprocess_mask(mask: np.ndarray, size: int, threshold: float = 0.5) -> torch.Tensor:
    """``mask [H,W]`` (nonzero = lesion) -> ``[1,size,size]`` float32 in {-1,+1}.

    The 0/1 mask is resized as a coverage map, then thresholded: ``area`` averaging when shrinking in
    both directions (each output pixel gets the fraction of lesion it covers), antialiased bilinear
    otherwise. A pixel is lesion when its coverage is at least ``threshold`` (0.5 keeps areas unbiased).
    Structures thinner than ``threshold`` of an output pixel disappear, e.g. one-pixel vessels shrunk more
    than twofold: keep such data near its native size or lower the threshold.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise LesiondiffError(f"expected a mask of shape HxW, got shape {arr.shape}")
    tensor = torch.from_numpy((arr > 0).astype(np.float32))[None, None]
    h, w = arr.shape
    if (h, w) != (size, size):
        if size <= h and size <= w:
            tensor = F.interpolate(tensor, size=(size, size), mode="area")
        else:
            tensor = F.interpolate(
                tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
    return torch.where(tensor[0] >= threshold, 1.0, -1.0)


def resize_prob(prob: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``prob [..., h, w]`` -> ``[..., H, W]`` float32, bilinear (``align_corners=False``; antialiased when
    shrinking). The weights are convex, so values stay within the input's range.

    Maps are resized one at a time, so resizing ten maps to 2848x4288 needs memory for the output and
    one map, not twice the output.
    """
    arr = np.asarray(prob, dtype=np.float32)
    if arr.ndim < 2:
        raise LesiondiffError(f"expected probability maps of shape [..., h, w], got shape {arr.shape}")
    height, width = (int(v) for v in out_hw)
    if height < 1 or width < 1:
        raise LesiondiffError(f"output size must be positive, got {out_hw}")
    lead, (h, w) = arr.shape[:-2], arr.shape[-2:]
    if (h, w) == (height, width):
        return arr.copy()
    flat = np.ascontiguousarray(arr.reshape(-1, h, w))
    out = np.empty((flat.shape[0], height, width), dtype=np.float32)
    shrink = height < h or width < w
    for i, plane in enumerate(flat):
        resized = F.interpolate(
            torch.from_numpy(plane)[None, None],
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=shrink,
        )
        out[i] = resized[0, 0].numpy()
    return out.reshape(*lead, height, width)


def _binary(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask > 0, 1.0, -1.0).to(mask.dtype)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device))


def _place(t: torch.Tensor, height: int, width: int, oy: int, ox: int, fill: float) -> torch.Tensor:
    """Crop (when larger) or pad with ``fill`` (when smaller) ``t [C,h,w]`` to ``[C,height,width]``;
    ``oy, ox`` is the crop start or the paste position."""
    out = t.new_full((t.shape[0], height, width), fill)
    h, w = t.shape[-2:]
    sy, dy, ny = (oy, 0, height) if h >= height else (0, oy, h)
    sx, dx, nx = (ox, 0, width) if w >= width else (0, ox, w)
    out[:, dy : dy + ny, dx : dx + nx] = t[:, sy : sy + ny, sx : sx + nx]
    return out


Pair = tuple[torch.Tensor, torch.Tensor]


class Augment:
    """Random augmentation of an ``(image [C,H,W] in [-1,1], mask [1,H,W] in {-1,+1})`` pair.

    Each named operation runs, in the given order, with probability ``p`` (``flip`` tosses separately for
    the horizontal and the vertical flip). ``strength`` scales every random range (1 = the defaults below).

    - ``flip``: horizontal and vertical flips.
    - ``rot90``: rotation by ``k * 90`` degrees, ``k`` uniform in 0..3 (a non-square pair turns sideways).
    - ``sixfold``: PGDiffSeg's six-fold training set (the original, horizontal flip, vertical flip, rotation by
      90, 180 and 270 degrees): one of the six, uniformly, for every sample, so each copy is seen equally
      often, as if the set were stored six times. ``p`` does not apply.
    - ``scale``: zoom by ``U(1 - 0.15, 1 + 0.15)``, then a random crop (zoom in) or a pad with -1, i.e.
      black and background (zoom out), back to ``H x W``; bilinear for the image, nearest for the mask.
    - ``noise``: additive Gaussian noise with std ``U(0, 0.1)``.
    - ``blur``: Gaussian blur with std ``U(0.3, 1.2)`` px.
    - ``erosion``: the mask's boundary eroded by 1 or 2 px (a max-pool over the inverted mask), PalScDiff's
      boundary erosion that imitates an annotation drawn too tight. A lesion it would erase is left as is.
    - ``brightness``: shift by ``U(-0.1, 0.1)``.  ``contrast``: scale about the mean by ``U(0.8, 1.2)``.

    All randomness comes from the ``generator`` passed to each call, so a seeded generator reproduces
    a training run and a saved generator state resumes it. The image is clamped to [-1,1] and the mask
    stays exactly in {-1,+1} after every operation.
    """

    def __init__(self, names: Sequence[str], p: float = 0.5, strength: float = 1.0) -> None:
        unknown = [n for n in names if n not in _OPS]
        if unknown:
            raise LesiondiffError(f"unknown augmentation {unknown[0]!r}; known: {', '.join(_OPS)}")
        if not 0.0 <= p <= 1.0:
            raise LesiondiffError(f"augmentation probability must lie in [0, 1], got {p}")
        if strength < 0:
            raise LesiondiffError(f"augmentation strength must be >= 0, got {strength}")
        self.names = list(names)
        self.p = p
        self.strength = strength

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> Pair:
        if image.ndim != 3 or mask.ndim != 3 or mask.shape[0] != 1 or image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"expected image [C,H,W] and mask [1,H,W], got {tuple(image.shape)}, {tuple(mask.shape)}"
            )
        for name in self.names:
            image, mask = _OPS[name](self, image, mask, generator)
        return image, mask

    def __repr__(self) -> str:
        return f"Augment({self.names!r}, p={self.p}, strength={self.strength})"

    def _toss(self, generator: torch.Generator) -> bool:
        return _uniform(generator, 0.0, 1.0) < self.p

    def _flip(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        for dim in (-1, -2):
            if self._toss(g):
                image, mask = image.flip(dim), mask.flip(dim)
        return image, mask

    def _rot90(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        if self._toss(g):
            k = _randint(g, 0, 3)
            image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
        return image, mask

    def _sixfold(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        k = _randint(g, 0, 5)
        if k in (1, 2):
            dim = -1 if k == 1 else -2
            return image.flip(dim), mask.flip(dim)
        if k >= 3:
            return torch.rot90(image, k - 2, (-2, -1)), torch.rot90(mask, k - 2, (-2, -1))
        return image, mask

    def _scale(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        if not self._toss(g):
            return image, mask
        zoom = _uniform(g, 1 - 0.15 * self.strength, 1 + 0.15 * self.strength)
        h, w = image.shape[-2:]
        nh, nw = max(1, round(h * zoom)), max(1, round(w * zoom))
        if (nh, nw) == (h, w):
            return image, mask
        image = F.interpolate(
            image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=zoom < 1
        )[0]
        # nearest-exact samples pixel centres, as bilinear with align_corners=False does; "nearest" is off by half a pixel.
        mask = _binary(F.interpolate(mask[None], size=(nh, nw), mode="nearest-exact")[0])
        oy, ox = _randint(g, 0, abs(nh - h)), _randint(g, 0, abs(nw - w))
        return _place(image, h, w, oy, ox, -1.0).clamp_(-1, 1), _place(mask, h, w, oy, ox, -1.0)

    def _noise(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        if self._toss(g):
            sigma = _uniform(g, 0.0, 0.1 * self.strength)
            noise = torch.randn(image.shape, generator=g, device=g.device, dtype=image.dtype).to(image.device)
            image = (image + sigma * noise).clamp_(-1, 1)
        return image, mask

    def _blur(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        if self._toss(g):
            sigma = _uniform(g, 0.3, 0.3 + 0.9 * self.strength)
            image = gaussian_blur(image, sigma).clamp_(-1, 1)
        return image, mask

    def _erosion(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        if self._toss(g):
            r = _randint(g, 1, 2)
            background = (mask <= 0).to(mask.dtype)[None]
            # Padding of max_pool2d is -inf, so the image border does not count as background.
            grown = F.max_pool2d(background, kernel_size=2 * r + 1, stride=1, padding=r)[0]
            eroded = torch.where(grown > 0, -1.0, 1.0).to(mask.dtype)
            if (eroded > 0).any() or not (mask > 0).any():
                mask = eroded
        return image, mask

    def _brightness(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        if self._toss(g):
            image = (image + _uniform(g, -0.1 * self.strength, 0.1 * self.strength)).clamp_(-1, 1)
        return image, mask

    def _contrast(self, image: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> Pair:
        if self._toss(g):
            factor = _uniform(g, 1 - 0.2 * self.strength, 1 + 0.2 * self.strength)
            mean = image.mean()
            image = ((image - mean) * factor + mean).clamp_(-1, 1)
        return image, mask


_OPS: dict[str, Callable[[Augment, torch.Tensor, torch.Tensor, torch.Generator], Pair]] = {
    "flip": Augment._flip,
    "rot90": Augment._rot90,
    "sixfold": Augment._sixfold,
    "scale": Augment._scale,
    "noise": Augment._noise,
    "blur": Augment._blur,
    "erosion": Augment._erosion,
    "brightness": Augment._brightness,
    "contrast": Augment._contrast,
}
