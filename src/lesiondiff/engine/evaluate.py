"""The Evaluator: predictions + manifest split -> metrics.csv, summary.json and a printed table.

Every figure is per image at the original image size, thresholded at the prediction's stated threshold
(``prob >= threshold``), then averaged over images as mean +- population std. Three views are reported:
- ``fused``: the fused mask of each image (what ``lesiondiff predict`` writes as ``<id>_mask.png``);
- ``single_sample``: every one of the S samples scored on its own, mean +- std over all N x S (image, sample)
  pairs; the expected quality of one draw (PalScDiff, Table 4, "single round");
- ``mean_of_samples``: the mean of the S stored samples (``<id>_probs.npz`` "samples"), binarised at the
  threshold, whatever the run's fusion was (DiffSeg, Table 1: "the mean of the ten outputs", beside the raw
  masks, i.e. ``single_sample``, and the DenseCRF result, i.e. ``fused`` of a ``crf_rounds`` or ``densecrf``
  run); the same statistics as ``fused``;
- ``pooled``: Dice and IoU of the fused masks from summed pixel counts over the split, labelled as pooled.
Per class where the manifest has labels. Uncertainty, of the binarised samples, per image then mean +-
population std: ``ged``, the standard GED (d = 1 - IoU) between the S samples and the one ground truth;
``ged_diffseg``, DiffSeg's "GED" (Shuai et al., arXiv preprint 2024, Eqs. 5-7), the mean pairwise RMS
difference among the S samples alone (a diversity, no ground truth; ``uncertainty.ged_diffseg``).

Several datasets (a unified manifest, ``lesiondiff data index A B C``; UniSegDiff): where the evaluated rows
name their ``dataset``, ``summary["datasets"]`` holds, per dataset name, ``{"n_images": N, "fused":
summarize(its fused rows), "samples": summarize(its single-sample rows)}``, the same statistics as the
``fused`` and ``single_sample`` views' ``"all"`` restricted to that dataset's images; ``metrics.csv`` has a
``dataset`` column, and ``render.tables.format_table`` prints one row per dataset ("dataset busi") after "all" when there
are two or more. ``split`` is a split name or ``fold:K`` (the rows of fold K: the validation rows of fold K
in cross-validation), :meth:`~lesiondiff.data.manifest.Manifest.select`.

Sampling rounds (PalScDiff, Table 4: five rounds of sampling, each scored alone, and their majority-vote
ensemble): round k is the k-th of the S samples of every image. For most samplers the S samples of one image
are drawn in one batch from independent noise, so each round is an independent draw of the whole split, and
the spread of the round means is the run-to-run variation a user would see from sampling once. The sampler
says what its samples are (``predict.json``'s ``samples_are``, quoted in the tables): ``class_difference``'s
round k is the mask at its k-th timestep, so there the rounds differ systematically, not only by chance.
- ``rounds``: one entry per round, ``{"round": k, "all": summarize(...), <label>: ...}``, the per-image metrics
  of sample k-1 alone (``which == "sample_<k-1>"`` in ``metrics.csv``) summarised like ``fused``. Where images
  have different S, only the rounds every image has are kept, so each round covers the whole split.
- ``rounds_spread``: per metric, ``min`` and ``max`` of the round means, ``range = max - min`` and
  ``best_round`` (1-based; the highest mean, the lowest for hd95, where lower is better).
- ``ensemble_minus_best_round``: per metric, the ``fused`` mean minus the best round's mean. Positive means the
  ensemble beats every single round, except for hd95, where negative does (it is not sign-flipped, so every
  entry stays "fused minus round").
The ensemble is whatever fusion the predictions used (``prediction_settings["fusion"]``: majority vote for the
palscdiff preset, mean, STAPLE, optionally with DenseCRF); ``render.tables.rounds_table`` and ``format_rounds_markdown``
name it, and ``evaluate`` writes the Markdown table as ``rounds.md``.

Lesion images and the image-level decision (lesion present = any foreground in the fused mask):
- ``lesion_images``: the fused view's statistics over the images whose ground truth is non-empty only (Dice and
  IoU on lesion images, the figure a lesion-free image cannot inflate or deflate);
- ``image_level``: ``detection_sensitivity`` (lesion images with a non-empty prediction / lesion images),
  ``specificity`` (lesion-free images predicted empty / lesion-free images), the counts behind both, and, where
  the manifest labels images ``normal``, ``normal_predicted_empty`` (their share predicted empty);
- ``postprocess``: the lesion / no-lesion rule the predictions were made with (``prediction_settings``).

Calibration (``summary["calibration"]``; Guo et al. 2017, as "Analysing Diffusion Segmentation" reports it):
the probability scored is the per-pixel mean of the S samples stored in each ``_probs.npz`` (computed from
``samples``, not read from its ``coherence`` map, which ``sample.maps=masks`` binarises), not the output of the
fuser (the two agree for mean fusion, not for majority or STAPLE), resized bilinearly to the original image
size like the fused mask; 10 equal-width bins, right-closed
(``uncertainty.reliability_bins``). Two figures, never mixed up: ``ece_per_image`` (the ECE of each image, then mean +- population std over images;
also kept as ``summary["uncertainty"]["ece"]``) and ``ece_pooled`` (one ECE over every pixel of the split,
from the bins summed over images, so large images weigh more). The pooled bins are written to the summary
and drawn as ``reliability.png`` beside it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..data.dataset import mask_paths
from ..data.io import read_mask, read_masks, read_npz
from ..data.manifest import Manifest
from ..data.transforms import resize_prob
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..metrics import LOWER_IS_BETTER, METRIC_NAMES, binary_metrics, summarize
from ..render.figures import reliability_figure, reliability_title
from ..render.selective_figures import pixel_roc_figure, risk_coverage_figure
from ..render.tables import format_outputs_markdown, format_rounds_markdown
from ..selective import (
    AUROC_BINS,
    UEO_THRESHOLDS,
    auroc_counts,
    failure_detection,
    roc_from_counts,
    ueo_curve,
)
from ..uncertainty import (
    SCORES,
    ece_from_bins,
    entropy,
    ged,
    ged_diffseg,
    merge_bins,
    reliability_bins,
    reliability_table,
)
from .outputs import owned_folder, read_predictions
from .scoring import metrics_csv, score

EVALUATION_FILES = ("metrics.csv", "summary.json", "rounds.md", "reliability.png", "risk_coverage.png",
                    "pixel_roc.png")
N_BINS = 10
PROBABILITY = "mean of the S samples"
class SampleViews:
    """The views evaluate adds on top of the fused row (module docstring): every sample alone, the mean of the
    samples, the uncertainty of the binarised samples, the calibration bins and the pixel view."""

    def __init__(self, threshold: float) -> None:
        self.thr = threshold
        self.per_sample, self.per_mean, self.uncertainty, self.bins = [], [], [], []
        self.n_samples: set[int] = set()
        self.pixels = PixelUncertainty()

    def add(self, tags: dict, fused: np.ndarray, gt: np.ndarray, samples: np.ndarray) -> None:
        thr = self.thr
        coh = samples.mean(axis=0)  # the mean of the S samples (not npz "coherence", which sample.maps may binarise)
        self.per_mean.append({**tags, "which": "mean_of_samples", **binary_metrics(coh >= thr, gt)})
        for k, s in enumerate(samples):
            self.per_sample.append({**tags, "which": f"sample_{k}", **binary_metrics(s >= thr, gt)})
        self.bins.append(reliability_bins(coh, gt, n_bins=N_BINS))
        self.n_samples.add(int(samples.shape[0]))
        self.uncertainty.append({"ged": ged(samples >= thr, gt[None]), "ged_diffseg": ged_diffseg(samples >= thr),
                                 "ece": ece_from_bins(self.bins[-1])})
        self.pixels.add(entropy(coh[None]), fused ^ gt)


def evaluate(pred_dir: str | Path, manifest: str | Path, split: str = "test", out: str | Path | None = None,
             threshold: float | None = None) -> dict:
    """Score the predictions in ``pred_dir`` against ``split`` of ``manifest`` (module docstring) with the one
    scorer (``engine/scoring.py``) and this module's sample views; writes ``metrics.csv``, ``summary.json``,
    ``rounds.md`` and the figures to ``out`` (default: ``pred_dir``) and returns the summary."""
    pred_dir = Path(pred_dir)
    out = Path(out) if out else pred_dir
    preds, meta = read_predictions(pred_dir)
    rows = Manifest.read(manifest).select(split)
    if not rows:
        raise LesiondiffError(f"{manifest}: no rows in split {split!r}")
    missing = [r["id"] for r in rows if r["id"] not in preds]
    if missing:
        raise LesiondiffError(f"{pred_dir}: no prediction for {len(missing)} of {len(rows)} {split} images "
                              f"(first: {missing[0]}); predict with --manifest {manifest} --split {split}")
    thr = float(meta.get("threshold", 0.5)) if threshold is None else threshold

    def read(row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = preds[row["id"]]
        fused = read_mask(pred_dir / p["mask"])
        paths = mask_paths(row)
        gt = read_masks(paths, shape=fused.shape) if paths else np.zeros(fused.shape, bool)
        npz = read_npz(pred_dir / p["probs"], ("samples",) if threshold is None else ("samples", "fused"))
        samples = resize_prob(npz["samples"].astype(np.float32), gt.shape)
        if threshold is not None:  # re-threshold the fused probability instead of reading the written mask
            fused = resize_prob(npz["fused"], gt.shape) >= thr
        return fused, gt, samples

    views = SampleViews(thr)
    scorer = score(rows, read, f"evaluate {split}", [views])
    per_image, per_sample, per_mean = scorer.rows, views.per_sample, views.per_mean
    labels = scorer.labels()
    rounds = rounds_summary(per_sample, min(views.n_samples), labels)
    common = scorer.summary(split, manifest, f"threshold {thr} (prob >= threshold)")
    spread, gain = rounds_spread(rounds, common["fused"]["all"])
    scored = [preds[r["id"]] for r in rows]
    summary = {
        **common, "threshold": thr, "predictions": str(pred_dir), "prediction_settings": meta,
        "mean_of_samples": {"all": summarize(per_mean), **{lb: summarize([r for r in per_mean if r["label"] == lb])
                                                           for lb in labels}},
        "single_sample": {"all": summarize(per_sample),
                          **{lb: summarize([r for r in per_sample if r["label"] == lb]) for lb in labels}},
        "rounds": rounds,
        "rounds_spread": spread,
        "ensemble_minus_best_round": gain,
        "postprocess": (meta.get("postprocess") or {}).get("description", "none recorded"),
        "uncertainty": {k: summarize(views.uncertainty, [k])[k] for k in ("ged", "ged_diffseg", "ece")},
        "calibration": calibration_summary(views.bins, [u["ece"] for u in views.uncertainty], views.n_samples),
        "failure_detection": failure_summary(scorer.dice(), scored),
        "pixel_uncertainty": views.pixels.summary(),
        "selective": selective_view(per_image, scored, meta),
    }
    datasets = sorted({r["dataset"] for r in per_image if r["dataset"]})
    if datasets:
        summary["datasets"] = {name: dataset_summary(per_image, per_sample, name) for name in datasets}
    outputs = format_outputs_markdown(summary)
    with owned_folder(out).writing(EVALUATION_FILES) as paths:
        atomic_write_text(paths["metrics.csv"], metrics_csv(per_image + per_sample))
        atomic_write_text(paths["summary.json"], json.dumps(summary, indent=2))
        atomic_write_text(paths["rounds.md"],
                          format_rounds_markdown(summary) + "\n" + (f"\n{outputs}\n" if outputs else ""))
        reliability_figure(summary["calibration"], paths["reliability.png"], title=reliability_title(summary))
        risk_coverage_figure(summary, paths["risk_coverage.png"])
        pixel_roc_figure(summary, paths["pixel_roc.png"])
    return summary


class PixelUncertainty:
    """The pixel-level view of an uncertainty map against the error map (fused mask XOR ground truth), summed
    over images (``selective.py``): UEO at each threshold of ``UEO_THRESHOLDS`` per image, and the pooled
    histograms behind the pixel AUROC."""

    def __init__(self) -> None:
        self.ueo: list[np.ndarray] = []
        self.counts = np.zeros((2, AUROC_BINS), dtype=np.int64)

    def add(self, uncertainty: np.ndarray, error: np.ndarray) -> None:
        self.ueo.append(ueo_curve(uncertainty, error))
        self.counts += auroc_counts(uncertainty, error)

    def summary(self) -> dict:
        curve = np.mean(self.ueo, axis=0)
        best = int(np.argmax(curve))
        roc = roc_from_counts(self.counts)
        step = max(1, len(roc["fpr"]) // 200)  # a 200-point curve is enough for the figure
        return {"map": "entropy (bits) of the mean of the S samples at the original image size",
                "error": "fused mask XOR ground truth",
                "ueo": float(curve[best]), "ueo_tau": UEO_THRESHOLDS[best],
                "ueo_curve": dict(zip(map(str, UEO_THRESHOLDS), curve.round(6).tolist())),
                "auroc": roc["auroc"], "roc": {"fpr": roc["fpr"][::step] + [1.0], "tpr": roc["tpr"][::step] + [1.0]},
                "protocol": ("UEO: Dice of (uncertainty >= tau) and the error map per image (both empty: 1), "
                             "averaged over images, at the tau of 0.05..0.95 with the highest mean; AUROC: pooled over "
                             f"every pixel of the split, {AUROC_BINS} equal-width bins of the uncertainty")}


def failure_summary(dice: list[float], rows: list[dict]) -> dict:
    """Image-level failure detection (risk = 1 - fused Dice per image) of every score predictions.csv holds
    for every image, with each score's risk-coverage curve and the optimal and random references."""
    names = [name for name in SCORES if rows and all(r.get(name) not in (None, "") for r in rows)]
    fd = failure_detection(dice, {n: [float(r[n]) for r in rows] for n in names})
    return {"risk": "1 - Dice of the fused mask, per image at the original size", "n": len(dice),
            "scores": {n: {"aurc": fd[n]["aurc"], "eaurc": fd[n]["eaurc"], "means": SCORES[n]} for n in names},
            "optimal_aurc": fd["optimal"]["aurc"], "random_aurc": fd["random"]["aurc"],
            "curves": {n: {"coverage": fd[n]["coverage"], "mean_dice": [1 - r for r in fd[n]["selective_risk"]]}
                       for n in [*names, "optimal"]},
            "protocol": ("AURC: the mean over coverages k/n of the mean risk of the k images the score trusts most "
                         "(ties share their mean); e-AURC: AURC minus that of the optimal order; random order: "
                         "the mean risk")}


