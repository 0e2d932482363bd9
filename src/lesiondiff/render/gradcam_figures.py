"""The figures of ``analysis.gradcam`` (after PGDiffSeg, Figs. 6, 7, 8 and 13): the Grad-CAM grid over layers
and steps, before/after pairs, the prior branch and the sampling trajectory. ``result`` is an
``analysis.gradcam.study.GradCamResult``, read by its attributes; ``summary`` what gradcam.json holds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .figures import pyplot, save


def gradcam_figures(out: Path, result, summary: dict) -> list[Path]:
    """gradcam_grid.png, psa.png (with pairs), prior.png (with a prior view) and trajectory.png under ``out``,
    in that order; returns their paths."""
    title = _title(summary)
    files = [plot_grid(out / "gradcam_grid.png", result, title)[0]]
    if result.views.psa:
        files.append(plot_pairs(out / "psa.png", result, title))
    if result.prior_cam is not None:
        files.append(plot_prior(out / "prior.png", result, summary))
    files.append(plot_trajectory(out / "trajectory.png", result, title))
    return files


def _title(s: dict) -> str:
    where = "R = whole image (the final prediction is empty)" if s["region_empty"] else (
        f"R = final prediction >= {s['threshold']:g} ({100 * s['region_fraction']:.1f}% of the image)")
    return (f"{s.get('model', '')} {Path(str(s.get('run', ''))).name}, image {s.get('id', '')}, {s.get('sampler')} "
            f"{s.get('steps')} steps, seed {s.get('seed')}\ntarget: {s['target']['description']}; {where}")


def _suptitle(fig, text: str, width_in: float) -> None:
    """A figure title wrapped to the figure's width (about 16 characters per inch at 8 pt)."""
    lines = [textwrap.fill(line, max(40, int(16 * width_in))) for line in text.splitlines()]
    fig.suptitle("\n".join(lines), fontsize=8)


def _grey(image: np.ndarray) -> np.ndarray:
    """[C,H,W] in [-1,1] -> grey [H,W] in [0,1]."""
    return np.clip((image.mean(0) + 1) / 2, 0, 1)


def _show_image(ax, image: np.ndarray) -> None:
    rgb = np.clip((np.moveaxis(image, 0, -1) + 1) / 2, 0, 1)
    ax.imshow(rgb if rgb.shape[-1] == 3 else rgb[..., 0], cmap="gray", vmin=0, vmax=1)


def _outline(ax, mask: np.ndarray, colour: str, width: float = 1.0) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=width)


def _cam_cell(ax, grey: np.ndarray, cam: np.ndarray, region: np.ndarray | None):
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    handle = ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    if region is not None:
        _outline(ax, region, "white", 0.6)
    if not cam.any():  # the ReLU of Grad-CAM left nothing: no positive evidence anywhere
        ax.text(0.5, 0.5, "all zero", color="white", fontsize=7, ha="center", va="center", transform=ax.transAxes)
    return handle


def _finish(fig, axes: np.ndarray, handle, title: str, path: Path) -> None:
    """Clear the ticks, add the Grad-CAM colour bar and the wrapped title, and save the figure."""

    for ax in axes.flat:
        _clean(ax)
    fig.colorbar(handle, ax=axes.ravel().tolist(), shrink=min(1.0, 3.0 / axes.shape[0]), aspect=15,
                 label="Grad-CAM / its max")
    _suptitle(fig, title, fig.get_figwidth())
    save(fig, path)


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_grid(path: Path, result, title: str) -> tuple[Path, tuple[int, int]]:
    """Fig. 6: one row per grid layer (grouped, labelled), one column per chosen step from T down to 0, after a
    first column with the image and the final prediction's outline. Returns the path and (rows, columns)."""

    plt = pyplot()
    rows = [(group, name) for group, names in result.views.groups.items() for name in names]
    k = len(result.cam_steps)
    shape = (len(rows), k + 1)
    fig, axes = plt.subplots(*shape, figsize=(1.45 * (k + 1) + 1.0, 1.45 * len(rows) + 0.8), squeeze=False,
                             layout="constrained")
    grey = _grey(result.image)
    region = None if result.region_empty else result.region
    final = result.trajectory.final_prob >= result.threshold
    handle = None
    for i, (group, name) in enumerate(rows):
        first = axes[i, 0]
        _show_image(first, result.image)
        _outline(first, final, "yellow", 1.0)
        first.set_ylabel(f"{group}\n{name}", fontsize=7)
        for j, t in enumerate(result.cam_timesteps):
            handle = _cam_cell(axes[i, j + 1], grey, result.cams[name][j], region)
            if i == 0:
                axes[i, j + 1].set_title(f"t = {t}", fontsize=8)
        if i > 0 and rows[i - 1][0] != group:
            for ax in axes[i]:
                ax.spines["top"].set(color="black", linewidth=2.5)
    axes[0, 0].set_title("image, final mask" + (" (empty)" if result.region_empty else ""), fontsize=8)
    _finish(fig, axes, handle, f"Grad-CAM per layer along the trajectory (t from T to 0; white outline: R)\n{title}",
            path)
    return path, shape


