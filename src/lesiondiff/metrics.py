"""Per-image segmentation metrics for binary 2D masks, their summaries, and dataset-level (pooled) figures.

Inputs are ``[H,W]`` masks, ``bool`` or integer/float arrays holding only 0 and 1 (a probability map must be
thresholded first: foreground is ``prob >= threshold``, the project-wide rule). ``pred`` is the prediction and
``gt`` the ground truth. With TP, FP, FN, TN counted over pixels:

- ``dice = 2TP / (2TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``, ``accuracy = (TP + TN) / (H*W)``,
  ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``specificity = TN / (TN + FP)``.
- ``hd95``: the 95th percentile of the symmetric Hausdorff distance between the mask boundaries, in pixels, or
  in ``spacing`` units (``spacing`` = one number, or ``(row, column)`` spacing following the array axes).
  It is computed by MONAI's ``compute_hausdorff_distance(percentile=95)``: boundary = mask XOR its binary
  erosion (pixels outside the image count as background), the distances from each boundary pixel of one mask
  to the nearest boundary pixel of the other are taken in both directions, the 95th percentile (linear
  interpolation) of each direction is computed and the larger of the two is reported.

Conventions where a ratio is 0/0 (stated here because published numbers differ on them):

=================================  ======  ======  =========  ======  ===========  ======
case                               dice    iou     precision  recall  specificity  hd95
=================================  ======  ======  =========  ======  ===========  ======
gt empty, pred empty               1       1       1          1       1            0.0
gt empty, pred non-empty           0       0       0          1       formula      nan
gt non-empty, pred empty           0       0       0          0       formula      nan
=================================  ======  ======  =========  ======  ===========  ======

Precision with no predicted positives is 1 when the ground truth is empty too (nothing was missed and
nothing was wrongly claimed), else 0. Recall with an empty ground truth is 1 (nothing to find). Specificity
with no negatives in the ground truth (``gt`` all foreground) is 1.

``hd95`` is ``nan`` when exactly one mask is empty: a distance to nothing is undefined. ``summarize`` excludes
``nan`` values from the mean and std and reports how many it excluded as ``n_nan``, so the reader sees how
many images a mean HD95 leaves out.

Per-image metrics are averaged over images (``summarize``: mean and population std, ``ddof=0``). Dataset-level
figures from summed counts are a different average and are always labelled ``pooled_*`` (``pooled_metrics``),
so a pooled IoU is never set beside a per-image Dice as if the two were comparable.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import LesiondiffError

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "accuracy", "precision", "recall", "specificity", "hd95")
LOWER_IS_BETTER: tuple[str, ...] = ("hd95",)  # the metrics where a lower value is better

Spacing = float | Sequence[float] | None


def _as_mask(array: Any, name: str) -> np.ndarray:
    """``array`` as a bool ``[H,W]`` mask; raises if it is not 2D or holds values other than 0 and 1."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise LesiondiffError(f"{name} must be a 2D [H,W] mask, got shape {a.shape}")
    if a.dtype == bool:
        return a
    if not np.isin(a, (0, 1)).all():
        raise LesiondiffError(
            f"{name} must hold only 0 and 1 (threshold probabilities first: prob >= threshold)"
        )
    return a.astype(bool)


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise LesiondiffError(f"pred shape {p.shape} differs from gt shape {g.shape}")
    return p, g