def selective_view(per_image: list[dict], rows: list[dict], meta: dict) -> dict | None:
    """Coverage and realised Dice of the images predict marked ``accept`` (a calibrated run), else None."""
    if not rows or any(r.get("review") not in ("accept", "review") for r in rows):
        return None
    accepted = [m["dice"] for m, r in zip(per_image, rows) if r["review"] == "accept"]
    record = meta.get("selective") or {}
    return {"accepted": len(accepted), "images": len(rows), "coverage": len(accepted) / len(rows),
            "accepted_mean_dice": float(np.mean(accepted)) if accepted else None,
            "target_dice": record.get("target_dice"), "delta": record.get("delta"), "score": record.get("score"),
            "met": (float(np.mean(accepted)) >= record["target_dice"]) if accepted and "target_dice" in record
            else None}


def fused_metrics(folder: str | Path) -> list[dict]:
    """The fused mask's rows of an evaluation's ``metrics.csv`` in ``folder`` (one per image; values as text)."""
    with (Path(folder) / "metrics.csv").open(encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["which"] == "fused"]


def dataset_summary(per_image: list[dict], per_sample: list[dict], name: str) -> dict:
    """``summary["datasets"][name]``: the fused and single-sample statistics of dataset ``name``'s rows."""
    fused = [r for r in per_image if r["dataset"] == name]
    return {"n_images": len(fused), "fused": summarize(fused),
            "samples": summarize([r for r in per_sample if r["dataset"] == name])}


