"""The pictures of one run and its predictions, from arrays: training curves, prediction examples with their
uncertainty maps, and the sampling rounds beside the fused mask (PalScDiff Fig. 5). ``reporting/run_figures.py``
reads the run's and the prediction folder's files and hands the arrays here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import pyplot, save

# green: visible on a white mask, a black background and a grey ultrasound image alike, and apart from the
# overlays' colours (red: ambiguity, yellow: the fused mask's contour)
GT_COLOUR = "#00c853"


def training_curves(rows: list[dict], path: Path) -> None:
    """Training loss and validation Dice against the step, from ``log.csv``'s rows (non-empty)."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = [int(r["step"]) for r in rows]
    ax[0].plot(steps, [float(r["loss"]) for r in rows])
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log", title="training loss (mean over log interval)")
    val = [(int(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice")]
    if val:
        ax[1].plot(*zip(*val), marker="o")
    ax[1].set(xlabel="step", ylabel="validation Dice", ylim=(0, 1), title="validation Dice (EMA, per-image mean)")
    save(fig, path)


def image_grid(rows: list[tuple[str, list[tuple]]], titles: list[str], suptitle: str, path: Path,
               row_height: float, width: float = 15.0, contours: list[np.ndarray | None] | None = None,
               titles_per_cell: bool = False) -> None:
    """A grid of images: one row per ``(label, cells)``, each cell ``(array, cmap, (vmin, vmax) or None)`` or,
    with ``titles_per_cell``, ``(array, cmap, limits, title)``; ``titles`` head the first row's columns;
    ``contours``: a ground truth [H,W] per row drawn as a green contour on every cell (None: none)."""
    plt = pyplot()
    cols = max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(width, 0.4 + len(rows) * row_height), squeeze=False,
                             layout="constrained")
    fig.suptitle(suptitle, fontsize=9)
    for i, (label, cells) in enumerate(rows):
        for j, cell in enumerate(cells):
            img, cmap, lim = cell[:3]
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=lim[0] if lim else None, vmax=lim[1] if lim else None,
                      interpolation="nearest" if titles_per_cell else None)
            gt = contours[i] if contours else None
            if gt is not None:
                ax.contour(gt.astype(np.float32), levels=[0.5], colors=GT_COLOUR, linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            if titles_per_cell:
                ax.set_title(cell[3], fontsize=8)
            elif i == 0:
                ax.set_title(titles[j], fontsize=9)
        axes[i, 0].set_ylabel(label[:24], fontsize=8)
    save(fig, path)
