"""Ultrasound-like phantoms: the embedded default data set, so every command runs without a download.

Each image imitates a B-mode breast ultrasound scan from a linear probe (rows are depth):

- tissue: a bright skin line, a darker subcutaneous fat layer, brighter fibroglandular tissue and a
  striated muscle layer, with wavy boundaries, a few thin bright fascia bands (Cooper's ligaments) and
  smooth, laterally elongated echogenicity variation;
- a lesion (in ``1 - empty_fraction`` of the images): a dark (hypoechoic) irregular blob, from a smoothed
  random radial function (lobulated, sometimes spiculated), with random orientation, aspect and area.
  Its darkness ramps in over ``margin_blur`` pixels, so the boundary is ambiguous. Below it there is
  posterior acoustic shadowing (a dark column fading with depth) or posterior enhancement, or neither;
- distractors that are not lesions: small, round, sharp-edged anechoic cysts (with the mild posterior
  enhancement real cysts show), and now and then a thin vertical refraction shadow;
- depth attenuation, per-image gain, spatially correlated multiplicative speckle (fully developed speckle:
  exponential intensity, Rayleigh amplitude) and log compression to 8 bits.

The mask is the exact lesion region, before the margin blur. The lesion is darker than its surroundings,
but so are cysts, shadows, fat and deep tissue: the best global intensity threshold (after a Gaussian blur of
sigma 2) reaches a mean Dice of only about 0.47 on the default spec (``tests/data/test_synthetic.py``),
while shape, size and context make the task learnable: a small U-Net reaches a Dice above 0.8 within a
few hundred steps.

Determinism: image ``k`` is drawn from its own child of ``numpy.random.SeedSequence(seed)`` (spawn key
``k + 1``), so the same seed gives byte-identical files and image ``k`` does not depend on ``n``. Which images are lesion-free is
decided by a Weyl (golden-ratio) sequence with a seeded offset: every prefix of the set holds very nearly
``empty_fraction`` normal images, again independent of ``n``. Results are byte-identical for the same
numpy/scipy versions; other versions may differ in the last bit of a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import LesiondiffError
from ..io_utils import atomic_path, atomic_write_text

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_REF = 128.0  # lengths in PhantomSpec are pixels of a 128-px image; they scale with ``size``


@dataclass(frozen=True)
class PhantomSpec:
    """Knobs of the phantom generator. Pairs are ``(low, high)`` ranges sampled uniformly per image.

    Lengths are in pixels of a 128-px image and scale with the image size. Make a set harder with stronger
    speckle, more attenuation, smaller or fainter lesions, more margin blur and more distractors.
    """

    speckle: float = 1.0
    """Speckle strength: exponent on the unit-mean speckle intensity (0 = none, 1 = fully developed)."""
    speckle_grain: tuple[float, float] = (0.6, 1.1)
    """Correlation length of the speckle, (axial, lateral) in px: lateral grain is longer, as in B-mode."""
    attenuation: tuple[float, float] = (1.5, 3.0)
    """Echo intensity at the bottom row is ``exp(-a)`` of the top's (6.5-13 dB of loss left after TGC)."""
    dynamic_range_db: tuple[float, float] = (32.0, 42.0)
    """Log-compression dynamic range mapped onto grey levels 0..255."""
    tissue_grey: tuple[float, float] = (80.0, 120.0)
    """Grey level of the median pixel: the overall gain, as an operator would set it."""
    lesion_area: tuple[float, float] = (0.03, 0.20)
    """Lesion area as a fraction of the image (the mask's area lies in this range)."""
    lesion_contrast: tuple[float, float] = (0.03, 0.25)
    """Lesion echo intensity relative to the median of the tissue around it (lower is darker)."""
    lesion_irregularity: tuple[float, float] = (0.08, 0.35)
    """Amplitude of the lobulation harmonics of the lesion outline (0 = smooth ellipse)."""
    spiculation_prob: float = 0.35
    """Probability that a lesion also has fine spicules (high harmonics), as malignant masses often do."""
    margin_blur: tuple[float, float] = (1.0, 3.0)
    """Std of the Gaussian ramp (px) over which the lesion's darkness fades in at its margin."""
    shadow_prob: float = 0.45
    """Probability of posterior acoustic shadowing below the lesion."""
    enhancement_prob: float = 0.35
    """Probability of posterior enhancement below the lesion (when it casts no shadow)."""
    shadow_strength: tuple[float, float] = (0.5, 0.85)
    """Fraction of echo intensity removed right below the lesion; it fades with depth."""
    distractors: tuple[int, int] = (1, 2)
    """Number of round anechoic cysts (inclusive range). They are not part of the mask."""
    distractor_radius: tuple[float, float] = (3.5, 7.0)
    """Cyst radius in px: always smaller than the smallest lesion, round and sharp-edged."""
    streak_prob: float = 0.3
    """Probability of a thin vertical refraction shadow somewhere in the image."""
    fascia_bands: tuple[int, int] = (2, 4)
    """Number of thin bright fascia bands (inclusive range)."""

    def __post_init__(self) -> None:
        lo, hi = self.lesion_area
        if not 0.0 < lo <= hi <= 0.4:
            raise LesiondiffError(
                f"PhantomSpec.lesion_area must satisfy 0 < low <= high <= 0.4, got {self.lesion_area}"
            )
        if self.distractors[0] < 0 or self.distractors[0] > self.distractors[1]:
            raise LesiondiffError(
                f"PhantomSpec.distractors must be a (low, high) count range, got {self.distractors}"
            )
        if self.speckle < 0:
            raise LesiondiffError(f"PhantomSpec.speckle must be >= 0, got {self.speckle}")