def _confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) pixel counts of two bool masks of one shape."""
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return tp, fp, fn, pred.size - tp - fp - fn


def _dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU from counts; both are 1 when prediction and ground truth are empty (0/0)."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> float:
    """95th percentile symmetric boundary Hausdorff distance of two ``[H,W]`` masks (module docstring).

    Both empty: 0.0. Exactly one empty: ``nan``. Units: pixels, or those of ``spacing`` (a number, or
    ``(row, column)`` spacing).
    """
    p, g = _pair(pred, gt)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if p_any != g_any:
        return float("nan")
    # MONAI is heavy to import; only the HD95 path needs it.
    from monai.metrics import compute_hausdorff_distance

    sp = (
        None if spacing is None else (float(spacing) if np.isscalar(spacing) else [float(s) for s in spacing])
    )
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about a deprecated argument of its own internal get_mask_edges call, per image.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        # MONAI wraps the arrays with torch.as_tensor, which warns on a read-only array (e.g. np.asarray of a
        # Pillow image): copy those, so the warning has no cause (writable arrays are not copied).
        value = compute_hausdorff_distance(
            np.require(p[None, None], requirements="W"), np.require(g[None, None], requirements="W"),
            include_background=True, percentile=95, spacing=sp,
        )
    return float(value.reshape(-1)[0])


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> dict[str, float]:
    """All of ``METRIC_NAMES`` for one prediction ``[H,W]`` against its ground truth ``[H,W]``.

    Masks are bool (or 0/1) arrays of one shape. Values are in [0, 1] except ``hd95`` (>= 0 or ``nan``).
    The empty-mask conventions are the table in the module docstring.
    """
    p, g = _pair(pred, gt)
    tp, fp, fn, tn = _confusion(p, g)
    dice, iou = _dice_iou(tp, fp, fn)
    gt_empty = tp + fn == 0
    if tp + fp == 0:
        precision = 1.0 if gt_empty else 0.0
    else:
        precision = tp / (tp + fp)
    return {
        "dice": dice,
        "iou": iou,
        "accuracy": (tp + tn) / p.size,
        "precision": precision,
        "recall": 1.0 if gt_empty else tp / (tp + fn),
        "specificity": 1.0 if tn + fp == 0 else tn / (tn + fp),
        "hd95": hd95(p, g, spacing),
    }


def summarize(
    rows: Sequence[dict[str, float]], keys: Sequence[str] = METRIC_NAMES
) -> dict[str, dict[str, float | int]]:
    """Per-metric ``{"mean", "std", "n", "n_nan"}`` over per-image rows (e.g. ``binary_metrics`` outputs).

    ``nan`` values are left out: ``n`` counts the values used, ``n_nan`` those left out. ``std`` is the
    population standard deviation (``ddof=0``) of the values used. With no value left, mean and std are
    ``nan``.
    Every row must have every key.
    """
    out: dict[str, dict[str, float | int]] = {}
    for key in keys:
        try:
            values = np.array([float(row[key]) for row in rows], dtype=np.float64)
        except KeyError:
            raise LesiondiffError(
                f"metric {key!r} is missing from a row; rows have {sorted(rows[0])}"
            ) from None
        finite = values[~np.isnan(values)]
        n = int(finite.size)
        out[key] = {
            "mean": float(finite.mean()) if n else float("nan"),
            "std": float(finite.std(ddof=0)) if n else float("nan"),
            "n": n,
            "n_nan": int(values.size - n),
        }
    return out


def _pooled_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    dice, iou = _dice_iou(tp, fp, fn)
    return {"pooled_dice": dice, "pooled_iou": iou, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def pooled_metrics(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]) -> dict[str, float | int]:
    """Dataset-level Dice and IoU from TP/FP/FN summed over all images (not a mean of per-image scores).

    ``preds`` and ``gts`` are equally long iterables of ``[H,W]`` masks (or ``[N,H,W]`` arrays); image sizes
    may differ between pairs. Returns ``pooled_dice``, ``pooled_iou`` (1.0 when every mask is empty) and the
    summed counts ``tp``, ``fp``, ``fn``, ``tn``.
    """
    totals = np.zeros(4, dtype=np.int64)
    n = 0
    try:
        for pred, gt in zip(preds, gts, strict=True):
            totals += _confusion(*_pair(pred, gt))
            n += 1
    except ValueError:
        raise LesiondiffError(
            "pooled_metrics got different numbers of predictions and ground truths"
        ) from None
    if n == 0:
        raise LesiondiffError("pooled_metrics needs at least one prediction/ground-truth pair")
    tp, fp, fn, tn = (int(v) for v in totals)
    return _pooled_from_counts(tp, fp, fn, tn)



def image_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of one image: its pooled Dice, with the same empty-mask rule as the per-image metrics (both empty:
    1), without computing HD95."""
    return float(pooled_metrics([pred], [gt])["pooled_dice"])

