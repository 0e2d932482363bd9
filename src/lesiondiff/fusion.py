"""Fusion of S sampled probability maps of one image into one probability map, and DenseCRF refinement.

Every fuser in ``FUSERS`` has the signature::

    fuser(probs: [S,H,W] float in [0,1], image: [H,W] | [H,W,C] | None = None, threshold: float = 0.5, **kw)
        -> [H,W] float32 in [0,1]

and returns a fused foreground probability; the caller binarises it as ``fused >= threshold``. Binarisation is
``prob >= threshold`` everywhere in the project (fusers, metrics, writers), so a probability exactly at the
threshold is foreground.

- ``mean``: the mean of the S maps.
- ``majority``: the fraction of samples whose binarised mask (``prob >= threshold``) is foreground.
  Thresholded at 0.5 this is a majority vote; with an even S a tie (exactly half the votes) is foreground.
- ``staple``: STAPLE (Warfield et al., IEEE TMI 2004) on the binarised samples, returning the posterior
  foreground probability of each pixel. Unlike a mean, it weights each sample by its estimated sensitivity and
  specificity. It is EM written in numpy, with UniSegDiff's settings as defaults (Eqs. 2-3: initial
  sensitivity 0.9 and specificity 0.9 for every sample, prior 0.5, 20 iterations; UniSegDiff fuses its 20
  samples this way). SimpleITK's ``STAPLEImageFilter`` is not used because its initial values and prior
  cannot be set: it always starts from the samples' vote fraction with the mean foreground fraction as
  prior. ``staple(..., init="vote", prior="mean", tolerance=1e-7)`` reproduces it (see ``staple``).

- ``densecrf``: the mean of the S maps refined by ``crf_refine`` with the image.
- ``crf_rounds``: DiffSeg's optimisation (Shuai et al., arXiv preprint 2024, Sec. 3.3, Eq. 12): K rounds of
  DenseCRF on random subsets of the samples, each round averaged and binarised, then the K binary rounds
  averaged.

``crf_refine`` applies a fully connected CRF (Kraehenbuehl and Koltun, 2011; pydensecrf2) to a probability map
and its image, as DiffSeg does; ``fuse`` chains a fuser and, optionally, the CRF. The two CRF fusers need the
image (``IMAGE_FUSERS``) and name the CRF's kernels as DiffSeg's Eq. 10 does (``crf_kernels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import LesiondiffError
from .registry import Registry

FUSERS = Registry("fuser")


def _check_probs(probs: Any) -> np.ndarray:
    """``probs`` as a float ``[S,H,W]`` array in [0,1], S >= 1."""
    p = np.asarray(probs)
    if p.ndim != 3 or p.shape[0] < 1:
        raise LesiondiffError(f"fusion expects probabilities [S,H,W] with S >= 1, got shape {p.shape}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise LesiondiffError("fusion expects probabilities in [0,1] (finite)")
    return p


def binarize(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The project's binarisation rule: ``probs >= threshold`` (bool, same shape)."""
    return np.asarray(probs) >= threshold


@FUSERS.register("mean")
def mean(probs: np.ndarray, image: np.ndarray | None = None, threshold: float = 0.5, **kw: Any) -> np.ndarray:
    """Mean of the S maps: ``[S,H,W]`` in [0,1] -> ``[H,W]`` float32 in [0,1] (ignores image, threshold)."""
    return _check_probs(probs).mean(axis=0).astype(np.float32)


@FUSERS.register("majority")
def majority(
    probs: np.ndarray, image: np.ndarray | None = None, threshold: float = 0.5, **kw: Any
) -> np.ndarray:
    """Vote fraction ``mean_s[probs_s >= threshold]``: ``[S,H,W]`` -> ``[H,W]`` float32 in {0, 1/S, ..., 1}.

    Thresholding the result at 0.5 gives the majority vote, with ties (even S, half the votes) as foreground.
    """
    return binarize(_check_probs(probs), threshold).mean(axis=0).astype(np.float32)


