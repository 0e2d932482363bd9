"""The one scorer of every evaluation: one per-image loop, the summary every evaluation shares, its protocol line
and its CSV writer (as nnU-Net keeps one ``compute_metrics_on_folder`` and thin wrappers around it).

``score`` walks the split's manifest rows; a ``read(row)`` function gives each image's predicted mask, its
ground truth (bool [H,W], at the image's original size) and anything else its evaluation needs; the mask is
scored by ``metrics.MetricAggregator`` (the stateful counterpart of ``metrics.binary_metrics``, grouped by the
row's label, with the pooled counts), and each *view* sees the image too. ``engine/evaluate.py`` (lesiondiff's
predictions) adds its sample, round, calibration and uncertainty views; ``engine/evaluate_masks.py`` (any
tool's masks) adds none. The rows, the shared summary and metrics.csv are therefore the same for the same
masks on either path.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..metrics import METRIC_NAMES, MetricAggregator, summarize

PROTOCOL_TAIL = ("metrics per image at the original image size, then mean +- population std over images; hd95 in "
                 "pixels, images where exactly one mask is empty left out (n_nan)")


class View(Protocol):
    """Something an evaluation adds per image on top of the fused mask's row."""

    def add(self, tags: dict, pred: np.ndarray, gt: np.ndarray, extra: Any) -> None: ...


def tags_of(row: dict) -> dict:
    """The identifying columns of a manifest row in metrics.csv."""
    return {"id": row["id"], "label": row.get("label", ""), "dataset": row.get("dataset", "")}


def image_level(presence: list[tuple[bool, bool, str]]) -> dict:
    """Image-level figures from (ground truth non-empty, prediction non-empty, label) per image."""
    lesion = [pred for has, pred, _ in presence if has]
    empty = [not pred for has, pred, _ in presence if not has]
    normal = [not pred for _, pred, label in presence if label == "normal"]

    def ratio(k: int, n: int) -> float:
        return k / n if n else float("nan")

    return {"lesion_images": len(lesion), "detected": int(sum(lesion)),
            "detection_sensitivity": ratio(sum(lesion), len(lesion)),
            "empty_images": len(empty), "predicted_empty": int(sum(empty)), "specificity": ratio(sum(empty), len(empty)),
            **({"normal_images": len(normal), "normal_predicted_empty": ratio(sum(normal), len(normal))}
               if normal else {})}


class Scorer:
    """The fused mask's per-image rows, their groups and pooled counts, and the image-level presence."""

    def __init__(self) -> None:
        self.aggregator = MetricAggregator()
        self.rows: list[dict] = []
        self.presence: list[tuple[bool, bool, str]] = []  # (ground truth non-empty, prediction non-empty, label)

    def add(self, tags: dict, pred: np.ndarray, gt: np.ndarray, extra_columns: dict | None = None) -> dict:
        metrics = self.aggregator.add(pred, gt, group=tags["label"] or None)
        row = {**tags, "which": "fused", **(extra_columns or {}), **metrics}
        self.rows.append(row)
        self.presence.append((bool(gt.any()), bool(pred.any()), tags["label"]))
        return row

    def labels(self) -> list[str]:
        return sorted({r["label"] for r in self.rows if r["label"]})

    def dice(self) -> list[float]:
        return [r["dice"] for r in self.rows]

    def summary(self, split: str, manifest: Any, reading: str) -> dict:
        """What every evaluation's summary.json has: the protocol line, the split, the fused view over the split
        and per label, the pooled figures, the lesion images alone and the image-level decision."""
        by_group = self.aggregator.aggregate()
        return {
            "protocol": f"split {split} of {manifest}: {len(self.rows)} images; {reading}; {PROTOCOL_TAIL}",
            "split": split, "n_images": len(self.rows), "manifest": str(manifest),
            "fused": {"all": by_group["all"], **{lb: by_group[lb] for lb in self.labels()}},
            "pooled": {"fused": self.aggregator.pooled()["all"]},
            "lesion_images": summarize([r for r, (has, _, _) in zip(self.rows, self.presence) if has]),
            "image_level": image_level(self.presence),
        }


def score(rows: Sequence[dict], read: Callable[[dict], tuple[np.ndarray, np.ndarray, Any]], desc: str,
          views: Iterable[View] = (), columns: Callable[[dict], dict] | None = None) -> Scorer:
    """The per-image loop: ``read(row) -> (pred, gt, extra)``, the fused row scored, every view told; ``columns``
    gives extra metrics.csv columns of a row (e.g. the mask file of ``evaluate --masks``)."""
    scorer, views = Scorer(), list(views)
    # the bar is closed (its line ended) before an error about a file is printed, not run into by it
    with tqdm(rows, desc=desc, unit="img") as bar:
        for row in bar:
            pred, gt, extra = read(row)
            tags = tags_of(row)
            scorer.add(tags, pred, gt, columns(row) if columns else None)
            for view in views:
                view.add(tags, pred, gt, extra)
    return scorer


def metrics_csv(rows: Iterable[dict], extra_columns: Sequence[str] = ()) -> str:
    """metrics.csv: one row per image and view (``which``), the identifying columns, then every metric."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "label", "dataset", "which", *extra_columns, *METRIC_NAMES])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
