"""How much of a mask survives the forward process at each timestep: the recoverability curve of a set of
masks and its slope (Analysing Diffusion Segmentation, sec. 4.2-4.3), which the ``fingerprint`` timestep sampler
draws training timesteps from (``diffusion/timesteps.py``) and ``analysis/fingerprint.py`` plots.

x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with x0 the mask in {-1,+1} and one seeded noise draw per image,
reused at every t; recoverability is the per-image Dice of threshold_0(Gaussian_sigma(x_t)) against x0,
averaged over masks (empty vs empty scores 1), and its slope is the smoothed -d/dt.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

from ..config import DiffusionConfig
from ..errors import LesiondiffError
from ..filters import gaussian_blur
from .schedules import alphas_cumprod

DEFAULT_WINDOW = 50  # timesteps over which the recoverability slope is averaged
_CHUNK_PIXELS = 2**22  # masks per chunk of the recoverability count: 256 at 128 px


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every plane of ``x`` [N,H,W] (reflected borders); sigma 0 leaves it unchanged."""
    return gaussian_blur(x, sigma) if sigma > 0 else x


def seeded_noise(n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """n standard-normal draws of ``shape``, one per image in order, so image i gets the same noise whatever
    the chunking or how many images follow it."""
    return torch.stack([torch.randn(shape, generator=generator) for _ in range(n)]) if n else torch.zeros(0, *shape)


def _positives(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Per image, the number of pixels in ``within`` [N,P] with a + r b > 0, for every r of ``r`` [N,K] -> [N,K].

    A pixel is positive for r > -a/b when b > 0 and for r < -a/b when b < 0, so sorting these flip points once
    gives the count at any r by binary search.
    """
    flip = -a / torch.where(b == 0, torch.ones_like(b), b)
    inf = torch.tensor(float("inf"), dtype=a.dtype)
    rising = torch.where(within & (b > 0), flip, inf).sort(1).values
    falling = torch.where(within & (b < 0), flip, -inf).sort(1).values
    steady = (within & (b == 0) & (a > 0)).sum(1, keepdim=True)
    return (torch.searchsorted(rising, r) + (a.shape[1] - torch.searchsorted(falling, r, right=True))
            + steady)


def recoverability_dice(masks: torch.Tensor | np.ndarray, alphas_cumprod: torch.Tensor | np.ndarray,
                        timesteps, sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """Dice of threshold_0(Gaussian_sigma(x_t)) against each mask, per image and t: float64 [N,K].

    masks [N,H,W] (or [N,1,H,W]), nonzero = lesion; x0 = +1 on the lesion, -1 elsewhere; x_t with one seeded
    noise draw per image, the same at every t. Empty mask with empty prediction scores 1. Exact at every t and
    independent of how many t are asked: the blur is linear, so blur(x_t) > 0 <=> blur(x0) + r_t blur(eps) > 0
    with r_t = sqrt((1 - abar_t) / abar_t) increasing in t, and each pixel changes side at most once. At t = 0
    the score is that of the blurred clean mask: 1 for sigma 0, below 1 for details finer than about sigma.
    """
    m = torch.as_tensor(masks)
    m = (m[:, 0] if m.ndim == 4 else m).detach().cpu() > 0
    if m.ndim != 3:
        raise LesiondiffError(f"expected masks of shape [N,H,W], got {tuple(m.shape)}")
    abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
    ts = torch.as_tensor(np.asarray(timesteps, dtype=np.int64))
    if len(ts) and (ts.min() < 0 or ts.max() >= len(abar)):
        raise LesiondiffError(f"timesteps must lie in [0, {len(abar)}), got {int(ts.min())}..{int(ts.max())}")
    ratio = ((1 - abar[ts]) / abar[ts]).sqrt().float()
    gen = torch.Generator().manual_seed(seed)
    n, h, w = m.shape
    if sigma < 0 or (sigma > 0 and math.ceil(3 * sigma) >= min(h, w)):
        raise LesiondiffError(f"smoothing sigma {sigma} px does not fit {h}x{w} masks (need 0 <= 3 sigma < size)")
    chunk = max(1, _CHUNK_PIXELS // (h * w))
    out = []
    for start in range(0, n, chunk):
        gt = m[start:start + chunk]
        a = _smooth(gt.float() * 2 - 1, sigma).flatten(1)
        b = _smooth(seeded_noise(len(gt), (h, w), gen), sigma).flatten(1)
        gt = gt.flatten(1)
        r = ratio.expand(len(gt), -1).contiguous()
        pred = _positives(a, b, r, torch.ones_like(gt)).double()
        tp = _positives(a, b, r, gt).double()
        denom = pred + gt.sum(1, keepdim=True)
        out.append(torch.where(denom == 0, torch.ones_like(denom), 2 * tp / denom.clamp_min(1)))
    return torch.cat(out).numpy() if out else np.zeros((0, len(ts)))


def recoverability_curve(masks: torch.Tensor | np.ndarray, alphas_cumprod: torch.Tensor | np.ndarray, timesteps,
                         sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """Mean over masks of ``recoverability_dice``: float64 [K]."""
    dice = recoverability_dice(masks, alphas_cumprod, timesteps, sigma, seed)
    if not len(dice):
        raise LesiondiffError("no masks to fingerprint")
    return dice.mean(0)


def recoverability_slope(curve: np.ndarray, timesteps, window: float = DEFAULT_WINDOW) -> np.ndarray:
    """-d(curve)/dt per timestep (central differences over the given t), then a moving average over ``window``
    timesteps (edges repeat the end values): float64 [K], positive where information is being lost."""
    c = np.asarray(curve, dtype=np.float64)
    ts = np.asarray(timesteps, dtype=np.float64)
    if len(c) < 2:
        return np.zeros_like(c)
    slope = -np.gradient(c, ts)
    points = int(round(window / float(np.median(np.diff(ts))))) if window > 0 else 1
    return uniform_filter1d(slope, size=points, mode="nearest") if points > 1 else slope


def training_slope(masks: torch.Tensor, cfg: DiffusionConfig, seed: int = 0,
                   window: float = DEFAULT_WINDOW) -> np.ndarray:
    """The recoverability slope of ``masks`` [N,1,H,W] at every t = 0..T-1 of ``cfg``'s schedule, with
    ``cfg.fingerprint_sigma``: what the ``fingerprint`` timestep sampler draws from. float64 [T]."""
    ts = np.arange(cfg.num_train_timesteps)
    curve = recoverability_curve(masks, alphas_cumprod(cfg), ts, cfg.fingerprint_sigma, seed)
    return recoverability_slope(curve, ts, window)