@dataclass(frozen=True)
class StapleStats:
    """STAPLE's estimates of each sample's performance: ``sensitivity`` and ``specificity`` are ``[S]`` in
    [0,1]; ``iterations`` is the number of EM iterations run (0 where no EM was needed)."""

    sensitivity: np.ndarray
    specificity: np.ndarray
    iterations: int


_STAPLE_EPS = 1e-6  # sensitivities and specificities are kept in [eps, 1-eps] so their logs stay finite


def _staple_posterior(d: np.ndarray, sens: np.ndarray, spec: np.ndarray, log_prior_odds: float) -> np.ndarray:
    """E-step: ``W_i = P(y_i=1 | D)`` for votes ``d`` ``[S,N]`` in {0,1}, from the log-odds
    ``log(prior/(1-prior)) + sum_j log P(D_ij | y=1) - log P(D_ij | y=0)``, with
    ``P(D_ij | y=1) = sens_j^D (1-sens_j)^(1-D)`` and ``P(D_ij | y=0) = (1-spec_j)^D spec_j^(1-D)``."""
    on = np.log(sens) - np.log1p(-spec)  # a vote D_ij = 1
    off = np.log1p(-sens) - np.log(spec)  # a vote D_ij = 0
    logit = log_prior_odds + off.sum() + (on - off) @ d
    return np.exp(-np.logaddexp(0.0, -logit))  # the logistic function, without overflow


