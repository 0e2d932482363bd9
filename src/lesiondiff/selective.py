"""Failure detection and selective segmentation: which masks to trust, measured, and a threshold with a guarantee.

Image-level failure detection (Geifman et al., "Bias-reduced uncertainty estimation for deep neural
classifiers", ICLR 2019; as Zenk et al. 2025 and the ValUES framework, Kahl et al., ICLR 2024, apply it to
segmentation). Each image i has a risk r_i = 1 - Dice_i of its fused mask and a confidence c_i from one of its
per-image scores (``uncertainty.SCORES``; :func:`confidence` turns a score into "higher = more trustworthy").
- Risk-coverage curve: sort the images by confidence, most confident first; at coverage k/n the selective risk
  is the mean risk of the k most confident images. Images of equal confidence are accepted together, so each
  point of a tied group takes the group's mean risk (the expectation over random tie-breaking).
- AURC = (1/n) sum_{k=1..n} selective risk at coverage k/n: the mean risk the user meets when reviewing from
  the most trusted image down; lower is better.
- e-AURC = AURC - AURC of the optimal ranking (risks sorted ascending); 0 for a perfect ranking. The reversed
  ranking gives the largest value for the given risks.
Pixel level (secondary; pixel AUROC saturates, so it is no headline figure):
- UEO (uncertainty-error overlap, Jungo and Reyes, MICCAI 2019): the Dice between the uncertainty map
  thresholded at tau and the error map (fused mask XOR ground truth), per image (both empty: 1), averaged over
  images; reported at the tau of :data:`UEO_THRESHOLDS` that maximises the mean, with that tau.
- pixel AUROC of the uncertainty map for the error map, pooled over every pixel of the split, from
  :data:`AUROC_BINS` equal-width bins of the uncertainty in [0,1] (exact up to ties within a bin).

Selective segmentation with a guarantee (:func:`choose_threshold`): choose a confidence threshold lambda on a
calibration split so that, with probability at least 1 - delta over the calibration data, the mean Dice of the
images a new run accepts (confidence >= lambda) is at least the target. The procedure is Learn then Test
(Angelopoulos et al., "Learn then Test: Calibrating predictive algorithms to achieve risk control", 2021)
with fixed-sequence testing:
- why not conformal risk control (Angelopoulos et al., ICLR 2024): it bounds E[L(lambda)] for a loss that is
  monotone in lambda; the mean risk over *accepted* images is a ratio, and its linearisation
  (r - alpha) * 1[c >= lambda] is not monotone in lambda, so CRC's guarantee does not apply;
- the hypotheses H_lambda: "the mean risk of images with confidence >= lambda exceeds alpha = 1 - target" are
  tested in a fixed sequence from the most confident threshold down (each at level delta; the sequence stops at
  the first one not rejected, which keeps the family-wise error at delta), starting at the first threshold
  that accepts :func:`min_accepted` calibration images; the order depends on the calibration scores alone, never on
  their Dice (as the SGR algorithm of Geifman and El-Yaniv, NeurIPS 2017);
- each p-value comes from the Waudby-Smith and Ramdas (2020) betting upper confidence bound of the mean risk of
  the accepted calibration images (risks in [0,1]; tighter than Hoeffding when the accepted risks vary little,
  which is what makes a useful coverage reachable with about a hundred calibration images): H_lambda is
  rejected when that bound at level delta is below alpha.
The threshold chosen is the last one rejected; when none is, every image is sent to review.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq

from .errors import LesiondiffError

UEO_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # tau = 0.05, 0.10, ..., 0.95
AUROC_BINS = 1000
MIN_CALIBRATION = 20


def confidence(score: str, values: Sequence[float]) -> np.ndarray:
    """Per-image scores of ``score`` (``uncertainty.SCORES``) as confidences, higher = more trustworthy:
    ``agreement`` as it is, ``entropy`` and ``band_entropy`` negated, ``lesion_fraction`` f as |2f - 1| (how
    unanimously the members say lesion or no lesion). Unknown names are refused."""
    v = np.asarray(values, dtype=np.float64)
    if score == "agreement":
        return v
    if score in ("entropy", "band_entropy"):
        return -v
    if score == "lesion_fraction":
        return np.abs(2 * v - 1)
    raise LesiondiffError(f"unknown score {score!r}; known: agreement, lesion_fraction, entropy, band_entropy")


def _tied_risks(risks: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """The risks in order of decreasing confidence, each tied group replaced by its mean."""
    order = np.argsort(-conf, kind="stable")
    r, c = risks[order], conf[order]
    out = r.copy()
    start = 0
    for end in range(1, len(r) + 1):
        if end == len(r) or c[end] != c[start]:
            out[start:end] = r[start:end].mean()
            start = end
    return out


def risk_coverage(risks: Sequence[float], conf: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/n, selective risk at k) for k = 1..n, most confident first (module docstring)."""
    r, c = _checked(risks, conf)
    sorted_r = _tied_risks(r, c)
    k = np.arange(1, len(r) + 1)
    return k / len(r), np.cumsum(sorted_r) / k


