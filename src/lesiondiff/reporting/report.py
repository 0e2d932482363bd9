"""A self-contained HTML report (report.html + figures/*.png) of a run, its predictions and their evaluation."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from ..data.manifest import Manifest
from ..io_utils import OwnedFolder, atomic_write_text
from ..metrics import METRIC_NAMES
from ..render.figures import reliability_figure, reliability_title
from ..render.selective_figures import pixel_roc_figure, risk_coverage_figure
from ..render.tables import (
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
    trust_lines,
)
from ..uncertainty import SCORES
from .run_figures import examples_figure, rounds_figure, training_figure


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


def _trust_html(summary: dict, figs: Path) -> str:
    """Which masks to trust: failure detection (the risk-coverage figure), the accept / review marks of a
    calibrated run, and the pixel view of the uncertainty map (summaries that have them)."""
    lines = trust_lines(summary)
    if not lines:
        return ""
    text = ("<h3>Which masks to trust</h3><p>Each image's score ranks it; the curve shows the mean Dice of the "
            "images accepted, most trusted first, against the share accepted.</p><p>"
            + "<br>".join(html.escape(line) for line in lines) + "</p>")
    if risk_coverage_figure(summary, figs / "risk_coverage.png"):
        text += '<img src="figures/risk_coverage.png" alt="risk-coverage curve">'
    if pixel_roc_figure(summary, figs / "pixel_roc.png"):
        text += '<img src="figures/pixel_roc.png" alt="pixel ROC of the uncertainty map" style="max-width:420px">'
    return text


def _review_html(pred_dir: Path) -> str:
    """The images a calibrated run sent to review, with their scores (predictions that carry the marks)."""
    table = pred_dir / "predictions.csv"
    if not table.is_file():
        return ""
    with table.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "review" not in rows[0]:
        return ""
    review = [r for r in rows if r["review"] == "review"]
    scores = [k for k in SCORES if k in rows[0]]
    body = "".join("<tr><td>" + html.escape(r["id"]) + "</td>" + "".join(f"<td>{html.escape(r[k])}</td>"
                                                                          for k in scores) + "</tr>"
                   for r in review[:50])
    more = f"<p>... and {len(review) - 50} more (predictions.csv lists them all).</p>" if len(review) > 50 else ""
    return (f"<h2>Sent to review</h2><p>{len(review)} of {len(rows)} images are marked review by the run's "
            f"calibrated threshold (predictions.csv, column review); the others are accepted.</p>"
            f"<table><tr><th>image</th>{''.join(f'<th>{k}</th>' for k in scores)}</tr>{body}</table>{more}")


def write_report(out: str | Path, run: str | Path | None = None, pred_dir: str | Path | None = None,
                 summary: dict | None = None, manifest: str | Path | None = None, split: str = "test",
                 title: str = "lesiondiff report") -> Path:
    """Write ``out/report.html`` and its ``figures/``; a file of those names that lesiondiff did not write is
    never replaced (``io_utils.OwnedFolder``: refused in one line before anything is written)."""
    out = Path(out)
    with OwnedFolder(out).writing(REPORT_FILES) as paths:
        page = _page(paths, run, pred_dir, summary, manifest, split, title)
        atomic_write_text(paths["report.html"], page)
    return paths["report.html"]


REPORT_FILES = ("report.html", *(f"figures/{name}.png" for name in ("training", "reliability", "examples", "rounds",
                                                                     "risk_coverage", "pixel_roc")))


def _page(paths: dict[str, Path], run, pred_dir, summary, manifest, split, title) -> str:
    figs = paths["figures/training.png"].parent
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
        parts.append(_trust_html(summary, figs))
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
    if pred_dir is not None:
        parts.append(_review_html(Path(pred_dir)))
    if run is not None and (Path(run) / "config.yaml").is_file():
        parts.append("<h2>Configuration</h2><pre>" + html.escape((Path(run) / "config.yaml").read_text(encoding="utf-8")) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f4f4f4;text-align:left}img{max-width:100%}.protocol{color:#444}pre{background:#f8f8f8;"
             "padding:1em;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
