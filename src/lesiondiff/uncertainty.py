"""Uncertainty of a set of S sampled segmentations of one image: pixel maps, set distances, calibration.

Pixel maps, from probabilities ``[S,H,W]`` in [0,1] (sampled probability maps or binary samples as 0/1), each
``[H,W]`` float32:

- ``coherence``: mean over samples (DiffSeg's consistency map), in [0,1].
- ``ambiguity``: population variance over samples (``ddof=0``; DiffSeg's ambiguity map), in [0, 0.25].
- ``entropy``: binary entropy, in bits, of the mean probability, in [0,1]; 1 bit at a mean of 0.5.

Set distances, from binary masks:

- ``ged``: the standard generalised energy distance (Kohl et al., "A Probabilistic U-Net", NeurIPS 2018)
  between the samples and a set of ground-truth annotations, with ``d = 1 - IoU``.
- ``ged_diffseg``: the quantity DiffSeg (Shuai et al., arXiv preprint 2024) calls GED. It has no ground-truth
  term: it is the mean pairwise root-mean-square pixel difference within the output set, i.e. a diversity of
  the outputs and not a distance to the annotations. The two are not comparable and are never reported under
  the same name.

Calibration: ``expected_calibration_error``, the binary ECE of the foreground probability over all pixels, and
the per-bin sums behind it (``reliability_bins``), which ``merge_bins`` adds up over images so that a pooled,
dataset-level ECE (``ece_from_bins``) and a reliability diagram come from the same binning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy.special import entr

from .errors import LesiondiffError

BIN_KEYS: tuple[str, ...] = ("count", "conf_sum", "target_sum")


def _samples(probs: Any, name: str = "probs") -> np.ndarray:
    """``probs`` as float64 ``[S,H,W]`` in [0,1], S >= 1."""
    p = np.asarray(probs)
    if p.ndim != 3 or p.shape[0] < 1:
        raise LesiondiffError(f"{name} must be [S,H,W] with S >= 1, got shape {p.shape}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise LesiondiffError(f"{name} must hold values in [0,1]")
    return p


def _masks(masks: Any, name: str) -> np.ndarray:
    """``masks`` as bool ``[N,H,W]``; 0/1 arrays are accepted, other values are not."""
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[0] < 1:
        raise LesiondiffError(f"{name} must be masks [N,H,W] with N >= 1, got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise LesiondiffError(f"{name} must be binary masks (threshold probabilities first: prob >= 0.5)")
        m = m.astype(bool)
    return m


def coherence(probs: np.ndarray) -> np.ndarray:
    """Mean over samples: ``[S,H,W]`` in [0,1] -> ``[H,W]`` float32 in [0,1]."""
    return _samples(probs).mean(axis=0).astype(np.float32)


def ambiguity(probs: np.ndarray) -> np.ndarray:
    """Population variance over samples (``ddof=0``): ``[S,H,W]`` in [0,1] -> ``[H,W]`` float32 in [0,1/4]."""
    return _samples(probs).var(axis=0, ddof=0).astype(np.float32)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Binary entropy in bits of the mean probability ``p``: ``-p log2 p - (1-p) log2 (1-p)``.

    ``[S,H,W]`` in [0,1] -> ``[H,W]`` float32 in [0,1]. ``0 log 0`` is taken as 0 exactly
    (``scipy.special.entr``), so no clipping is needed and certain pixels score exactly 0.
    """
    p = _samples(probs).mean(axis=0)
    return ((entr(p) + entr(1.0 - p)) / np.log(2.0)).astype(np.float32)