def aurc(risks: Sequence[float], conf: Sequence[float]) -> float:
    """Area under the risk-coverage curve: the mean selective risk over coverages 1/n .. n/n."""
    return float(risk_coverage(risks, conf)[1].mean())


def optimal_aurc(risks: Sequence[float]) -> float:
    """The AURC of the ranking that accepts the lowest risks first (the best any score could do)."""
    r = np.sort(np.asarray(risks, dtype=np.float64))
    return float((np.cumsum(r) / np.arange(1, len(r) + 1)).mean())


def eaurc(risks: Sequence[float], conf: Sequence[float]) -> float:
    """Excess AURC: :func:`aurc` minus :func:`optimal_aurc` (0 for a perfect ranking)."""
    return aurc(risks, conf) - optimal_aurc(risks)


def _checked(risks, conf) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.asarray(risks, dtype=np.float64), np.asarray(conf, dtype=np.float64)
    if r.ndim != 1 or r.shape != c.shape or r.size == 0:
        raise LesiondiffError(f"risks and confidences must be two equal-length non-empty lists, got {r.shape}, "
                              f"{c.shape}")
    if not (np.isfinite(r).all() and np.isfinite(c).all()):
        raise LesiondiffError("risks and confidences must be finite numbers")
    return r, c


def failure_detection(dice: Sequence[float], scores: dict[str, Sequence[float]]) -> dict[str, dict]:
    """AURC and e-AURC (risk = 1 - Dice) for each named score, with the risk-coverage curve (for figures) and
    the reference rankings: ``optimal`` (its e-AURC is 0) and ``random`` (the expected AURC of a random order,
    which is the mean risk)."""
    risks = 1.0 - np.asarray(dice, dtype=np.float64)
    out = {}
    for name, values in scores.items():
        conf = confidence(name, values)
        cov, sel = risk_coverage(risks, conf)
        out[name] = {"aurc": float(sel.mean()), "eaurc": float(sel.mean()) - optimal_aurc(risks),
                     "coverage": cov.tolist(), "selective_risk": sel.tolist()}
    opt = np.cumsum(np.sort(risks)) / np.arange(1, len(risks) + 1)
    out["optimal"] = {"aurc": float(opt.mean()), "eaurc": 0.0, "coverage": (np.arange(1, len(risks) + 1)
                                                                          / len(risks)).tolist(),
                      "selective_risk": opt.tolist()}
    out["random"] = {"aurc": float(risks.mean()), "eaurc": float(risks.mean()) - optimal_aurc(risks)}
    return out


# --- pixel level ----------------------------------------------------------------------------------------------

def ueo_curve(uncertainty: np.ndarray, error: np.ndarray,
              thresholds: Sequence[float] = UEO_THRESHOLDS) -> np.ndarray:
    """Dice between ``uncertainty >= tau`` and the error map, for each tau (both empty: 1); ``[H,W]`` each."""
    u, e = np.asarray(uncertainty), np.asarray(error, dtype=bool)
    n_err = np.count_nonzero(e)
    out = []
    for tau in thresholds:
        high = u >= tau
        denom = np.count_nonzero(high) + n_err
        out.append(1.0 if denom == 0 else 2.0 * np.count_nonzero(high & e) / denom)
    return np.array(out)


