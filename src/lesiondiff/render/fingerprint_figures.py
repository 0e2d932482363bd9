"""The figures of ``analysis.fingerprint``: model curves per timestep (mask error, loss, gradient norm) and the
data-set fingerprint (recoverability and its slope)."""

from __future__ import annotations

from pathlib import Path

from ..config import DiffusionConfig
from .figures import pyplot, save


def model_curves_figure(path: Path, curves: list, panels: list[tuple[str, ...]], ylabels: list[str], title: str,
                        log: tuple[bool, ...] = (False, False)) -> Path:
    """One panel per tuple of ``panels``: each curve name of the tuple per source against t (the second name
    dashed), ``curves`` being ``analysis.fingerprint.Curves`` (source, timesteps [K], values[name] [K])."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4), squeeze=False)
    for ax, names, ylabel, logy in zip(axes[0], panels, ylabels, log):
        for i, c in enumerate(curves):
            for name, style in zip(names, ("-", "--")):
                label = c.source + (" (no image)" if name == "mask_error_unconditioned" else "")
                ax.plot(c.timesteps, c.values[name], style, color=f"C{i}", label=label)
        ax.set(xlabel="timestep t", ylabel=ylabel, yscale="log" if logy else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return path


def dataset_fingerprint_figure(path: Path, curves: list, datasets: list[dict], s: dict,
                               schedule: DiffusionConfig) -> Path:
    """Recoverability (left) and its slope (right) against t per data set, titled with the settings ``s``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4))
    for i, (c, d) in enumerate(zip(curves, datasets)):
        label = f"{c.source} (n={d['n_images']})"
        axes[0].plot(c.timesteps, c.values["recoverability"], color=f"C{i}", label=label)
        axes[1].plot(c.timesteps, c.values["recoverability_slope"], color=f"C{i}", label=label)
    axes[0].set(xlabel="timestep t", ylabel="Dice(Gaussian(x_t) > 0, mask)", ylim=(0, 1.02),
                title="recoverability (mean per-image Dice)")
    axes[1].set(xlabel="timestep t", ylabel="-d recoverability / dt",
                title=f"slope, moving average over {s['window']:g} t")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"data-set fingerprint: {s['split']} split, {s['size']} px, Gaussian sigma {s['sigma']:g} px, "
                 f"seed {s['seed']}, every {s['every']} t, {schedule.schedule} schedule T="
                 f"{schedule.num_train_timesteps}, no model", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return path
