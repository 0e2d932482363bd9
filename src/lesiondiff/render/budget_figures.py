"""The budget curve's figure (benchmarks/budget_curve.py): lesion-image Dice against training CPU minutes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import pyplot, save


def budget_curve_figure(points: dict[str, list[tuple[float, float, float, float]]],
                        fits: dict[str, tuple[float, float]], path: Path, title: str) -> None:
    """``points``: method -> [(CPU minutes, mean lesion-image Dice, interval low, interval high)], drawn with
    error bars on a log-minutes axis; ``fits``: method -> (a, b) of Dice = a + b log10(minutes), drawn dashed
    from the smallest budget to ten times the largest (the extrapolation), and not past 100 % (a line in
    log-minutes rises without bound; a Dice cannot)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = [m for pts in points.values() for m, *_ in pts]
    grid = np.geomspace(min(xs), 10 * max(xs), 100)
    for k, (name, pts) in enumerate(points.items()):
        colour = f"C{k}"
        m, d, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
        ax.errorbar(m, 100 * d, yerr=[100 * (d - lo), 100 * (hi - d)], fmt="o-", color=colour, capsize=3,
                    label=name)
        if name in fits:
            a, b = fits[name]
            line = a + b * np.log10(grid)
            ax.plot(grid, np.where(line <= 1, 100 * line, np.nan), "--", color=colour, lw=1,
                    label=f"{name}: fit {100 * a:.1f} + {100 * b:.1f} log10(min)")
    ax.set_xscale("log")
    ax.set(xlabel="training CPU minutes (train.clock=process, one thread)", ylabel="lesion-image Dice (%)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    save(fig, path)