def _iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[Na,Nb]`` matrix of ``1 - IoU`` of bool masks ``a [Na,H,W]``, ``b [Nb,H,W]``; 0 for two empties.

    Counted pair by pair on the bool masks (exact integers, one mask-sized temporary), not as a float matrix
    product, which would hold float copies of every mask: 2 GB for ten 4288 x 2848 samples in float64."""
    inter = np.array([[np.count_nonzero(x & y) for y in b] for x in a], dtype=np.float64).reshape(len(a), len(b))
    union = (np.array([np.count_nonzero(x) for x in a], dtype=np.float64)[:, None]
             + np.array([np.count_nonzero(y) for y in b], dtype=np.float64)[None, :] - inter)
    iou = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    return 1.0 - iou


def ged(samples: np.ndarray, ground_truths: np.ndarray) -> float:
    """Squared generalised energy distance between sampled masks and ground-truth masks (Kohl et al. 2018).

    ``D^2 = 2 E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]`` with ``d = 1 - IoU`` (``d`` of two empty masks is 0).
    ``samples`` is ``[S,H,W]`` and ``ground_truths`` ``[G,H,W]``, bool (or 0/1). The expectations are over
    independent draws from the two empirical sets, i.e. means over all ``(i, j)`` pairs *including* ``i == j``
    (which contribute 0): ``E[d(S,S')] = (1/S^2) sum_ij d(s_i, s_j)``. Returns ``D^2`` (not its root), >= 0.
    """
    s, y = _masks(samples, "samples"), _masks(ground_truths, "ground_truths")
    if s.shape[1:] != y.shape[1:]:
        raise LesiondiffError(f"samples {s.shape[1:]} and ground truths {y.shape[1:]} differ in size")
    cross = _iou_distance(s, y).mean()
    within_s = _iou_distance(s, s).mean()
    within_y = _iou_distance(y, y).mean()
    return float(2.0 * cross - within_s - within_y)


def ged_diffseg(outputs: np.ndarray) -> float:
    """DiffSeg's "GED" (Shuai et al. 2024, Eqs. 5 and 7): a diversity of the output set, with no ground-truth
    term.

    ``D^2 = (2/N^2) sum_{i<j} d(y_i, y_j) - (1/N^2) sum_i d(y_i, y_i) - (1/N^2) sum_j d(y_j, y_j)``, where
    ``d(P, Q) = sqrt(sum_k (p_k - q_k)^2 / (w*h))`` is the root-mean-square pixel difference. The last two
    sums are 0, so this is the sum of ``d`` over all ordered pairs ``i != j`` divided by ``N^2`` (the mean
    over all pairs including ``i == j``). ``outputs`` is ``[N,H,W]`` in [0,1] (binary masks, as the paper
    uses, or probabilities; bool masks are counted exactly, without float copies). Returns the value of Eq. 5
    as written (not its root); 0 when N = 1.

    Differences from the standard ``ged``: no ground-truth term, RMS distance instead of ``1 - IoU``, and only
    one of the three terms is non-zero. The paper states a range of [0, sqrt(2)/2]; for binary masks the
    formula is at most 0.5 (half the outputs all foreground, half empty).
    """
    y = np.asarray(outputs)
    if y.dtype == bool and y.ndim == 3 and y.shape[0] >= 1:  # masks: squared distance = pixels that differ,
        flat = y.reshape(y.shape[0], -1)                       # counted pair by pair without float copies
        sq_dist = np.array([[np.count_nonzero(a ^ b) for b in flat] for a in flat], dtype=np.float64)
    else:
        flat = _samples(outputs, "outputs").reshape(y.shape[0], -1)
        sq = (flat * flat).sum(1)
        sq_dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (flat @ flat.T), 0.0)
    n = flat.shape[0]
    np.fill_diagonal(sq_dist, 0.0)
    d = np.sqrt(sq_dist / flat.shape[1])
    return float(d.sum() / n**2)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin sums of a reliability diagram: the one binning behind ``expected_calibration_error``.

    ``probs`` (any shape, e.g. ``[H,W]`` or ``[N,H,W]``, in [0,1]) is the foreground probability of each pixel
    and ``targets`` (same shape, bool or 0/1) its label. Pixels are put into ``n_bins`` equal-width bins of
    ``probs``: bin m (1-based) is ``((m-1)/M, m/M]``, with 0 in the first bin. Returns, each ``[n_bins]``:

    - ``count``: pixels in the bin (int64);
    - ``conf_sum``: sum of their probabilities (float64);
    - ``target_sum``: number of them that are foreground (float64).

    The sums (not means) are returned so that bins of many images add up exactly (``merge_bins``): a pooled,
    dataset-level ECE is ``ece_from_bins`` of the merged bins, equal to the ECE of all pixels concatenated.
    Written in numpy (float64) so that vote fractions such as 0.5 and 1.0, which sit on bin edges, bin as
    Guo et al. define.
    """
    raw = np.asarray(probs)
    p = raw.astype(np.float64, copy=False).reshape(-1)
    t = np.asarray(targets)
    if t.shape != raw.shape:
        raise LesiondiffError(f"targets shape {t.shape} differs from probs shape {raw.shape}")
    if p.size == 0:
        raise LesiondiffError("calibration (ECE, reliability bins) needs at least one pixel")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise LesiondiffError("calibration (ECE, reliability bins) expects probabilities in [0,1]")
    if n_bins < 1:
        raise LesiondiffError(f"n_bins must be >= 1, got {n_bins}")
    if t.dtype != bool and not np.isin(t, (0, 1)).all():
        raise LesiondiffError("calibration (ECE, reliability bins) expects binary targets (bool or 0/1)")
    t = t.reshape(-1).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], p, side="left")  # right-closed bins, p = 0 in bin 0
    return {
        "count": np.bincount(idx, minlength=n_bins).astype(np.int64),
        "conf_sum": np.bincount(idx, weights=p, minlength=n_bins),
        "target_sum": np.bincount(idx, weights=t, minlength=n_bins),
    }


