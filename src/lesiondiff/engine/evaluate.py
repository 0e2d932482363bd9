"""The Evaluator: predictions + manifest split -> metrics.csv, summary.json and a printed table.

Every figure is per image at the original image size, thresholded at the prediction's stated threshold
(``prob >= threshold``), then averaged over images as mean +- population std. Three views are reported:
- ``fused``: the fused mask of each image (what ``lesiondiff predict`` writes as ``<id>_mask.png``);
- ``single_sample``: every one of the S samples scored on its own, mean +- std over all N x S (image, sample)
  pairs; the expected quality of one draw (PalScDiff, Table 4, "single round");
- ``pooled``: Dice and IoU of the fused masks from summed pixel counts over the split, labelled as pooled.
Per class where the manifest has labels. Uncertainty: the standard GED (d = 1 - IoU) between the S samples
and the one ground truth, per image then averaged.

Calibration (``summary["calibration"]``; Guo et al. 2017, as "Analysing Diffusion Segmentation" reports it):
the probability scored is the per-pixel mean of the S samples (the ``coherence`` array of each ``_probs.npz``),
not the output of the fuser (the two agree for mean fusion, not for majority or STAPLE), resized bilinearly
to the original image size like the fused mask; 10 equal-width bins, right-closed
(``uncertainty.reliability_bins``). Two figures, never mixed up: ``ece_per_image`` (the ECE of each image, then mean +- population std over images;
also kept as ``summary["uncertainty"]["ece"]``) and ``ece_pooled`` (one ECE over every pixel of the split,
from the bins summed over images, so large images weigh more). The pooled bins are written to the summary
and drawn as ``reliability.png`` beside it.
"""

from __future__ import annotations

import csv
import io as _io
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.dataset import mask_paths
from ..data.io import read_mask, read_masks
from ..data.manifest import Manifest
from ..data.transforms import resize_prob
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..metrics import METRIC_NAMES, binary_metrics, pooled_metrics, summarize
from ..report import reliability_figure, reliability_title
from ..uncertainty import ece_from_bins, ged, merge_bins, reliability_bins, reliability_table

N_BINS = 10
PROBABILITY = "mean of the S samples"


def read_predictions(pred_dir: Path) -> tuple[dict[str, dict], dict]:
    table = pred_dir / "predictions.csv"
    if not table.is_file():
        raise LesiondiffError(f"{table}: not found; run lesiondiff predict --out {pred_dir} first")
    with table.open() as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    meta_path = pred_dir / "predict.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return rows, meta


def evaluate(pred_dir: str | Path, manifest: str | Path, split: str = "test", out: str | Path | None = None,
             threshold: float | None = None) -> dict:
    """Score the predictions in ``pred_dir`` against ``split`` of ``manifest`` (module docstring); writes
    ``metrics.csv``, ``summary.json`` and ``reliability.png`` to ``out`` (default: ``pred_dir``) and returns the
    summary."""
    pred_dir = Path(pred_dir)
    out = Path(out) if out else pred_dir
    preds, meta = read_predictions(pred_dir)
    rows = Manifest.read(manifest).rows(split=split)
    if not rows:
        raise LesiondiffError(f"{manifest}: no rows in split {split!r}")
    missing = [r["id"] for r in rows if r["id"] not in preds]
    if missing:
        raise LesiondiffError(f"{pred_dir}: no prediction for {len(missing)} of {len(rows)} {split} images "
                              f"(first: {missing[0]}); predict with --manifest {manifest} --split {split}")
    thr = float(meta.get("threshold", 0.5)) if threshold is None else threshold
    per_image, per_sample, uncertainty = [], [], []
    fused_masks, gts, bins, n_samples = [], [], [], set()
    for row in tqdm(rows, desc=f"evaluate {split}", unit="img"):
        p = preds[row["id"]]
        fused = read_mask(pred_dir / p["mask"])
        paths = mask_paths(row)
        gt = read_masks(paths, shape=fused.shape) if paths else np.zeros(fused.shape, bool)
        with np.load(pred_dir / p["probs"]) as npz:
            samples = resize_prob(npz["samples"].astype(np.float32), gt.shape)
            coh = resize_prob(npz["coherence"], gt.shape)  # the mean of the S samples
            if threshold is not None:  # re-threshold the fused probability instead of reading the written mask
                fused = resize_prob(npz["fused"], gt.shape) >= thr
        label = row.get("label", "")
        per_image.append({"id": row["id"], "label": label, "which": "fused", **binary_metrics(fused, gt)})
        for k, s in enumerate(samples):
            per_sample.append({"id": row["id"], "label": label, "which": f"sample_{k}",
                               **binary_metrics(s >= thr, gt)})
        bins.append(reliability_bins(coh, gt, n_bins=N_BINS))
        n_samples.add(int(samples.shape[0]))
        uncertainty.append({"ged": ged(samples >= thr, gt[None]), "ece": ece_from_bins(bins[-1])})
        fused_masks.append(fused)
        gts.append(gt)

    labels = sorted({r["label"] for r in per_image if r["label"]})
    summary = {
        "protocol": (f"split {split} of {manifest}: {len(rows)} images; threshold {thr} (prob >= threshold); "
                     "metrics per image at the original image size, then mean +- population std over images; "
                     "hd95 in pixels, images where exactly one mask is empty left out (n_nan)"),
        "split": split, "n_images": len(rows), "threshold": thr, "manifest": str(manifest),
        "predictions": str(pred_dir), "prediction_settings": meta,
        "fused": {"all": summarize(per_image), **{lb: summarize([r for r in per_image if r["label"] == lb])
                                                  for lb in labels}},
        "single_sample": {"all": summarize(per_sample),
                          **{lb: summarize([r for r in per_sample if r["label"] == lb]) for lb in labels}},
        "pooled": {"fused": pooled_metrics(fused_masks, gts)},
        "uncertainty": {k: summarize(uncertainty, [k])[k] for k in ("ged", "ece")},
        "calibration": calibration_summary(bins, [u["ece"] for u in uncertainty], n_samples),
    }
    out.mkdir(parents=True, exist_ok=True)
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "label", "which", *METRIC_NAMES])
    writer.writeheader()
    writer.writerows(per_image + per_sample)
    atomic_write_text(out / "metrics.csv", buffer.getvalue())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    reliability_figure(summary["calibration"], out / "reliability.png", title=reliability_title(summary))
    return summary