def auroc_counts(uncertainty: np.ndarray, error: np.ndarray, bins: int = AUROC_BINS) -> np.ndarray:
    """``[2, bins]`` pixel counts of the uncertainty (in [0,1]) histogram, for correct (row 0) and erroneous
    (row 1) pixels; summed over images, they give the pooled ROC (:func:`roc_from_counts`)."""
    idx = np.clip((np.asarray(uncertainty, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1).ravel()
    e = np.asarray(error, dtype=bool).ravel()
    return np.stack([np.bincount(idx[~e], minlength=bins), np.bincount(idx[e], minlength=bins)])


def roc_from_counts(counts: np.ndarray) -> dict:
    """The ROC of "uncertainty flags an error" from :func:`auroc_counts` (thresholds from high to low): false and
    true positive rates and the area under it (trapezoids; ties within a bin count half)."""
    neg, pos = counts[0][::-1].astype(np.float64), counts[1][::-1].astype(np.float64)
    if neg.sum() == 0 or pos.sum() == 0:
        return {"auroc": float("nan"), "fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}
    fpr = np.concatenate([[0.0], np.cumsum(neg) / neg.sum()])
    tpr = np.concatenate([[0.0], np.cumsum(pos) / pos.sum()])
    return {"auroc": float(np.trapezoid(tpr, fpr)), "fpr": fpr.tolist(), "tpr": tpr.tolist()}


# --- the calibrated threshold ---------------------------------------------------------------------------------

def wsr_upper_bound(x: Sequence[float], delta: float) -> float:
    """An upper confidence bound, at level ``delta``, of the mean of iid values in [0,1] (Waudby-Smith and
    Ramdas, "Estimating means of bounded random variables by betting", 2020: the predictable-plug-in betting
    bound, as in Angelopoulos et al.'s risk-controlling prediction sets): the smallest mu whose betting
    capital against "the mean is mu" never reaches 1/delta."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return 1.0
    t = np.arange(1, n + 1)
    mu_hat = (np.cumsum(x) + 0.5) / (t + 1)
    sigma2 = (np.cumsum((x - mu_hat) ** 2) + 0.25) / (t + 1)
    sigma2 = np.concatenate([[0.25], sigma2[:-1]])  # predictable: the estimate before seeing x_t
    nu = np.minimum(np.sqrt(2 * np.log(1 / delta) / (n * sigma2)), 1.0)

    def capital(mu: float) -> float:  # log of the largest capital of the bettor against "mean >= mu" ...
        return float(np.max(np.cumsum(np.log1p(-nu * (x - mu))))) + np.log(delta)  # ... minus log(1/delta)

    if capital(1.0) < 0:
        return 1.0
    if capital(1e-10) >= 0:
        return 0.0
    return float(brentq(capital, 1e-10, 1.0, xtol=1e-8))


def min_accepted(target: float, delta: float) -> int:
    """How many calibration images the first tested threshold accepts: twice the fewest with which even images of
    Dice 1 could be certified (the betting capital grows at most by 1 + alpha per image, so it needs
    (1 + alpha)^m >= 1/delta). It depends on the target and delta only, never on the data: 26 for a target of
    0.80 at delta 0.1. Starting lower, the sequence would stop at once on thresholds that accept too few
    images to be certified at all."""
    alpha = 1.0 - target
    return 2 * int(np.ceil(np.log(1 / delta) / np.log1p(alpha)))


def choose_threshold(dice: Sequence[float], conf: Sequence[float], target: float, delta: float,
                     seed: int = 0) -> dict:
    """The confidence threshold of the module docstring: Learn then Test, fixed sequence from the most confident
    threshold down, Waudby-Smith-Ramdas bounds. ``dice`` and ``conf`` are the calibration images'. Returns
    ``threshold`` (None when no threshold is certified: review every image), the calibration ``coverage`` and
    mean Dice of the accepted images, the ``upper_risk_bound`` at the threshold, and the number of thresholds
    tested. ``seed`` fixes the order in which the accepted risks enter the betting bound."""
    if not 0 < target < 1:
        raise LesiondiffError(f"the target Dice must be between 0 and 1, got {target:g}")
    if not 0 < delta < 1:
        raise LesiondiffError(f"delta must be between 0 and 1, got {delta:g}")
    risks, c = _checked(1.0 - np.asarray(dice, dtype=np.float64), conf)
    if len(risks) < MIN_CALIBRATION:
        raise LesiondiffError(f"a calibration split needs at least {MIN_CALIBRATION} images, got {len(risks)}")
    alpha = 1.0 - target
    order = np.random.default_rng(seed).permutation(len(risks))
    candidates = np.unique(c)[::-1]  # most confident first; a threshold accepts conf >= it
    chosen, tested, bound, first = None, 0, None, min_accepted(target, delta)
    for lam in candidates:
        accepted = c[order] >= lam
        if accepted.sum() < first:
            continue
        tested += 1
        ucb = wsr_upper_bound(risks[order][accepted], delta)
        if ucb >= alpha:
            break
        chosen, bound = float(lam), ucb
    acc = c >= chosen if chosen is not None else np.zeros(len(c), bool)
    return {"threshold": chosen, "coverage": float(acc.mean()),
            "accepted_mean_dice": float(1 - risks[acc].mean()) if acc.any() else None,
            "upper_risk_bound": bound, "thresholds_tested": tested, "n": len(risks), "target_dice": target,
            "delta": delta, "min_accepted": first,
            "method": "Learn then Test, fixed sequence from the most confident threshold, Waudby-Smith-Ramdas "
                      "upper bounds of the accepted images' mean 1 - Dice"}