def render_phantom(
    seed: int | np.random.SeedSequence, size: int = 128, lesion: bool = True, spec: PhantomSpec | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom: ``(image [size,size] uint8, mask [size,size] bool)``; the mask is empty when
    ``lesion`` is False."""
    spec = spec or PhantomSpec()
    if size < 32:
        raise LesiondiffError(f"phantom size must be at least 32 px, got {size}")
    rng = np.random.default_rng(seed)
    s = size / _REF
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = yy / size

    echo = _tissue(rng, size, s, xx, depth, spec)
    mask = np.zeros((size, size), bool)
    if lesion:
        mask = _lesion_mask(rng, size, spec, xx, yy)
        echo = _add_lesion(rng, echo, mask, s, yy, spec)
    echo = _add_distractors(rng, echo, mask, size, s, xx, yy, spec)
    echo *= np.exp(-rng.uniform(*spec.attenuation) * depth)
    return _bmode(rng, echo, s, spec), mask


def generate(
    out: Path,
    n: int = 200,
    size: int = 128,
    seed: int = 0,
    empty_fraction: float = 0.15,
    spec: PhantomSpec | None = None,
) -> Path:
    """Write ``n`` phantoms in the generic layout and return ``out``.

    ``out/images/phantom_0000.png`` (8-bit grey), ``out/masks/phantom_0000.png`` (0/255) and
    ``out/labels.csv`` (``id,label`` with label ``lesion`` or ``normal``). Every file is written atomically.
    """
    if n < 1:
        raise LesiondiffError(f"number of phantoms must be at least 1, got {n}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise LesiondiffError(f"empty_fraction must lie in [0, 1], got {empty_fraction}")
    spec = spec or PhantomSpec()
    out = Path(out)
    root = np.random.SeedSequence(seed)
    offset = np.random.default_rng(root.spawn(1)[0]).random()
    # Children are spawned after the offset's, so child k keeps spawn key (k + 1,) whatever n is.
    children = root.spawn(n)
    rows = ["id,label"]
    for k, child in enumerate(children):
        empty = (offset + k * _GOLDEN) % 1.0 < empty_fraction
        image, mask = render_phantom(child, size, lesion=not empty, spec=spec)
        name = f"phantom_{k:04d}"
        _write_png(out / "images" / f"{name}.png", image)
        _write_png(out / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
        rows.append(f"{name},{'normal' if empty else 'lesion'}")
    atomic_write_text(out / "labels.csv", "\n".join(rows) + "\n")
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")  # uint8 [H,W] -> mode L


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit std: smooth random fields."""
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap", truncate=3.0
    )
    return field / (field.std() + 1e-8)


def _wave(rng: np.random.Generator, x: np.ndarray, amplitude: float) -> np.ndarray:
    """A gently tilted, wavy depth offset (fraction of the image height) along x in [0, 1]."""
    a1, a2 = rng.uniform(0, amplitude, 2)
    f1, f2 = rng.uniform(0.4, 1.2), rng.uniform(1.5, 3.5)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    tilt = rng.uniform(-amplitude, amplitude)
    return (
        a1 * np.sin(2 * np.pi * f1 * x + p1) + 0.4 * a2 * np.sin(2 * np.pi * f2 * x + p2) + tilt * (x - 0.5)
    )


