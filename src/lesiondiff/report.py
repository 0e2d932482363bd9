"""A self-contained HTML report (report.html + figures/*.png) of a run, its predictions and their evaluation."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .data.dataset import mask_paths
from .data.io import image_size, read_image, read_mask, read_masks
from .data.manifest import Manifest, evenly_spaced
from .data.transforms import resize_prob
from .engine.evaluate import (
    COLUMN_NAMES,
    OUTPUT_COLUMNS,
    OUTPUT_METRICS,
    PALSCDIFF_METRICS,
    ensemble_minus_best_text,
    image_level_lines,
    output_rows,
    outputs_protocol,
    percent_cell,
    rounds_cells,
    rounds_protocol,
    rounds_table,
    samples_are,
)
from .engine.outputs import read_predictions
from .io_utils import atomic_write_text
from .metrics import METRIC_NAMES, image_dice
from .reporting.figures import pyplot, reliability_figure, reliability_title, save

# green: visible on a white mask, a black background and a grey ultrasound image alike, and apart from the
# overlays' colours (red: ambiguity, yellow: the fused mask's contour)
GT_COLOUR = "#00c853"


def training_figure(run: Path, path: Path) -> bool:
    log = run / "log.csv"
    if not log.is_file():
        return False
    with log.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
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
    return True


def examples_figure(pred_dir: Path, rows: list[dict], path: Path, n: int = 6) -> bool:
    """One row per image: image, ground truth, fused mask overlay, coherence, ambiguity, entropy. Rows are
    as tall as the first image's aspect needs; the title says what the maps were computed from (predict.json's
    ``maps``: the sampled probabilities, or the samples binarised at the threshold)."""
    preds, settings = read_predictions(pred_dir)
    chosen = [r for r in rows if r["id"] in preds][:n] or [{"id": i, "image": p["image"]} for i, p in
                                                             list(preds.items())[:n]]
    if not chosen:
        return False
    plt = pyplot()
    titles = ["image", "ground truth", "fused contour (yellow)\n+ ambiguity (red)", "coherence (mean)",
              "ambiguity (variance)", "entropy (bits)"]
    h, w = image_size(chosen[0]["image"])  # the header only: the pixels are read once, in the loop below
    fig, axes = plt.subplots(len(chosen), 6, figsize=(15, 0.4 + len(chosen) * min(2.6, 2.5 * h / w + 0.3)),
                             squeeze=False, layout="constrained")
    source = (f"the S = {settings.get('samples', '?')} samples binarised at {settings.get('threshold', 0.5):g}"
              if settings.get("maps") == "masks" else "the S sampled probabilities")
    fig.suptitle(f"coherence, ambiguity and entropy over {source}", fontsize=9)
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
    save(fig, path)
    return True


def rounds_figure(pred_dir: Path, rows: list[dict], path: Path, n: int = 4,
                  threshold: float | None = None) -> list[dict]:
    """PalScDiff Fig. 5: one row per image; columns: the image with its ground-truth contour, round 1 .. round S
    (sample k-1 resized bilinearly to the original size with ``resize_prob``, then ``>= threshold``, the
    Evaluator's rule), and the fused mask as predict wrote it (``<id>_mask.png``, at predict's threshold even
    when ``threshold`` differs); the ground-truth contour is drawn on every panel and each mask's per-image
    Dice is in its title.

    ``rows`` are manifest rows; the ``n`` images are spread evenly over the sorted ids that have a prediction
    and a non-empty ground truth (without any, over the sorted predicted ids, and no Dice is shown).
    ``threshold`` defaults to the one in ``predict.json`` (else 0.5). Returns one record per image drawn,
    ``{"id", "rounds": [Dice of round 1..S], "fused": Dice}`` (Dice None without ground truth), or ``[]``
    (no figure written) when there is nothing to draw or the predictions have fewer than two samples.
    """
    pred_dir = Path(pred_dir)
    preds, settings = read_predictions(pred_dir)
    thr = float(settings.get("threshold", 0.5)) if threshold is None else threshold
    with_gt = sorted((r for r in rows if r["id"] in preds and mask_paths(r)), key=lambda r: r["id"])
    # every candidate's ground truth is read once to find the lesions; images and samples only for the n chosen
    with_gt = [r for r in with_gt if read_masks(mask_paths(r)).any()]
    chosen = evenly_spaced(with_gt, n) or evenly_spaced([{"id": i, "image": preds[i]["image"]} for i in sorted(preds)], n)
    if not chosen:
        return []
    with np.load(pred_dir / preds[chosen[0]["id"]]["probs"]) as npz:
        n_samples = int(npz["samples"].shape[0])
    if n_samples < 2:
        return []
    plt = pyplot()
    cols = n_samples + 2
    fig, axes = plt.subplots(len(chosen), cols, figsize=(1.9 * cols, 2.0 * len(chosen) + 0.7), squeeze=False,
                             layout="constrained")  # keeps the three-line suptitle clear of the panels
    fusion = settings.get("fusion", "fused")
    records = []
    for i, row in enumerate(chosen):
        p = preds[row["id"]]
        image = read_image(row["image"])
        hw = image.shape[:2]
        gt = read_masks(mask_paths(row), shape=hw) if with_gt else None
        with np.load(pred_dir / p["probs"]) as npz:
            samples = npz["samples"]
            # one sample at a time: at a dermoscopy image's full size, S float32 maps are hundreds of MB
            masks = [resize_prob(samples[k].astype(np.float32), hw) >= thr for k in range(samples.shape[0])]
        masks.append(read_mask(pred_dir / p["mask"]))
        dice = [None if gt is None else image_dice(m, gt) for m in masks]
        records.append({"id": row["id"], "rounds": dice[:-1], "fused": dice[-1]})
        names = [f"round {k + 1}" for k in range(len(masks) - 1)] + [f"fused ({fusion})"]
        panels = [(image[..., 0] if image.shape[2] == 1 else image / 255.0, "image + GT contour")]
        panels += [(m, name if d is None else f"{name}\nDice {d:.3f}") for m, name, d in zip(masks, names, dice)]
        for j, (img, title) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=0 if j else None, vmax=1 if j else None, interpolation="nearest")
            if gt is not None:
                ax.contour(gt.astype(np.float32), levels=[0.5], colors=GT_COLOUR, linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(row["id"][:24], fontsize=8)
    which = (f"{len(chosen)} of the {len(with_gt)} images with a non-empty ground truth, evenly spaced over the "
             "sorted ids" if with_gt else f"{len(chosen)} images evenly spaced over the sorted ids (no ground "
             "truth given)")
    # short lines, so the title never sets the width of a figure with few rounds
    are = settings.get("samples_are")
    fig.suptitle(f"Sampling rounds and the fused mask\n{which}\nround k = the k-th sample at threshold {thr:g}, "
                 "resized to the original size; green: ground-truth contour" + (f"\nsamples: {are}" if are else ""),
                 fontsize=9)
    save(fig, path)
    return records


def _metrics_table(summary: dict) -> str:
    head = "".join(f"<th>{k}</th>" for k in METRIC_NAMES)
    body = []
    for view in ("fused", "single_sample"):
        for group, stats in summary[view].items():
            n = stats["dice"]["n"] + stats["dice"]["n_nan"]
            cells = "".join(f"<td>{stats[k]['mean']:.3f} &plusmn; {stats[k]['std']:.3f}</td>" for k in METRIC_NAMES)
            body.append(f"<tr><th>{view} / {html.escape(group)}</th>{cells}<td>{n}</td></tr>")
    return f"<table><tr><th>view</th>{head}<th>n</th></tr>{''.join(body)}</table>"


def _rounds_html(summary: dict) -> str:
    """PalScDiff's Table 4 for a summary that has ``rounds``: each round alone, the ensemble and the spread."""
    head = "".join(f"<th>{COLUMN_NAMES[k]}</th>" for k in PALSCDIFF_METRICS)
    body = "".join(f"<tr><th>{html.escape(r['which'])}</th>"
                   + "".join(f"<td>{html.escape(c)}</td>" for c in rounds_cells(r)) + "</tr>"
                   for r in rounds_table(summary))
    return ("<h3>Sampling rounds</h3><p>Each round scores one of the S samples of every image on its own (round k "
            f"= the k-th sample; samples: {html.escape(samples_are(summary))}), as PalScDiff's Table 4 does; the "
            "ensemble row is the fused row above. Mean &plusmn; population std over images, in %.</p>"
            f"<table><tr><th></th>{head}</tr>{body}</table>"
            f"<p>{html.escape(ensemble_minus_best_text(summary))}.</p>"
            f"<p class='protocol'>{html.escape(rounds_protocol(summary))}.</p>")