def _staple_rates(
    d: np.ndarray, w: np.ndarray, last: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """M-step: ``sens_j = sum_i W_i D_ij / sum_i W_i``, ``spec_j = sum_i (1-W_i)(1-D_ij) / sum_i (1-W_i)``,
    clamped to [eps, 1-eps]. Where a denominator is 0 (``W`` all 0 or all 1) the ``last`` estimate is kept."""
    fg, bg = w.sum(), (1.0 - w).sum()
    sens = d @ w / fg if fg > 0 else last[0]
    spec = (bg - d @ (1.0 - w)) / bg if bg > 0 else last[1]
    return np.clip(sens, _STAPLE_EPS, 1 - _STAPLE_EPS), np.clip(spec, _STAPLE_EPS, 1 - _STAPLE_EPS)


@FUSERS.register("staple")
def staple(
    probs: np.ndarray,
    image: np.ndarray | None = None,
    threshold: float = 0.5,
    max_iterations: int = 20,
    sensitivity: float = 0.9,
    specificity: float = 0.9,
    prior: float | str = 0.5,
    tolerance: float = 0.0,
    return_stats: bool = False,
    init: str = "rates",
    **kw: Any,
) -> np.ndarray | tuple[np.ndarray, StapleStats]:
    """STAPLE posterior foreground probability of binarised samples: ``[S,H,W]`` -> ``[H,W]`` float32 in [0,1].

    The samples are binarised at ``threshold`` (``D = probs >= threshold``) and fused by EM (Warfield et al.
    2004; UniSegDiff Eqs. 2-3), all samples and pixels at once. The order is E, M repeated, final E:

    - first E-step: ``W`` from every sample's initial ``sensitivity`` and ``specificity`` (the false-positive
      rate is ``1 - specificity``) and ``prior = P(y_i=1)`` (see ``_staple_posterior``);
    - each of the ``max_iterations`` iterations: an M-step (each sample's sensitivity and specificity from
      ``W``, see ``_staple_rates``), then an E-step (``W`` from them);
    - the result is ``W`` of the last E-step, and the stats are the estimates that E-step used.

    The defaults are UniSegDiff's: initial sensitivity 0.9, specificity 0.9, prior 0.5, 20 iterations.
    ``tolerance > 0`` stops early once no sensitivity or specificity changed by more than ``tolerance`` in an
    iteration (the first compares with the initial values); 0 always runs ``max_iterations`` (0 returns the
    first E-step). Estimates are clamped to [1e-6, 1-1e-6] so that logs stay finite.

    ``init="vote"`` starts as ITK does: the first ``W`` is the samples' vote fraction instead of an E-step, and
    ``sensitivity``/``specificity`` are unused (``max_iterations >= 1``). ``prior="mean"`` is ITK's prior: the
    foreground fraction over all samples and pixels (ITK's confidence weight 1). SimpleITK's
    ``STAPLEImageFilter`` with ``SetMaximumIterations(k)`` equals
    ``staple(..., init="vote", prior="mean", max_iterations=k, tolerance=1e-7)`` (ITK stops once every squared
    change is <= 1e-14): the estimates agree to about 1e-13 and the map to float32 precision. Two differences
    remain. ITK does not clamp, so where an estimate is exactly 0 or 1 (a sample that covers the union, or only
    the intersection, of all masks) its posterior has exact 0s and 1s where ours is within about 1e-6 of them.
    When ITK stops early, its ``GetElapsedIterations`` is one less than the iterations it ran, which
    ``StapleStats.iterations`` counts.

    Degenerate inputs: when all binarised samples are identical (all empty included), the result is that
    common mask as 0/1, with sensitivity and specificity 1 and 0 iterations. With ``return_stats=True``
    returns ``(probability, StapleStats)``.
    """
    iterations = int(max_iterations)
    if init not in ("rates", "vote"):
        raise LesiondiffError(f"STAPLE init must be 'rates' or 'vote', got {init!r}")
    if iterations < (1 if init == "vote" else 0):
        raise LesiondiffError(f"STAPLE max_iterations must be >= 1 (>= 0 with init='rates'), got {iterations}")
    if not (prior == "mean" or (not isinstance(prior, str) and 0.0 < prior < 1.0)):
        raise LesiondiffError(f"STAPLE prior must be in (0,1) or 'mean', got {prior!r}")
    if not (0.0 <= sensitivity <= 1.0 and 0.0 <= specificity <= 1.0):
        raise LesiondiffError("STAPLE initial sensitivity and specificity must be in [0,1]")
    masks = binarize(_check_probs(probs), threshold)
    n = masks.shape[0]
    if (masks == masks[0]).all():
        stats = StapleStats(np.ones(n), np.ones(n), 0)
        fused = masks[0].astype(np.float32)
        return (fused, stats) if return_stats else fused
    d = masks.reshape(n, -1).astype(np.float64)
    if prior == "mean":
        prior = float(d.mean())  # in (0,1), as the samples are not identical
    log_prior_odds = float(np.log(prior) - np.log1p(-prior))

    if init == "vote":
        w, last = d.mean(axis=0), None
    else:
        sens, spec = (np.clip(np.full(n, v, np.float64), _STAPLE_EPS, 1 - _STAPLE_EPS)
                      for v in (sensitivity, specificity))
        w, last = _staple_posterior(d, sens, spec, log_prior_odds), (sens, spec)
    it = 0
    while it < iterations:
        it += 1
        sens, spec = _staple_rates(d, w, last)
        w = _staple_posterior(d, sens, spec, log_prior_odds)
        if tolerance > 0 and last is not None:
            change = max(np.abs(sens - last[0]).max(), np.abs(spec - last[1]).max())
            if change <= tolerance:
                break
        last = (sens, spec)
    fused = w.reshape(masks.shape[1:]).astype(np.float32)
    return (fused, StapleStats(sens, spec, it)) if return_stats else fused


def _crf_image(image: Any, shape: tuple[int, int]) -> np.ndarray:
    """``image`` ``[H,W]``, ``[H,W,1]`` or ``[H,W,3]`` in [0,255] as C-contiguous uint8 ``[H,W,3]``."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[:2] != shape or img.shape[2] not in (1, 3):
        raise LesiondiffError(
            f"DenseCRF needs an image [H,W], [H,W,1] or [H,W,3] matching the mask {shape}, got {img.shape}"
        )
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        # resampling leaves float rounding just outside the range (255.00002): tolerate half a grey level
        if not np.isfinite(img).all() or img.min() < -0.5 or img.max() > 255.5:
            raise LesiondiffError(
                "DenseCRF needs image intensities in [0,255] (uint8, or float on that scale)"
            )
        img = np.rint(np.clip(img, 0.0, 255.0)).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def crf_refine(
    prob: np.ndarray,
    image: np.ndarray,
    iterations: int = 5,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
) -> np.ndarray:
    """Fully connected CRF refinement of a foreground probability: ``[H,W]`` in [0,1] -> ``[H,W]`` float32.

    ``image`` is ``[H,W]`` (grey, repeated to 3 channels), ``[H,W,1]`` or ``[H,W,3]``, uint8 or float in
    [0,255] (rounded to uint8). The unary is ``-log`` of ``[1-p, p]`` with ``p`` clipped to [1e-5, 1-1e-5]
    (pydensecrf's ``unary_from_softmax``); the pairwise terms are a Gaussian smoothness kernel
    (``gaussian_*``) and an appearance (bilateral) kernel (``bilateral_*``), both Potts, with pydensecrf's
    example defaults. Returns the foreground marginal in [0,1] after ``iterations`` mean-field steps.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise LesiondiffError("DenseCRF needs pydensecrf2: pip install pydensecrf2") from None

    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2:
        raise LesiondiffError(f"crf_refine expects a probability map [H,W], got shape {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise LesiondiffError("crf_refine expects probabilities in [0,1] (finite)")
    h, w = p.shape
    rgb = _crf_image(image, (h, w))
    p = np.clip(p, 1e-5, 1.0 - 1e-5)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - p, p]))))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_compat)
    q = np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(2, h, w)
    return np.clip(q[1], 0.0, 1.0)