def _tissue(rng, size, s, xx, depth, spec: PhantomSpec) -> np.ndarray:
    """Echogenicity map (linear intensity; parenchyma about 1): layers, fascia bands, smooth variation."""
    shape = (size, size)
    x = xx[:1] / size  # [1, size]: waves depend on the lateral position only
    d = depth + _wave(rng, x, 0.05)  # warped depth: layer boundaries follow it
    fat_end = rng.uniform(0.22, 0.4)
    gland_end = rng.uniform(0.7, 0.9)

    def step(edge: float, width: float = 0.02) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(d - edge) / width))

    gland_level, muscle_level = rng.uniform(1.0, 1.6), rng.uniform(0.6, 1.0)
    fat_level = rng.uniform(0.3, 0.5)
    echo = (
        fat_level + (gland_level - fat_level) * step(fat_end) + (muscle_level - gland_level) * step(gland_end)
    )
    echo = echo + rng.uniform(4.0, 10.0) * np.exp(-(((d - 0.025) / 0.015) ** 2))  # skin line

    # Fat lobules and glandular streaks: smooth, laterally elongated log-normal variation.
    lobules = _smooth_noise(rng, shape, (0.025 * size, 0.07 * size))
    broad = _smooth_noise(rng, shape, (0.15 * size, 0.2 * size))
    echo = echo * np.exp(0.6 * lobules + 0.3 * broad)

    # Muscle striations: fine horizontal lines below the gland.
    striae = _smooth_noise(rng, shape, (0.6 * s, 6.0 * s))
    echo = echo * (1.0 + 1.5 * step(gland_end) * np.clip(striae, 0, None))

    for _ in range(rng.integers(spec.fascia_bands[0], spec.fascia_bands[1] + 1)):
        centre = rng.uniform(0.08, 0.95)
        band_d = depth + _wave(rng, x, 0.04)
        width = rng.uniform(0.6, 1.2) * s / size
        fade = np.clip(_smooth_noise(rng, (1, size), (1, 0.12 * size)) + 0.6, 0, 1.5)  # bands break up
        echo = echo + rng.uniform(3.0, 9.0) * fade * np.exp(-(((band_d - centre) / width) ** 2))
    return echo.astype(np.float32)


def _lesion_mask(rng, size, spec: PhantomSpec, xx, yy) -> np.ndarray:
    """Exact lesion region: a smoothed random radial function, rotated and stretched, fully inside."""
    angles = np.linspace(0, 2 * np.pi, 721, dtype=np.float64)[:-1]
    log_r = np.zeros_like(angles)
    lob = rng.uniform(*spec.lesion_irregularity)
    for k in range(2, 8):
        log_r += rng.uniform(0, lob) / k**0.7 * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    if rng.random() < spec.spiculation_prob:
        for k in range(9, 24, 2):
            log_r += rng.uniform(0, 0.06) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    radius = np.exp(log_r)
    unit_area = 0.5 * np.sum(radius**2) * (2 * np.pi / angles.size)
    stretch = np.sqrt(rng.uniform(0.6, 1.9))  # width/height before rotation
    theta = rng.normal(0.0, 0.6)  # mostly parallel to the skin, as breast masses tend to be
    target = rng.uniform(*spec.lesion_area)
    top_margin = 0.1 * size

    r0 = np.sqrt(target * size * size / unit_area)
    mask = np.zeros((size, size), bool)
    for _ in range(4):
        # Outline in image coordinates around the centre, to fit the lesion inside the image.
        u, v = r0 * radius * np.cos(angles) * stretch, r0 * radius * np.sin(angles) / stretch
        ox, oy = u * np.cos(theta) - v * np.sin(theta), u * np.sin(theta) + v * np.cos(theta)
        span_x, span_y = ox.max() - ox.min(), oy.max() - oy.min()
        fit = min(1.0, (size - 4) / span_x, (size - top_margin - 4) / span_y)
        if fit < 1.0:
            r0 *= fit * 0.98
            continue
        cx = rng.uniform(2 - ox.min(), size - 3 - ox.max())
        cy = rng.uniform(top_margin - oy.min(), size - 3 - oy.max())
        dx, dy = xx - cx, yy - cy
        pu = (dx * np.cos(theta) + dy * np.sin(theta)) / stretch
        pv = (-dx * np.sin(theta) + dy * np.cos(theta)) * stretch
        phi = np.mod(np.arctan2(pv, pu), 2 * np.pi)
        boundary = r0 * np.interp(phi, angles, radius, period=2 * np.pi)
        mask = np.hypot(pu, pv) <= boundary
        frac = mask.mean()
        lo, hi = spec.lesion_area
        if lo <= frac <= hi:
            break
        r0 *= np.sqrt(np.clip(frac, lo * 1.02, hi * 0.98) / max(frac, 1e-6))
    return mask


