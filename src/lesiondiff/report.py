"""A self-contained HTML report (report.html + figures/*.png) of a run, its predictions and their evaluation."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .data.dataset import mask_paths
from .data.io import read_image, read_masks
from .data.manifest import Manifest
from .data.transforms import resize_prob
from .io_utils import atomic_path, atomic_write_text
from .metrics import METRIC_NAMES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)


def training_figure(run: Path, path: Path) -> bool:
    log = run / "log.csv"
    if not log.is_file():
        return False
    with log.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = [int(r["step"]) for r in rows]
    ax[0].plot(steps, [float(r["loss"]) for r in rows])
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log", title="training loss (mean over log interval)")
    val = [(int(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice")]
    if val:
        ax[1].plot(*zip(*val), marker="o")
    ax[1].set(xlabel="step", ylabel="validation Dice", ylim=(0, 1), title="validation Dice (EMA, per-image mean)")
    _save(fig, path)
    return True


def examples_figure(pred_dir: Path, rows: list[dict], path: Path, n: int = 6) -> bool:
    """One row per image: image, ground truth, fused mask overlay, coherence, ambiguity, entropy."""
    with (pred_dir / "predictions.csv").open() as f:
        preds = {r["id"]: r for r in csv.DictReader(f)}
    chosen = [r for r in rows if r["id"] in preds][:n] or [{"id": i, "image": p["image"]} for i, p in
                                                             list(preds.items())[:n]]
    if not chosen:
        return False
    plt = _pyplot()
    titles = ["image", "ground truth", "fused mask + ambiguity", "coherence (mean)", "ambiguity (variance)",
              "entropy (bits)"]
    fig, axes = plt.subplots(len(chosen), 6, figsize=(15, 2.6 * len(chosen)), squeeze=False)
    for i, row in enumerate(chosen):
        p = preds[row["id"]]
        image = read_image(row["image"])
        with np.load(pred_dir / p["probs"]) as npz:
            maps = {k: resize_prob(npz[k], image.shape[:2]) for k in ("coherence", "ambiguity", "entropy")}
        gt_paths = mask_paths(row) if "masks" in row else []
        gt = read_masks(gt_paths, shape=image.shape[:2]) if gt_paths else None
        over = np.asarray(Image.open(pred_dir / p["overlay"]).convert("RGB"))
        cells = [(image[..., 0] if image.shape[2] == 1 else image / 255.0, "gray", None),
                 (gt if gt is not None else np.zeros(image.shape[:2]), "gray", None),
                 (over, None, None), (maps["coherence"], "viridis", (0, 1)),
                 (maps["ambiguity"], "magma", (0, 0.25)), (maps["entropy"], "magma", (0, 1))]
        for j, (img, cmap, lim) in enumerate(cells):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=lim[0] if lim else None, vmax=lim[1] if lim else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
        axes[i, 0].set_ylabel(row["id"][:24], fontsize=8)
    _save(fig, path)
    return True


def _metrics_table(summary: dict) -> str:
    head = "".join(f"<th>{k}</th>" for k in METRIC_NAMES)
    body = []
    for view in ("fused", "single_sample"):
        for group, stats in summary[view].items():
            n = stats["dice"]["n"] + stats["dice"]["n_nan"]
            cells = "".join(f"<td>{stats[k]['mean']:.3f} &plusmn; {stats[k]['std']:.3f}</td>" for k in METRIC_NAMES)
            body.append(f"<tr><th>{view} / {html.escape(group)}</th>{cells}<td>{n}</td></tr>")
    return f"<table><tr><th>view</th>{head}<th>n</th></tr>{''.join(body)}</table>"


def write_report(out: str | Path, run: str | Path | None = None, pred_dir: str | Path | None = None,
                 summary: dict | None = None, manifest: str | Path | None = None, split: str = "test",
                 title: str = "lesiondiff report") -> Path:
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if run is not None:
        run = Path(run)
        train_summary = run / "summary.json"
        if train_summary.is_file():
            s = json.loads(train_summary.read_text())
            parts.append("<h2>Training</h2><table>" + "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in s.items())
                + "</table>")
        if training_figure(run, figs / "training.png"):
            parts.append('<img src="figures/training.png" alt="training curves">')
    if summary is not None:
        parts.append("<h2>Evaluation</h2>")
        parts.append(f"<p class='protocol'>{html.escape(summary['protocol'])}</p>")
        settings = summary.get("prediction_settings") or {}
        if settings:
            parts.append("<p>Predictions: " + html.escape(", ".join(f"{k} {v}" for k, v in settings.items()))
                         + "</p>")
        parts.append(_metrics_table(summary))
        pooled, u = summary["pooled"]["fused"], summary["uncertainty"]
        parts.append(f"<p>Pooled over the split (fused masks, summed pixel counts): Dice {pooled['pooled_dice']:.3f},"
                     f" IoU {pooled['pooled_iou']:.3f}. Uncertainty, per image then averaged: GED "
                     f"{u['ged']['mean']:.3f} &plusmn; {u['ged']['std']:.3f} (d = 1 - IoU, samples vs the ground "
                     f"truth); ECE {u['ece']['mean']:.4f} &plusmn; {u['ece']['std']:.4f} (10 equal-width bins, "
                     "coherence map).</p>")
    if pred_dir is not None:
        rows = Manifest.read(manifest).rows(split=split) if manifest else []
        if examples_figure(Path(pred_dir), rows, figs / "examples.png"):
            parts.append("<h2>Examples</h2><p>Yellow: fused mask contour. Red: ambiguity (sample variance).</p>"
                         '<img src="figures/examples.png" alt="examples">')
    if run is not None and (Path(run) / "config.yaml").is_file():
        parts.append("<h2>Configuration</h2><pre>" + html.escape((Path(run) / "config.yaml").read_text()) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f4f4f4;text-align:left}img{max-width:100%}.protocol{color:#444}pre{background:#f8f8f8;"
             "padding:1em;font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
