"""Healthy-image synthesis: a lesion image with its lesion filled in from the surrounding skin or tissue.

DiffSeg (Shuai et al., arXiv preprint 2024, Sec. 4.1) trains its class-conditional diffusion model on two
classes, c1 "unhealthy" (the lesion image) and c0 "healthy"; having no healthy skin images, it uses "the
annotations corresponding to the training set as masks to remove the lesion areas in the disease images". The
paper does not say how the region is filled. Here it is filled by solving a smooth interpolation problem
inside the (slightly dilated) mask, with the pixels around it as boundary values:

- ``biharmonic`` (default): scikit-image's ``inpaint_biharmonic`` (Damelin and Hoang, 2018), i.e. the fill
  solves the biharmonic equation ``Delta^2 u = 0``, which continues both the values and the gradients of the
  surrounding skin, so the rim of the filled region is invisible. It is a maintained library routine, and at
  the model size it is fast (about 0.05 s for a 128 px image). It can overshoot slightly near strong edges,
  so the filled values are clipped to the range of the image outside the region.
- ``harmonic``: a Laplace fill ``Delta u = 0`` (5-point stencil, the image border as a reflecting boundary),
  one sparse solve for all channels (``scipy.sparse.linalg.spsolve``). It matches the surrounding values but
  not their gradients, so the fill looks flatter; it obeys the maximum principle (no overshoot) and is several
  times faster on large regions, where the biharmonic system gets slow.

Timings on one CPU thread (RGB): 128 px with a 4.6k px lesion: biharmonic 0.07 s, harmonic 0.02 s; 512 px
with a lesion covering 55% of the image (145k px): biharmonic 7.4 s, harmonic 1.5 s. Training data is filled
at the model size (``DataConfig.healthy``, data/dataset.py), where either is cheap; for large images, use
``harmonic``.

Both keep every pixel outside the dilated region bit for bit. The mask is dilated first (``dilate_px``) because
annotations are drawn tight or a little inside the lesion; the dilation keeps the lesion's dark rim from
leaking into the fill as boundary values.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from ..errors import LesiondiffError

METHODS: tuple[str, ...] = ("biharmonic", "harmonic")


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    return x * x + y * y <= radius * radius


def fill_region(mask: np.ndarray, dilate_px: int = 3) -> np.ndarray:
    """The region ``remove_lesion`` fills: ``mask [H,W]`` (nonzero = lesion) dilated by a disk of radius
    ``dilate_px`` px (0: the mask itself), as bool ``[H,W]``."""
    m = np.asarray(mask) > 0
    if dilate_px < 0:
        raise LesiondiffError(f"dilate_px must be >= 0, got {dilate_px}")
    if dilate_px == 0 or not m.any():
        return m
    return ndimage.binary_dilation(m, structure=_disk(int(dilate_px)))


def _harmonic_fill(img: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Solve ``Delta u = 0`` on ``region`` with the values of ``img [H,W,C]`` outside it as Dirichlet data and
    the image border as a Neumann (reflecting) boundary. Returns ``[n,C]``: the values of the region's
    pixels in ``np.nonzero`` order.

    Each unknown pixel ``i`` gives one row: ``deg_i u_i - sum_{j unknown} u_j = sum_{j known} f_j`` over its
    ``deg_i`` 4-neighbours inside the image. Every connected part of the region touches a known pixel (the
    region is not the whole image), so the matrix is symmetric, irreducibly diagonally dominant and
    non-singular.
    """
    h, w = region.shape
    ys, xs = np.nonzero(region)
    n = ys.size
    index = np.full((h, w), -1, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    diag = np.zeros(n)
    rhs = np.zeros((n, img.shape[2]))
    rows, cols = [], []
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = ys + dy, xs + dx
        k = np.nonzero((ny >= 0) & (ny < h) & (nx >= 0) & (nx < w))[0]
        diag[k] += 1.0
        ny, nx = ny[k], nx[k]
        unknown = region[ny, nx]
        rows.append(k[unknown])
        cols.append(index[ny[unknown], nx[unknown]])
        rhs[k[~unknown]] += img[ny[~unknown], nx[~unknown]]  # k is unique within one direction
    r, c = np.concatenate(rows), np.concatenate(cols)
    a = sparse.csc_matrix((-np.ones(r.size), (r, c)), shape=(n, n)) + sparse.diags(diag, format="csc")
    return np.asarray(spsolve(a, rhs)).reshape(n, -1)


def remove_lesion(image: np.ndarray, mask: np.ndarray, method: str = "biharmonic", dilate_px: int = 3) -> np.ndarray:
    """The image with its lesion region filled in from the surrounding skin or tissue (module docstring).

    ``image`` is ``[H,W,C]`` or ``[H,W]``, uint8 or float (any range: [0,255], [-1,1], ...); ``mask`` is
    ``[H,W]`` (bool, or nonzero = lesion). The filled region is ``fill_region(mask, dilate_px)``; it is filled by
    ``method`` (``"biharmonic"`` or ``"harmonic"``), each channel from its own surroundings. Returns an array of
    the image's shape and dtype: pixels outside the region are the input's, bit for bit; filled values are
    clipped to the per-channel range of the pixels outside the region (and rounded for integer images).
    An empty mask returns a copy of the image. Raises ``LesiondiffError`` when the region covers the whole
    image (there is nothing to fill from) or the shapes do not match.
    """
    if method not in METHODS:
        raise LesiondiffError(f"unknown lesion-removal method {method!r}; known: {', '.join(METHODS)}")
    img = np.asarray(image)
    m = np.asarray(mask)
    if img.ndim not in (2, 3) or m.shape != img.shape[:2]:
        raise LesiondiffError(f"remove_lesion needs an image [H,W] or [H,W,C] and a mask [H,W] of the same size, "
                              f"got {img.shape} and {m.shape}")
    region = fill_region(m, dilate_px)
    out = img.copy()
    if not region.any():
        return out
    if region.all():
        raise LesiondiffError("remove_lesion: the (dilated) lesion covers the whole image; no skin to fill from")
    work = img.astype(np.float64)
    if work.ndim == 2:
        work = work[..., None]
    if method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        filled = inpaint_biharmonic(work, region, channel_axis=-1)[region]
    else:
        filled = _harmonic_fill(work, region)
    known = work[~region]
    filled = np.clip(filled, known.min(axis=0), known.max(axis=0))
    if np.issubdtype(img.dtype, np.integer):
        filled = np.rint(filled)
    out[region] = filled.reshape(out[region].shape).astype(img.dtype)
    return out