def rounds_summary(per_sample: list[dict], n_rounds: int, labels: list[str]) -> list[dict]:
    """``summary["rounds"]``: round k (1-based) summarises the ``per_sample`` rows of sample k-1, over the
    split (``"all"``) and per label."""
    out = []
    for k in range(n_rounds):
        rows = [r for r in per_sample if r["which"] == f"sample_{k}"]
        out.append({"round": k + 1, "all": summarize(rows),
                    **{lb: summarize([r for r in rows if r["label"] == lb]) for lb in labels}})
    return out


def rounds_spread(rounds: list[dict], fused: dict) -> tuple[dict, dict]:
    """``(rounds_spread, ensemble_minus_best_round)`` from ``summary["rounds"]`` and the fused ``"all"``
    summary (module docstring). Rounds whose mean is ``nan`` (every hd95 undefined) are left out; a metric
    with no finite round mean gets ``nan`` and ``best_round`` None."""
    spread, gain = {}, {}
    for key in METRIC_NAMES:
        means = np.array([r["all"][key]["mean"] for r in rounds], dtype=np.float64)
        if np.isnan(means).all():
            nan = float("nan")
            spread[key] = {"min": nan, "max": nan, "range": nan, "best_round": None}
            gain[key] = nan
            continue
        best = int(np.nanargmin(means) if key in LOWER_IS_BETTER else np.nanargmax(means))
        lo, hi = float(np.nanmin(means)), float(np.nanmax(means))
        spread[key] = {"min": lo, "max": hi, "range": hi - lo, "best_round": best + 1}
        gain[key] = float(fused[key]["mean"] - means[best])
    return spread, gain


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