def _add_lesion(rng, echo, mask, s, yy, spec: PhantomSpec) -> np.ndarray:
    """Dark lesion with a blurred margin, then posterior shadowing or enhancement below it."""
    size = echo.shape[0]
    soft = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(*spec.margin_blur) * s)
    ring = ndimage.binary_dilation(mask, iterations=max(1, round(6 * s))) & ~mask
    inside = rng.uniform(*spec.lesion_contrast) * float(np.median(echo[ring]))  # relative to surroundings
    texture = np.exp(0.3 * _smooth_noise(rng, echo.shape, (3 * s, 5 * s)))  # faint internal echoes
    echo = echo * (1 - soft) + inside * texture * soft

    cols = mask.any(axis=0)
    if not cols.any():
        return echo
    roll = rng.random()
    if roll < spec.shadow_prob:
        sign, strength = -1.0, rng.uniform(*spec.shadow_strength)
    elif roll < spec.shadow_prob + spec.enhancement_prob:
        sign, strength = 1.0, rng.uniform(0.3, 0.8)
    else:
        return echo
    bottom = np.where(cols, size - 1 - np.argmax(mask[::-1], axis=0), 0).astype(np.float32)
    idx = np.flatnonzero(cols)
    bottom = np.interp(np.arange(size), idx, bottom[idx]).astype(np.float32)  # carry edges outwards
    # Columns narrow a little towards the lesion's lateral edges, softly.
    width = ndimage.gaussian_filter1d(cols.astype(np.float32), 1.5 * s)
    below = yy - (bottom[None, :] - 2 * s)
    fall = rng.uniform(0.3, 1.0) * size
    column = width[None, :] * np.clip(below / (3 * s), 0, 1) * np.exp(-np.clip(below, 0, None) / fall)
    return echo * (1 + sign * strength * column)


def _add_distractors(rng, echo, mask, size, s, xx, yy, spec: PhantomSpec) -> np.ndarray:
    """Round, sharp, anechoic cysts away from the lesion, and an occasional refraction streak."""
    keep_out = ndimage.binary_dilation(mask, iterations=max(1, int(4 * s))) if mask.any() else mask
    count = rng.integers(spec.distractors[0], spec.distractors[1] + 1)
    placed = 0
    for _ in range(40 * max(count, 1)):
        if placed >= count:
            break
        r = rng.uniform(*spec.distractor_radius) * s
        cx, cy = rng.uniform(r + 2, size - r - 2), rng.uniform(0.12 * size + r, size - r - 2)
        dist = np.hypot(xx - cx, yy - cy)
        disk = np.clip(r + 0.5 - dist, 0, 1)  # sharp edge, anti-aliased over one pixel
        if (disk > 0)[keep_out].any():
            continue
        keep_out = keep_out | (dist <= r + 3 * s)
        enhance = (
            0.3
            * np.clip(1 - np.abs(xx - cx) / r, 0, 1) ** 0.5
            * (yy > cy)
            * np.exp(-(yy - cy) / (0.3 * size))
        )
        echo = echo * (1 + enhance) * (1 - 0.97 * disk)
        placed += 1
    if rng.random() < spec.streak_prob:
        cx, start = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.5) * size
        width = rng.uniform(0.7, 1.5) * s
        streak = np.exp(-(((xx - cx) / width) ** 2)) * np.clip((yy - start) / (4 * s), 0, 1)
        echo = echo * (1 - rng.uniform(0.4, 0.7) * streak)
    return echo


def _bmode(rng, echo, s, spec: PhantomSpec) -> np.ndarray:
    """Speckle (correlated complex Gaussian field -> exponential intensity, slightly blurred, as a scanner's
    point spread and resampling do), log compression and an 8-bit display map."""
    grain = (spec.speckle_grain[0] * s, spec.speckle_grain[1] * s)
    re = ndimage.gaussian_filter(rng.standard_normal(echo.shape).astype(np.float32), grain, mode="wrap")
    im = ndimage.gaussian_filter(rng.standard_normal(echo.shape).astype(np.float32), grain, mode="wrap")
    speckle = ndimage.gaussian_filter(re**2 + im**2, 0.5 * s, mode="wrap")
    speckle /= speckle.mean()
    intensity = np.maximum(echo, 0) * speckle**spec.speckle + 1e-4  # floor: electronic noise
    db = 10 * np.log10(intensity)
    dyn = rng.uniform(*spec.dynamic_range_db)
    grey = rng.uniform(*spec.tissue_grey) + (db - np.median(db)) * (255.0 / dyn)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