IMAGE_FUSERS: frozenset[str] = frozenset({"densecrf", "crf_rounds"})  # fusers that need the image


def crf_kernels(
    iterations: int = 5,
    w1: float = 10.0,
    theta_alpha: float = 80.0,
    theta_beta: float = 13.0,
    w2: float = 3.0,
    theta_gamma: float = 3.0,
) -> dict[str, Any]:
    """``crf_refine``'s arguments from the names of DiffSeg's Eq. 10, whose pairwise potential is
    ``mu(x_i, x_j) [w1 exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)
    + w2 exp(-|p_i - p_j|^2 / 2 theta_gamma^2)]`` (Potts ``mu``; positions ``p`` in px, colours ``I`` in 0..255):

    - appearance kernel: weight ``w1`` -> ``bilateral_compat``, position width ``theta_alpha`` ->
      ``bilateral_sxy``, colour width ``theta_beta`` -> ``bilateral_srgb``;
    - smoothness kernel: weight ``w2`` -> ``gaussian_compat``, width ``theta_gamma`` -> ``gaussian_sxy``;
    - ``iterations``: mean-field steps (Eq. 11).

    The paper gives no values; the defaults are ``crf_refine``'s (pydensecrf's example settings).
    """
    return {"iterations": int(iterations), "bilateral_compat": w1, "bilateral_sxy": theta_alpha,
            "bilateral_srgb": theta_beta, "gaussian_compat": w2, "gaussian_sxy": theta_gamma}


def _need_image(image: np.ndarray | None, name: str) -> np.ndarray:
    if image is None:
        raise LesiondiffError(f"fusion {name!r} runs DenseCRF and needs the image")
    return image


@FUSERS.register("densecrf")
def densecrf(
    probs: np.ndarray,
    image: np.ndarray | None = None,
    threshold: float = 0.5,
    iterations: int = 5,
    w1: float = 10.0,
    theta_alpha: float = 80.0,
    theta_beta: float = 13.0,
    w2: float = 3.0,
    theta_gamma: float = 3.0,
    **kw: Any,
) -> np.ndarray:
    """The mean of the S maps refined by DenseCRF: ``crf_refine(mean(probs), image)`` with the kernels of
    ``crf_kernels(iterations, w1, theta_alpha, theta_beta, w2, theta_gamma)``. ``[S,H,W]`` in [0,1] and the
    image (as ``crf_refine`` takes it) -> ``[H,W]`` float32 in [0,1]; ``threshold`` is unused."""
    kernels = crf_kernels(iterations, w1, theta_alpha, theta_beta, w2, theta_gamma)
    return crf_refine(mean(probs), _need_image(image, "densecrf"), **kernels)


