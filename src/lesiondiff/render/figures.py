"""Figure plumbing shared by every module that draws (matplotlib on the file-only Agg backend, atomic PNG
writes) and the reliability diagram, which both ``evaluate`` and the report draw."""

from __future__ import annotations

from pathlib import Path

from ..io_utils import atomic_path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are only written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG (atomically) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    pyplot().close(fig)


def reliability_title(summary: dict) -> str:
    """The title of a summary's reliability diagram: split, images, S and the pooled ECE."""
    c = summary["calibration"]
    return (f"reliability, split {summary['split']}: {summary['n_images']} images, S = {c['n_samples']}, "
            f"pooled ECE {c['ece_pooled']:.4f}")


def reliability_figure(calibration: dict, path: Path, title: str) -> bool:
    """Reliability diagram of a summary's ``calibration`` section (pooled bins over the split).

    Top: the observed foreground fraction of each non-empty bin, as a bar over the bin's range and as a point
    at the bin's mean predicted probability (the mean of the S samples), with the diagonal of perfect
    calibration. Bottom: pixels per bin on a log axis, so the few pixels in the middle bins are
    visible next to the millions near 0 and 1. Returns False when there are no bins to draw.
    """
    bins = calibration.get("bins") or []
    full = [b for b in bins if b["count"]]
    if not full:
        return False
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.3]})
    width = bins[0]["hi"] - bins[0]["lo"]
    top.bar([b["lo"] for b in full], [b["frac_fg"] for b in full], width=width, align="edge", color="#9ecae1",
            edgecolor="#3182bd", label="observed foreground fraction per bin")
    top.plot([b["mean_prob"] for b in full], [b["frac_fg"] for b in full], "o-", color="#d62728",
             label="(mean predicted probability, observed fraction)")
    top.plot([0, 1], [0, 1], "--", color="0.3", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed foreground fraction")
    top.legend(loc="upper left", fontsize=7)
    top.set_title(f"{title}\nECE per image {calibration['ece_per_image']['mean']:.4f} ± "
                  f"{calibration['ece_per_image']['std']:.4f}; {calibration['n_bins']} equal-width bins",
                  fontsize=8)
    bottom.bar([b["lo"] for b in bins], [max(b["count"], 0) for b in bins], width=width, align="edge",
               color="0.6", edgecolor="0.3")
    bottom.set(yscale="log", xlim=(0, 1), xlabel=f"predicted probability ({calibration['probability']})",
               ylabel="pixels per bin (log)")
    save(fig, path)
    return True
