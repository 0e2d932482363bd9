"""The pictures ``predict`` writes beside each mask: ``<id>_overlay.png`` (the image, the ambiguity map in red
and the fused mask's contour in yellow) and ``<id>_maps.png`` (coherence, ambiguity and entropy side by side
on fixed colour ranges, each titled and with its colour bar); and the grid of every sample's mask that
``lesiondiff serve`` shows."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..data.transforms import resize_prob

MAP_PANELS = (("coherence", "viridis", 1.0, "coherence (mean)"), ("ambiguity", "magma", 0.25, "ambiguity (variance)"),
              ("entropy", "magma", 1.0, "entropy (bits)"))
PANEL_GAP, TITLE_H, BAR_H = 4, 14, 18  # px: between panels, the title strip, the colour bar with its labels


def uncertainty_panel(maps: dict[str, np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [TITLE_H + h + BAR_H, 3w + 8]: coherence, ambiguity and entropy side by side, each resized to
    hw, colour-mapped on a fixed range, titled above and with its colour bar and range below."""
    from matplotlib import colormaps
    from PIL import ImageDraw, ImageFont

    h, w = hw
    font = ImageFont.load_default()
    panels = []
    for key, cmap, top, title in MAP_PANELS:
        values = np.clip(resize_prob(maps[key], hw) / top, 0, 1)
        body = (colormaps[cmap](values)[..., :3] * 255).astype(np.uint8)
        ramp = (colormaps[cmap](np.linspace(0, 1, w))[:, :3] * 255).astype(np.uint8)
        panel = np.full((TITLE_H + h + BAR_H, w, 3), 255, np.uint8)
        panel[TITLE_H:TITLE_H + h] = body
        panel[TITLE_H + h + 1:TITLE_H + h + 7] = ramp[None]
        canvas = Image.fromarray(panel)
        draw = ImageDraw.Draw(canvas)
        draw.text((2, 1), title, fill=(0, 0, 0), font=font)
        draw.text((1, TITLE_H + h + 7), "0", fill=(0, 0, 0), font=font)
        label = f"{top:g}"
        draw.text((max(0, w - 6 * len(label) - 1), TITLE_H + h + 7), label, fill=(0, 0, 0), font=font)
        panels += [np.asarray(canvas), np.full((TITLE_H + h + BAR_H, PANEL_GAP, 3), 255, np.uint8)]
    return np.concatenate(panels[:-1], axis=1)


def overlay(image: np.ndarray, mask: np.ndarray, amb: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """RGB uint8: the image, ambiguity in red (variance 0.25 = full red), the mask's contour in yellow."""
    h, w = mask.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR), dtype=np.float32)
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    a = np.asarray(Image.fromarray(np.clip(amb / 0.25, 0, 1).astype(np.float32)).resize(size, Image.BILINEAR))
    rgb = rgb * (1 - 0.6 * a[..., None]) + np.array([255.0, 0, 0]) * 0.6 * a[..., None]
    edge = ndimage.binary_dilation(m & ~ndimage.binary_erosion(m))
    rgb[edge] = (255, 220, 0)
    return rgb.clip(0, 255).astype(np.uint8)



def sample_masks(samples: np.ndarray, threshold: float, cell: int = 128, columns: int = 8) -> np.ndarray:
    """RGB uint8: each of the S samples ``[S,h,w]`` in [0,1] binarised at ``threshold`` (white lesion on black),
    resized to ``cell`` px (nearest), titled "sample k", in rows of ``columns``; for viewing every mask at once."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    s = len(samples)
    cols = max(1, min(columns, s))
    rows = -(-s // cols)
    step_w, step_h = cell + PANEL_GAP, TITLE_H + cell + PANEL_GAP
    canvas = Image.new("RGB", (cols * step_w - PANEL_GAP, rows * step_h - PANEL_GAP), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, prob in enumerate(samples):
        x, y = (k % cols) * step_w, (k // cols) * step_h
        mask = Image.fromarray(np.where(np.asarray(prob, np.float32) >= threshold, 255, 0).astype(np.uint8))
        canvas.paste(mask.resize((cell, cell), Image.NEAREST).convert("RGB"), (x, y + TITLE_H))
        draw.text((x + 2, y + 1), f"sample {k + 1}", fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