@FUSERS.register("crf_rounds")
def crf_rounds(
    probs: np.ndarray,
    image: np.ndarray | None = None,
    threshold: float = 0.5,
    rounds: int = 3,
    per_round: int = 4,
    seed: int = 0,
    iterations: int = 5,
    w1: float = 10.0,
    theta_alpha: float = 80.0,
    theta_beta: float = 13.0,
    w2: float = 3.0,
    theta_gamma: float = 3.0,
    **kw: Any,
) -> np.ndarray:
    """DiffSeg's result optimisation (Shuai et al., arXiv 2024, Sec. 3.3): ``[S,H,W]`` in [0,1] and the image
    -> ``[H,W]`` float32 in {0, 1/K, ..., 1}, ``K = rounds``.

    In each of the K rounds, ``per_round`` of the S maps are drawn uniformly without replacement (all S when
    ``per_round >= S``); each drawn map is refined by DenseCRF with that map as its unary probability
    (Eq. 9: ``psi_u = -log P``) and the kernels of ``crf_kernels(iterations, w1, theta_alpha, theta_beta, w2,
    theta_gamma)`` (Eq. 10); the refined maps are averaged and binarised (``>= threshold``): the round's
    ``y_k``. The result is ``(1/K) sum_k y_k`` (Eq. 12). Binarise it at 0.5 for a majority of the rounds.

    The draw comes from ``numpy.random.default_rng(seed)`` and depends only on ``seed`` (and on S, K and
    ``per_round``), not on the maps or the image: the same seed draws the same subsets for every image.
    DenseCRF's mean field is deterministic, so each drawn map is refined once and reused across rounds.
    """
    p = _check_probs(probs)
    img = _need_image(image, "crf_rounds")
    if int(rounds) < 1 or int(per_round) < 1:
        raise LesiondiffError(f"crf_rounds needs rounds >= 1 and per_round >= 1, got {rounds} and {per_round}")
    kernels = crf_kernels(iterations, w1, theta_alpha, theta_beta, w2, theta_gamma)
    n = p.shape[0]
    rng = np.random.default_rng(seed)
    refined: dict[int, np.ndarray] = {}
    votes = np.zeros(p.shape[1:], dtype=np.float64)
    for _ in range(int(rounds)):
        drawn = rng.choice(n, size=min(int(per_round), n), replace=False)
        for i in drawn:
            if int(i) not in refined:
                refined[int(i)] = crf_refine(p[i], img, **kernels)
        votes += binarize(np.mean([refined[int(i)] for i in drawn], axis=0), threshold)
    return (votes / int(rounds)).astype(np.float32)


def fuse(
    probs: np.ndarray,
    method: str = "mean",
    image: np.ndarray | None = None,
    threshold: float = 0.5,
    crf: bool = False,
    crf_kwargs: dict[str, Any] | None = None,
    **kw: Any,
) -> np.ndarray:
    """Fuse ``[S,H,W]`` probabilities with the fuser named ``method`` (``kw`` go to it), then, if ``crf``,
    refine the fused map with ``crf_refine(fused, image, **crf_kwargs)``. Returns ``[H,W]`` float32 in [0,1];
    binarise it as ``>= threshold``."""
    if kw.get("return_stats"):
        raise LesiondiffError(
            "fuse returns a probability map only; call staple(..., return_stats=True) directly"
        )
    fused = FUSERS.get(method)(probs, image=image, threshold=threshold, **kw)
    if crf:
        if image is None:
            raise LesiondiffError("DenseCRF refinement needs the image")
        fused = crf_refine(fused, image, **(crf_kwargs or {}))
    return np.asarray(fused, dtype=np.float32)