def plot_pairs(path: Path, result, title: str) -> Path:
    """Fig. 7: per (before, after) pair, the CAM of the before layer (top) and of the after layer (bottom)."""

    plt = pyplot()
    pairs = result.views.psa
    k = len(result.cam_steps)
    fig, axes = plt.subplots(2 * len(pairs), k, figsize=(1.45 * k + 1.0, 1.45 * 2 * len(pairs) + 0.8),
                             squeeze=False, layout="constrained")
    grey = _grey(result.image)
    region = None if result.region_empty else result.region
    handle = None
    for p, (before, after) in enumerate(pairs):
        for r, (which, name) in enumerate((("before", before), ("after", after))):
            row = axes[2 * p + r]
            for j, t in enumerate(result.cam_timesteps):
                handle = _cam_cell(row[j], grey, result.cams[name][j], region)
                if p == 0 and r == 0:
                    row[j].set_title(f"t = {t}", fontsize=8)
            row[0].set_ylabel(f"{which}\n{name}", fontsize=7)
            if p > 0 and r == 0:
                for ax in row:
                    ax.spines["top"].set(color="black", linewidth=2.5)
    _finish(fig, axes, handle, f"Grad-CAM before (top) and after (bottom) each pair's module (white outline: R)\n"
            f"{title}", path)
    return path


def plot_prior(path: Path, result, summary: dict) -> Path:
    """Fig. 8: the image and the CAM of the prior layer for its auxiliary classification logit."""

    plt = pyplot()
    p = summary["prior"]
    fig, axes = plt.subplots(1, 2, figsize=(5.6, 3.3), layout="constrained")
    _show_image(axes[0], result.image)
    _outline(axes[0], result.trajectory.final_prob >= result.threshold, "yellow")
    axes[0].set_title("image, final mask", fontsize=8)
    _cam_cell(axes[1], _grey(result.image), result.prior_cam, None if result.region_empty else result.region)
    axes[1].set_title(f"{p['layer']}\ntarget {p['target']} = {p['logit']:.2f} (p = {p['probability']:.2f}), "
                      f"t = {p['t']}", fontsize=7)
    for ax in axes:
        _clean(ax)
    fig.suptitle(f"prior branch Grad-CAM: {summary.get('model', '')}, image {summary.get('id', '')}", fontsize=8)
    save(fig, path)
    return path


def plot_trajectory(path: Path, result, title: str) -> Path:
    """Fig. 13: x_t (top) and the x0 probability predicted (bottom) at the chosen steps, then the final sample
    (top) and the final mask (bottom)."""

    plt = pyplot()
    traj = result.trajectory
    k = len(result.cam_steps)
    fig, axes = plt.subplots(2, k + 1, figsize=(1.45 * (k + 1) + 0.8, 3.9), squeeze=False, layout="constrained")
    for j, step in enumerate(result.cam_steps):
        axes[0, j].imshow(traj.x_t[step], cmap="gray", vmin=-2, vmax=2)
        axes[0, j].set_title(f"t = {int(traj.timesteps[step])}", fontsize=8)
        axes[1, j].imshow(traj.x0_prob[step], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("x_t (grey -2..2)", fontsize=7)
    axes[1, 0].set_ylabel("x0 probability (0..1)", fontsize=7)
    axes[0, k].imshow(traj.final_prob, cmap="gray", vmin=0, vmax=1)
    axes[0, k].set_title("final (x_0 + 1) / 2", fontsize=8)
    _show_image(axes[1, k], result.image)
    final = traj.final_prob >= result.threshold
    axes[1, k].imshow(np.ma.masked_where(~final, final.astype(float)), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
    _outline(axes[1, k], final, "yellow")
    axes[1, k].set_title(f"final mask ({100 * final.mean():.1f}%)", fontsize=8)
    for ax in axes.flat:
        _clean(ax)
    _suptitle(fig, f"sampling trajectory ({len(traj.timesteps)} steps; columns: the Grad-CAM steps)\n{title}",
              fig.get_figwidth())
    save(fig, path)
    return path