def calibration_summary(bins: list[dict], ece_per_image: list[float], n_samples: set[int]) -> dict:
    """The ``calibration`` section of a summary from each image's ``reliability_bins`` and per-image ECE."""
    pooled = merge_bins(bins)
    values = np.asarray(ece_per_image, dtype=np.float64)
    return {
        "ece_per_image": {"mean": float(values.mean()), "std": float(values.std(ddof=0)), "n": int(values.size)},
        "ece_pooled": ece_from_bins(pooled),
        "n_bins": len(pooled["count"]),
        "probability": PROBABILITY,
        "n_samples": sorted(n_samples)[0] if len(n_samples) == 1 else sorted(n_samples),
        "n_pixels": int(pooled["count"].sum()),
        "protocol": ("binary ECE (Guo et al. 2017) of the per-pixel mean of the S samples at the original image "
                     f"size; {len(pooled['count'])} equal-width bins (lo, hi]; ece_per_image: per image, then mean "
                     "+- population std over images; ece_pooled: all pixels of the split in one set of bins"),
        "bins": reliability_table(pooled),
    }


def calibration_line(summary: dict) -> str:
    """One line with both ECE figures and how they were computed (old summaries: the per-image figure only)."""
    c = summary.get("calibration")
    if c is None:
        u = summary["uncertainty"]["ece"]
        return f"calibration: ECE per image {u['mean']:.4f} ± {u['std']:.4f} (10 bins, coherence map)"
    e = c["ece_per_image"]
    return (f"calibration: ECE per image {e['mean']:.4f} ± {e['std']:.4f} over {e['n']} images (mean ± population "
            f"std), pooled {c['ece_pooled']:.4f} over all {c['n_pixels']} pixels ({c['n_bins']} bins, mean of "
            f"{c['n_samples']} samples)")


def format_table(summary: dict, keys: tuple[str, ...] = METRIC_NAMES) -> str:
    """The summary as a fixed-width text table, with its protocol line first."""
    lines = [summary["protocol"]]
    settings = summary.get("prediction_settings") or {}
    if settings:
        lines.append("predictions: " + ", ".join(f"{k} {v}" for k, v in settings.items() if k != "checkpoint"))
    header = f"{'view':<26}" + "".join(f"{k:>16}" for k in keys) + f"{'n':>6}"
    lines += [header, "-" * len(header)]
    for view in ("fused", "single_sample"):
        for group, stats in summary[view].items():
            cells = "".join(f"{stats[k]['mean']:>9.3f} ±{stats[k]['std']:>5.3f}" for k in keys)
            n = stats[keys[0]]["n"] + stats[keys[0]]["n_nan"]
            lines.append(f"{view + ' / ' + group:<26}{cells}{n:>6}")
    pooled = summary["pooled"]["fused"]
    lines.append(f"pooled over the split (fused): dice {pooled['pooled_dice']:.3f}, iou {pooled['pooled_iou']:.3f}")
    u = summary["uncertainty"]
    lines.append(f"uncertainty per image: GED {u['ged']['mean']:.3f} ±{u['ged']['std']:.3f} (d = 1 - IoU, "
                 "the S samples against the ground truth)")
    lines.append(calibration_line(summary))
    return "\n".join(lines)