class MetricAggregator:
    """Stateful counterpart of ``binary_metrics`` (MONAI's function/aggregator pairing).

    >>> agg = MetricAggregator()
    >>> row = agg.add(pred, gt, group="malignant")   # per-image metrics, also returned
    >>> agg.aggregate()["all"]["dice"]["mean"]        # {"all": summary, "malignant": summary, ...}
    >>> agg.reset()

    ``group`` (e.g. a class label: benign, malignant, normal) is optional; images without one count only in
    ``"all"``, which is reserved and cannot be a group name.
    """

    ALL = "all"

    def __init__(self, spacing: Spacing = None) -> None:
        self.spacing = spacing
        self.reset()

    def reset(self) -> None:
        """Forget every image added so far."""
        self._rows: list[dict[str, Any]] = []
        self._counts: dict[str, np.ndarray] = {}

    def add(self, pred: np.ndarray, gt: np.ndarray, group: str | None = None) -> dict[str, float]:
        """Score one ``[H,W]`` prediction against its ground truth; returns its ``binary_metrics`` row."""
        if group == self.ALL:
            raise LesiondiffError(f"group name {self.ALL!r} is reserved for the whole data set")
        p, g = _pair(pred, gt)
        row = binary_metrics(p, g, self.spacing)
        self._rows.append({**row, "group": group})
        counts = np.array(_confusion(p, g), dtype=np.int64)
        for name in (self.ALL, group) if group is not None else (self.ALL,):
            self._counts[name] = self._counts.get(name, np.zeros(4, dtype=np.int64)) + counts
        return row

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Per-image rows in the order added: the metrics plus ``"group"`` (``None`` when none was given)."""
        return [dict(r) for r in self._rows]

    def groups(self) -> list[str]:
        """Group names in the order first seen."""
        return list(dict.fromkeys(r["group"] for r in self._rows if r["group"] is not None))

    def aggregate(self, keys: Sequence[str] = METRIC_NAMES) -> dict[str, dict[str, dict[str, float | int]]]:
        """``{"all": summarize(all rows), group: summarize(rows of group), ...}`` (per-image mean +- std)."""
        out = {self.ALL: summarize(self._rows, keys)} if self._rows else {}
        for g in self.groups():
            out[g] = summarize([r for r in self._rows if r["group"] == g], keys)
        return out

    def pooled(self) -> dict[str, dict[str, float | int]]:
        """``{"all": pooled figures, group: pooled figures, ...}`` as ``pooled_metrics`` returns them."""
        return {name: _pooled_from_counts(*(int(v) for v in c)) for name, c in self._counts.items()}


def bootstrap_mean(values: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                   confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile-bootstrap ``confidence`` interval, from
    ``n_boot`` resamples of the items with replacement (``numpy.random.default_rng(seed)``)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise LesiondiffError(f"bootstrap_mean needs a non-empty 1D sequence, got shape {x.shape}")
    boots = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return float(x.mean()), float(lo), float(hi)


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, float | int]:
    """How much ``b`` beats ``a`` on the same items (e.g. per-image Dice of two models on one test split).

    d = b - a per item; returns its mean, a percentile-bootstrap confidence interval of the mean (``n_boot``
    resamples of the items with replacement, ``numpy.random.default_rng(seed)``), the two-sided Wilcoxon
    signed-rank p-value (scipy; zero differences dropped; 1.0 when every difference is 0), and how many items
    got better, worse or stayed equal. The interval covers the choice of test images only: it says nothing
    about the spread between training runs with other seeds.
    """
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise LesiondiffError(f"paired_difference needs two equal-length non-empty 1D sequences, got {x.shape}, "
                              f"{y.shape}")
    d = y - x
    _, lo, hi = bootstrap_mean(d, n_boot, seed, confidence)
    p = 1.0 if not np.any(d != 0) else float(wilcoxon(d, zero_method="wilcox").pvalue)
    return {"mean": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "confidence": confidence,
            "p_wilcoxon": p, "n": int(d.size), "better": int((d > 0).sum()), "worse": int((d < 0).sum()),
            "equal": int((d == 0).sum()), "n_boot": n_boot, "seed": seed}