def merge_bins(bins: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Element-wise sum of ``reliability_bins`` outputs with the same number of bins (pooling over images)."""
    total: dict[str, np.ndarray] | None = None
    for b in bins:
        if total is not None and len(b["count"]) != len(total["count"]):
            raise LesiondiffError(f"cannot merge {len(b['count'])} bins into {len(total['count'])}")
        total = {k: np.asarray(b[k]).copy() for k in BIN_KEYS} if total is None else {
            k: total[k] + np.asarray(b[k]) for k in BIN_KEYS}
    if total is None:
        raise LesiondiffError("merge_bins needs at least one set of bins")
    return total


def ece_from_bins(bins: dict[str, np.ndarray]) -> float:
    """``ECE = sum_m (|B_m|/n) |mean(targets in B_m) - mean(probs in B_m)|``, from ``reliability_bins`` sums.

    ``|B_m|/n * |acc_m - conf_m|`` equals ``|target_sum_m - conf_sum_m| / n``, so empty bins add 0.
    """
    n = int(np.sum(bins["count"]))
    if n == 0:
        raise LesiondiffError("calibration (ECE) needs at least one pixel")
    return float(np.abs(np.asarray(bins["target_sum"]) - np.asarray(bins["conf_sum"])).sum() / n)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 10) -> float:
    """Binary expected calibration error of foreground probabilities, all pixels pooled (Guo et al. 2017).

    ``ECE = sum_m (|B_m|/n) |mean(targets in B_m) - mean(probs in B_m)|`` (L1 norm, empty bins skipped) over
    the equal-width, right-closed bins of ``reliability_bins`` (which states shapes and the binning).

    The confidence is the foreground probability itself, not ``max(p, 1-p)``, as in torchmetrics'
    ``binary_calibration_error``; the two agree except for probabilities exactly on a bin edge, which
    torchmetrics puts in the bin above (and 1.0 in a bin of its own). This matches the binning of MONAI's
    ``calibration_binning`` as implemented (its docstring describes the other side).
    """
    return ece_from_bins(reliability_bins(probs, targets, n_bins))


def reliability_table(bins: dict[str, np.ndarray]) -> list[dict[str, float | int | None]]:
    """One row per bin of ``reliability_bins`` sums: ``lo``, ``hi`` (the bin is ``(lo, hi]``, the first also
    holds 0), ``count``, ``mean_prob`` (mean predicted probability) and ``frac_fg`` (observed foreground
    fraction). ``mean_prob`` and ``frac_fg`` are None for an empty bin (JSON null, not NaN)."""
    count = np.asarray(bins["count"])
    edges = np.linspace(0.0, 1.0, len(count) + 1)
    rows = []
    for m, n in enumerate(count):
        n = int(n)
        rows.append({"lo": float(edges[m]), "hi": float(edges[m + 1]), "count": n,
                     "mean_prob": float(bins["conf_sum"][m] / n) if n else None,
                     "frac_fg": float(bins["target_sum"][m] / n) if n else None})
    return rows


# --- per-image quality scores ---------------------------------------------------------------------------------
# One number per image that says how far to trust its mask, from its S members (diffusion draws, TTA members,
# MC-dropout passes, ensemble members). Failure detection ranks images by these (``selective.py``).

BAND = (0.05, 0.95)
"""The uncertain band of a fused probability p: the pixels with BAND[0] <= p <= BAND[1] (the lesion's soft
margin and any doubtful region; configurable through ``image_scores(band=...)``)."""


def pairwise_dice(masks: np.ndarray) -> float:
    """Mean Dice over the S(S-1)/2 pairs of the S binary masks ``[S,H,W]`` (two empty masks agree: 1). In [0,1];
    1 when every member draws the same mask. Needs S >= 2. Zenk et al. (Medical Image Analysis 2025) found this
    pairwise agreement the best image-level failure detector among ensemble members."""
    m = _masks(masks, "masks").reshape(len(masks), -1)
    if m.shape[0] < 2:
        raise LesiondiffError("pairwise_dice needs at least two masks")
    sizes = np.array([np.count_nonzero(x) for x in m], dtype=np.float64)
    dices = []
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            denom = sizes[i] + sizes[j]
            dices.append(1.0 if denom == 0 else 2.0 * np.count_nonzero(m[i] & m[j]) / denom)
    return float(np.mean(dices))


def lesion_fraction(masks: np.ndarray) -> float:
    """The fraction of the S binary masks ``[S,H,W]`` that find any lesion (any foreground pixel), in [0,1]."""
    m = _masks(masks, "masks")
    return float(np.mean([bool(x.any()) for x in m]))


def mean_entropy(fused: np.ndarray, band: tuple[float, float] | None = None) -> float:
    """Mean binary entropy, in bits, of the fused probability ``[H,W]`` over all pixels, or (``band`` (lo, hi))
    over the pixels with lo <= p <= hi only: ``mean_i -p_i log2 p_i - (1-p_i) log2 (1-p_i)``, in [0,1]. An
    empty band (every pixel certain) gives 0."""
    h = entropy(np.asarray(fused, dtype=np.float64)[None])
    if band is None:
        return float(h.mean())
    p = np.asarray(fused)
    inside = (p >= band[0]) & (p <= band[1])
    return float(h[inside].mean()) if inside.any() else 0.0


SCORES = {
    "agreement": "mean pairwise Dice among the S binary masks (S >= 2; higher = more trustworthy)",
    "lesion_fraction": "fraction of the S masks that find any lesion (S >= 2; a flag, not a ranking)",
    "entropy": "mean binary entropy of the fused probability over all pixels, bits (lower = more trustworthy)",
    "band_entropy": "mean binary entropy of the fused probability over its uncertain band "
                    f"{BAND[0]:g} <= p <= {BAND[1]:g}, bits (lower = more trustworthy)",
}
"""The per-image scores predict writes, by name (predictions.csv columns)."""


def image_scores(probs: np.ndarray, fused: np.ndarray, threshold: float = 0.5, members: int | None = None,
                 band: tuple[float, float] = BAND) -> dict[str, float]:
    """The per-image scores of :data:`SCORES` from the S members' probabilities ``[S,H,W]`` and the fused
    probability ``[H,W]``: the member masks are ``probs >= threshold``. ``members``: how many of the S are
    distinct draws (a network without noise input gives S copies of one prediction: 1); with fewer than two,
    only the entropy scores (``agreement`` and ``lesion_fraction`` need S >= 2)."""
    scores = {"entropy": mean_entropy(fused), "band_entropy": mean_entropy(fused, band)}
    if (members if members is not None else len(probs)) >= 2:
        masks = np.asarray(probs) >= threshold
        scores = {"agreement": pairwise_dice(masks), "lesion_fraction": lesion_fraction(masks), **scores}
    return scores
