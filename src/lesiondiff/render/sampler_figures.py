"""The figure of ``analysis.sampler_sweep``: Dice against the number of function evaluations per sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import pyplot, save


def dice_vs_nfe_figure(summary: dict, path: Path) -> Path:
    """PGDiffSeg Figs. 10-11: mean Dice (%) against NFE (log axis), one line per sampler with a ±std band, the
    reference as a horizontal line; ``summary`` is the one ``analysis.sampler_sweep`` writes as summary.json."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = summary["reference"]
    samplers = list(dict.fromkeys(r["sampler"] for r in summary["results"]))
    for i, name in enumerate(samplers):
        rows = [r for r in summary["results"] if r["sampler"] == name and r != ref]
        if not rows:
            continue
        x = np.array([r["nfe"] for r in rows])
        mean = np.array([100 * r["dice_mean"] for r in rows])
        std = np.array([100 * r["dice_std"] for r in rows])
        ax.plot(x, mean, "o-", color=f"C{i}", label=name, markersize=4)
        ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.2, linewidth=0)
    if ref is not None:
        pct = f"{100 * ref['dice_mean']:.2f} ± {100 * ref['dice_std']:.2f}"
        ax.axhline(100 * ref["dice_mean"], color="goldenrod", linestyle="--",
                   label=f"{ref['sampler']} {ref['nfe']} steps ({pct} %)")
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in summary["results"] if r != ref})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set(xlabel="number of function evaluations (NFE, log scale)", ylabel="Dice % (mean over images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    p, s = summary["protocol"], summary["settings"]
    ax.set_title(f"Dice vs NFE: {s['dataset']}, {p['split']} split, {p['images']} images"
                 f"{'' if p['images'] == p['split_images'] else ' (evenly spaced of ' + str(p['split_images']) + ')'}"
                 f", {p['repeats']} repeats\nline: mean over repeats, band: ± std; threshold {p['threshold']}, "
                 f"seed {p['seed']}", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return path