def _outputs_html(summary: dict) -> str:
    """The DiffSeg paper's Table 1 form (``evaluate.output_rows``): each sample alone, the mean of the
    samples and the fused mask, in Dice, precision, recall and Jaccard; "" without ``mean_of_samples``."""
    rows = output_rows(summary)
    if not rows:
        return ""
    head = "".join(f"<th>{OUTPUT_COLUMNS[k]}</th>" for k in OUTPUT_METRICS)
    body = "".join(f"<tr><th>{html.escape(label)}</th>"
                   + "".join(f"<td>{html.escape(percent_cell(stats[k]))}</td>" for k in OUTPUT_METRICS) + "</tr>"
                   for label, stats in rows)
    return ("<h3>Samples alone, their mean, and the fused mask</h3>"
            f"<table><tr><th></th>{head}</tr>{body}</table>"
            f"<p class='protocol'>{html.escape(outputs_protocol(summary))}.</p>")


def _calibration_html(summary: dict, figs: Path) -> str:
    """The calibration paragraph and, for summaries that have a ``calibration`` section, its reliability
    diagram (redrawn from the summary's bins, so it does not matter where the evaluation wrote its own)."""
    c = summary.get("calibration")
    if c is None:  # summaries written before the calibration section: the per-image figure only
        e = summary["uncertainty"]["ece"]
        return (f"<p>Calibration: ECE per image {e['mean']:.4f} &plusmn; {e['std']:.4f} (10 equal-width bins, "
                "coherence map).</p>")
    e = c["ece_per_image"]
    text = (f"<h3>Calibration</h3><p>ECE of the {html.escape(c['probability'])} (S = {c['n_samples']}), "
            f"{c['n_bins']} equal-width bins: per image {e['mean']:.4f} &plusmn; {e['std']:.4f} (mean &plusmn; "
            f"population std over {e['n']} images); pooled over all {c['n_pixels']} pixels of the split "
            f"{c['ece_pooled']:.4f}.</p>")
    if reliability_figure(c, figs / "reliability.png", reliability_title(summary)):
        text += '<img src="figures/reliability.png" alt="reliability diagram">'
    return text


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
            s = json.loads(train_summary.read_text(encoding="utf-8"))
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
        if summary.get("rounds"):
            parts.append(_rounds_html(summary))
        parts.append(_outputs_html(summary))
        pooled, u = summary["pooled"]["fused"], summary["uncertainty"]
        diffseg = (f"; DiffSeg's GED {u['ged_diffseg']['mean']:.3f} &plusmn; {u['ged_diffseg']['std']:.3f} (Eqs. "
                   "5-7: mean pairwise RMS difference among the samples, no ground truth)" if "ged_diffseg" in u
                   else "")
        parts.append(f"<p>Pooled over the split (fused masks, summed pixel counts): Dice {pooled['pooled_dice']:.3f},"
                     f" IoU {pooled['pooled_iou']:.3f}. Uncertainty, per image then averaged: GED "
                     f"{u['ged']['mean']:.3f} &plusmn; {u['ged']['std']:.3f} (d = 1 - IoU, samples vs the ground "
                     f"truth){diffseg}.</p>")
        parts.append(_calibration_html(summary, figs))
        lines = image_level_lines(summary)
        if lines:
            parts.append("<h3>Lesion images and the lesion / no-lesion decision</h3><p>"
                         + "<br>".join(html.escape(line) for line in lines) + "</p>")
    if pred_dir is not None:
        rows = Manifest.read(manifest).rows(split=split) if manifest else []
        if examples_figure(Path(pred_dir), rows, figs / "examples.png"):
            parts.append("<h2>Examples</h2><p>Yellow: fused mask contour. Red: ambiguity (sample variance).</p>"
                         '<img src="figures/examples.png" alt="examples">')
        threshold = summary["threshold"] if summary is not None else None  # the evaluation's, if it re-thresholded
        if rounds_figure(Path(pred_dir), rows, figs / "rounds.png", threshold=threshold):
            parts.append("<h2>Sampling rounds and the fused mask</h2><p>Each row is one image; each round column "
                         "is one of the S samples drawn for it, thresholded and resized as the evaluation does, "
                         "and the last column is the fused mask the predictions report (PalScDiff, Fig. 5). "
                         "Pixels where the rounds differ are where sampling is uncertain (PalScDiff finds them "
                         "mostly along lesion boundaries); the fusion settles them. Red: ground-truth contour; titles: per-image Dice.</p>"
                         '<img src="figures/rounds.png" alt="sampling rounds and the fused mask">')
    if run is not None and (Path(run) / "config.yaml").is_file():
        parts.append("<h2>Configuration</h2><pre>" + html.escape((Path(run) / "config.yaml").read_text(encoding="utf-8")) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f4f4f4;text-align:left}img{max-width:100%}.protocol{color:#444}pre{background:#f8f8f8;"
             "padding:1em;font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
