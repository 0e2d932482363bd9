"""compare.png: the Analysing study's Fig. 1 form, one row per (image, preset), the image with its ground-truth
contour, then the diffusion and the feed-forward run's mean and std of the S samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import cm, colors

from ..io_utils import atomic_path
from .figures import pyplot

# compare.png layout, in inches at FIGURE_DPI: one PANEL_IN square per panel, a label margin on the left, the
# two colour bars on the right and the title on top; saved without tight cropping, so its size is exactly
# figure_inches(rows) * FIGURE_DPI.
PANEL_IN, LEFT_IN, RIGHT_IN, TOP_IN, BOTTOM_IN, FIGURE_DPI = 1.8, 0.7, 1.3, 0.95, 0.15, 100
FIGURE_COLUMNS = ("image + ground truth", "diffusion: mean", "diffusion: std", "feed-forward: mean",
                  "feed-forward: std")


def figure_inches(n_rows: int) -> tuple[float, float]:
    """(width, height) of compare.png in inches for ``n_rows`` (image, preset) rows."""
    return (LEFT_IN + len(FIGURE_COLUMNS) * PANEL_IN + RIGHT_IN, TOP_IN + n_rows * PANEL_IN + BOTTOM_IN)


def draw_compare_figure(path: Path, cells: list[tuple], title: Callable[[float], str]) -> Path:
    """Draw ``cells`` (one (row label, image, ground truth, {mode: (mean, std) or the text of a missing panel})
    per row) into ``path``. All mean panels share 0..1, all std panels one scale, 0 to the largest std shown
    rounded up to 3 decimals; ``title(vmax)`` is the suptitle."""
    std_max = max([float(m[1].max()) for *_, maps in cells for m in maps.values() if not isinstance(m, str)]
                  + [1e-3])
    vmax = math.ceil(std_max * 1000) / 1000
    plt = pyplot()
    width, height = figure_inches(len(cells))
    fig = plt.figure(figsize=(width, height), dpi=FIGURE_DPI)
    for r, cell in enumerate(cells):
        _draw_row(fig, r, cell, vmax)
    _colour_bars(fig, vmax)
    fig.suptitle(title(vmax), fontsize=8, y=1 - 0.1 / height)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=FIGURE_DPI, format="png")
    plt.close(fig)
    return path


def _draw_row(fig, r: int, cell: tuple, vmax: float) -> None:
    """Row ``r`` of the figure: the image with its ground-truth contour, then each mode's mean and std."""
    label, image, gt, maps = cell
    width, height = fig.get_size_inches()
    pad = 0.06
    bottom = (height - TOP_IN - (r + 1) * PANEL_IN) / height
    for c in range(len(FIGURE_COLUMNS)):
        ax = fig.add_axes(((LEFT_IN + c * PANEL_IN + pad) / width, bottom + pad / height,
                           (PANEL_IN - 2 * pad) / width, (PANEL_IN - 2 * pad) / height))
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title(FIGURE_COLUMNS[c], fontsize=8)
        if c == 0:
            _draw_image(ax, image, gt, label)
            continue
        m = maps["diffusion" if c <= 2 else "feedforward"]
        if isinstance(m, str):
            ax.text(0.5, 0.5, m, ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        is_std = c % 2 == 0
        ax.imshow(m[1] if is_std else m[0], cmap="magma" if is_std else "viridis", vmin=0, vmax=vmax if is_std else 1)


def _draw_image(ax, image: np.ndarray, gt: np.ndarray, label: str) -> None:
    """The image (grey or colour, 0..255) with the ground truth's contour in yellow."""
    if image.shape[2] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.clip(image / 255.0, 0, 1))
    if gt.any():
        ax.contour(gt.astype(float), levels=[0.5], colors=["yellow"], linewidths=0.8)
    ax.set_ylabel(label, fontsize=7)


def _colour_bars(fig, vmax: float) -> None:
    """The two colour bars on the right: mean 0..1, std 0..vmax."""
    width, height = fig.get_size_inches()
    bar_w = 0.15 / width
    for k, (cmap, top, label) in enumerate((
            ("viridis", 1.0, "mean of S samples"), ("magma", vmax, f"std of S samples, 0–{vmax:g}"))):
        span = (height - TOP_IN - BOTTOM_IN) / height
        cax = fig.add_axes(((width - RIGHT_IN + 0.15) / width, BOTTOM_IN / height + span * (0.55 - 0.55 * k),
                            bar_w, span * 0.4))
        bar = fig.colorbar(cm.ScalarMappable(colors.Normalize(0, top), cmap), cax=cax)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=7)
