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
- ``staple``: STAPLE (Warfield et al., IEEE TMI 2004) through SimpleITK's ``STAPLEImageFilter`` on the
  binarised samples, returning the posterior foreground probability of each pixel (UniSegDiff fuses its 20
  samples this way). Unlike a mean, it weights each sample by its estimated sensitivity and specificity.

``crf_refine`` applies a fully connected CRF (Kraehenbuehl and Koltun, 2011; pydensecrf2) to a probability map
and its image, as DiffSeg does; ``fuse`` chains a fuser and, optionally, the CRF.
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


@FUSERS.register("staple")
def staple(
    probs: np.ndarray,
    image: np.ndarray | None = None,
    threshold: float = 0.5,
    max_iterations: int = 20,
    confidence_weight: float = 1.0,
    return_stats: bool = False,
    **kw: Any,
) -> np.ndarray | tuple[np.ndarray, StapleStats]:
    """STAPLE posterior foreground probability of binarised samples: ``[S,H,W]`` -> ``[H,W]`` float32.

    The samples are binarised at ``threshold`` (``>=``) and passed to SimpleITK's ``STAPLEImageFilter``
    (foreground value 1) with ``SetMaximumIterations(max_iterations)`` always set, since EM on disagreeing
    samples may otherwise never stop. ``confidence_weight`` scales ITK's prior foreground probability (1.0 =
    ITK's default). ITK chooses its own initial sensitivity and specificity; UniSegDiff's initial values (0.9
    and 0.1, prior 0.5) cannot be set through SimpleITK, so only its 20 iterations are reproduced.

    Degenerate inputs, where ITK's estimates are 0/0 and its output NaN: when all binarised samples are
    identical (all empty included), the result is that common mask as 0/1, with sensitivity and specificity 1
    and 0 iterations; any remaining NaN pixel takes the samples' vote fraction.

    With ``return_stats=True`` returns ``(probability, StapleStats)``.
    """
    import SimpleITK as sitk

    masks = binarize(_check_probs(probs), threshold)
    n = masks.shape[0]
    if (masks == masks[0]).all():
        stats = StapleStats(np.ones(n), np.ones(n), 0)
        fused = masks[0].astype(np.float32)
    else:
        f = sitk.STAPLEImageFilter()
        f.SetForegroundValue(1.0)
        f.SetMaximumIterations(int(max_iterations))
        f.SetConfidenceWeight(float(confidence_weight))
        out = f.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks])
        fused = sitk.GetArrayFromImage(out).astype(np.float32)
        bad = ~np.isfinite(fused)
        if bad.any():
            fused[bad] = masks.mean(axis=0, dtype=np.float32)[bad]
        fused = np.clip(fused, 0.0, 1.0)
        stats = StapleStats(
            np.asarray(f.GetSensitivity(), dtype=np.float64),
            np.asarray(f.GetSpecificity(), dtype=np.float64),
            int(f.GetElapsedIterations()),
        )
    return (fused, stats) if return_stats else fused


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
        if not np.isfinite(img).all() or img.min() < 0.0 or img.max() > 255.0:
            raise LesiondiffError(
                "DenseCRF needs image intensities in [0,255] (uint8, or float on that scale)"
            )
        img = np.rint(img).astype(np.uint8)
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
