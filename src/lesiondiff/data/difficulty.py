"""Per-image segmentation difficulty from the image and its masks alone (PalScDiff's hard-sample pool).

PalScDiff (Progressive Augmentation Learning) pre-trains on easy images, then adds the hard ones in three
groups of rising difficulty. The paper names what makes an image hard (small targets, complex shapes, low
contrast, ambiguous boundaries, inaccurate annotations) but not how it measured it; here each becomes one
score, computed at a fixed working resolution so that images of any size compare:

- :func:`difficulty_scores`: the raw scores of one image (``area``, ``contrast``, ``complexity``,
  ``boundary_ratio``, ``disagreement``, ``n_masks``);
- :func:`combine`: one difficulty in [0,1] per image, a weighted mean of percentile ranks;
- :func:`assign_groups`: group 0 (the easy pool) and hard groups ``1..n`` of equal size;
- :func:`score_manifest`: all of the above for a manifest split, as ``difficulty_*`` columns.

The stage schedule that consumes the groups lives elsewhere (``methods/palscdiff.py``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata
from skimage.measure import perimeter
from skimage.morphology import convex_hull_image, disk
from tqdm.auto import tqdm

from ..errors import LesiondiffError
from .dataset import mask_paths
from .io import read_image, read_masks
from .manifest import Manifest
from .transforms import preprocess_image, preprocess_mask

SCORES = ("area", "contrast", "complexity", "boundary_ratio", "disagreement")
"""The raw scores :func:`combine` uses, in column order."""
HARDNESS = {"area": -1.0, "contrast": -1.0, "complexity": 1.0, "boundary_ratio": 1.0, "disagreement": 1.0}
"""Sign that turns each raw score into "higher is harder": small and low-contrast lesions are hard."""
DEFAULT_WEIGHTS = {"area": 1.0, "contrast": 1.0, "complexity": 1.0, "boundary_ratio": 0.0, "disagreement": 1.0}
"""Weights of :func:`combine` unless given. ``boundary_ratio`` is measured and written but weighs 0: boundary
length / area falls with the lesion's size, so on BUSI it repeats ``area`` (rank correlation -0.98 over the
train split) and double-counts size; with weight 1 the malignant share of the four groups was 30/34/30/42 %,
with weight 0 it rises 11/41/62/60 % (BUSI train split, seed 0)."""
COLUMNS = tuple(f"difficulty_{name}" for name in (*SCORES, "score", "group"))
"""Manifest columns written by :func:`score_manifest`."""


def difficulty_scores(
    image: np.ndarray, masks: Sequence[np.ndarray], size: int = 256, band: int = 4
) -> dict[str, float]:
    """Raw difficulty scores of one image, from ``image [H,W]`` or ``[H,W,C]`` (grey levels 0..255) and its
    ``masks`` (each ``[H,W]``, nonzero = lesion; several files are several raters or several lesions).

    Everything is measured at ``size x size``: the image is turned into grey luminance (BT.601 for RGB)
    and resized with antialiased bilinear interpolation, each mask by area coverage >= 0.5
    (:func:`~lesiondiff.data.transforms.preprocess_image` / ``preprocess_mask``, as training sees them).
    ``union`` is the union of the masks, resized once (the training target).

    - ``area``: lesion pixels / ``size**2``, in [0,1]. Small is hard.
    - ``contrast``: boundary contrast ``|mean(inner) - mean(outer)| / std(inner + outer)`` of the grey
      levels, where ``inner`` is the union minus its erosion by a disc of radius ``band`` px and ``outer``
      its dilation by that disc minus the union; the std is the population std of both bands' pixels
      together. Unitless and >= 0 (independent of gain and offset): a noise-free sharp step gives
      ``1 / sqrt(p (1 - p)) >= 2``, ``p`` the inner band's share of the band pixels; blur and noise lower
      it. Low is hard. The image border does not erode the mask (a lesion cut by the border has no band
      there). The std is 0 only when every band pixel has the same grey level, so both means are equal
      too: contrast 0 then. NaN when either band is empty (a mask covering the whole image).
    - ``complexity``: ``1 - solidity`` = ``1 - area / area of the convex hull of the union``
      (``skimage.morphology.convex_hull_image``, pixel counts), in [0,1): 0 for a convex shape,
      higher for lobulated, spiculated or fragmented lesions. High is hard.
    - ``boundary_ratio``: boundary length / area, in 1/px at ``size`` (``skimage.measure.perimeter``
      of the union, 4-connected, through boundary pixel centres: a ``10x10`` square has 36).
      Grows as a lesion gets smaller (~ 1/sqrt(area)) or more ragged. High is hard.
    - ``disagreement``: ``1 - |intersection of all masks| / |union of all masks|`` (each mask resized
      alone), in [0,1]: 0 for one mask, for identical masks, or when all are empty. Several raters who
      disagree are hard. Where the extra files are further lesions (BUSI's ``_mask_1``), not raters,
      the masks are disjoint and this is 1: give it weight 0 in :func:`combine` for such data.
    - ``n_masks``: the number of masks given.

    An empty union (a lesion-free image, e.g. BUSI "normal"; or a lesion under half a pixel at ``size``)
    has ``area`` 0 and NaN ``contrast``, ``complexity`` and ``boundary_ratio``: it has no boundary to
    score. :func:`combine` gives such rows NaN and :func:`assign_groups` pools them (the easy pool by
    default).
    """
    if size < 1 or band < 1:
        raise LesiondiffError(f"difficulty needs size >= 1 and band >= 1 px, got size {size}, band {band}")
    arr = np.asarray(image)
    hw = arr.shape[:2]
    grey = (preprocess_image(arr, size, 1)[0].numpy().astype(np.float64) + 1.0) * 127.5
    for i, mask in enumerate(masks):
        if np.shape(mask)[:2] != hw:
            raise LesiondiffError(f"mask {i} is {np.shape(mask)[1]}x{np.shape(mask)[0]} but its image is "
                                  f"{hw[1]}x{hw[0]}")
    if len(masks) > 1:
        resized = [preprocess_mask(m, size)[0].numpy() > 0 for m in masks]
        union = preprocess_mask(np.logical_or.reduce([np.asarray(m) > 0 for m in masks]), size)[0].numpy() > 0
    else:
        # One mask is its own union: resizing it once halves the cost on single-rater data.
        union = preprocess_mask(masks[0] if masks else np.zeros(hw, bool), size)[0].numpy() > 0
        resized = [union]
    n_lesion = int(union.sum())
    disagreement = 0.0
    if len(resized) > 1:
        every, anyone = np.logical_and.reduce(resized).sum(), np.logical_or.reduce(resized).sum()
        disagreement = float(1.0 - every / anyone) if anyone else 0.0
    shape = dict.fromkeys(("contrast", "complexity", "boundary_ratio"), math.nan)
    if n_lesion:
        # The scores only look within ``band`` px of the lesion: cropping to there makes small lesions cheap.
        rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
        box = (slice(max(rows[0] - band - 1, 0), rows[-1] + band + 2),
               slice(max(cols[0] - band - 1, 0), cols[-1] + band + 2))
        grey, union = grey[box], union[box]
        shape = {
            "contrast": _boundary_contrast(grey, union, band),
            "complexity": float(1.0 - n_lesion / convex_hull_image(union).sum()),
            "boundary_ratio": float(perimeter(union, neighborhood=4) / n_lesion),
        }
    return {"area": n_lesion / size**2, **shape, "disagreement": disagreement, "n_masks": len(masks)}


def _boundary_contrast(grey: np.ndarray, union: np.ndarray, band: int) -> float:
    """See ``contrast`` in :func:`difficulty_scores`."""
    footprint = disk(band).astype(bool)
    # border_value=1: outside the image counts as lesion, so the border is not taken for a boundary.
    inner = union & ~ndimage.binary_erosion(union, footprint, border_value=1)
    outer = ndimage.binary_dilation(union, footprint) & ~union
    if not inner.any() or not outer.any():
        return math.nan
    a, b = grey[inner], grey[outer]
    std = float(np.concatenate([a, b]).std())
    return abs(float(a.mean()) - float(b.mean())) / std if std > 0 else 0.0


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    unknown = [k for k in weights if k not in HARDNESS]
    if unknown:
        known = ", ".join(SCORES)
        raise LesiondiffError(f"unknown difficulty score {unknown[0]!r} in weights; known: {known}")
    out = {k: float(weights.get(k, 0.0)) for k in SCORES}
    if any(not w >= 0 for w in out.values()) or not sum(out.values()) > 0:
        raise LesiondiffError(f"difficulty weights must be >= 0 with a positive sum, got {dict(weights)}")
    return out


def combine(scores: Sequence[Mapping[str, float]], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Combined difficulty ``[N]`` in [0,1] (higher = harder) of the rows ``scores`` (from
    :func:`difficulty_scores`), relative to each other.

    Each weighted score is signed by :data:`HARDNESS` (``-area, -contrast, complexity, boundary_ratio,
    disagreement``) and turned into a percentile rank over the rows ``(rank - 1) / (n - 1)``, ties given
    their average rank (0.5 for a single row); the result is the weighted mean of these ranks. Ranks make
    the scores' units and outliers irrelevant. ``weights`` default to ``DEFAULT_WEIGHTS``; a score
    left out of ``weights`` gets 0. ``disagreement`` is 0 for every single-mask row, and those ties share
    one rank, so on single-rater data it shifts every row by the same amount and changes no order.

    A row with NaN in a score of positive weight (an empty mask, see :func:`difficulty_scores`) gets NaN
    and is left out of the others' ranks.
    """
    w = _check_weights(weights)
    used = [k for k in SCORES if w[k] > 0]
    values = np.array([[float(s[k]) for k in used] for s in scores], dtype=np.float64)
    values = values.reshape(len(scores), len(used))
    out = np.full(len(scores), np.nan)
    valid = ~np.isnan(values).any(axis=1)
    n = int(valid.sum())
    if n == 0:
        return out
    total = np.zeros(n)
    for j, k in enumerate(used):
        ranks = rankdata(HARDNESS[k] * values[valid, j], method="average")
        total += w[k] * ((ranks - 1) / (n - 1) if n > 1 else np.full(n, 0.5))
    out[valid] = total / sum(w[k] for k in used)
    return out


def assign_groups(
    combined: np.ndarray, easy_fraction: float = 0.5, n_hard_groups: int = 3, empty_group: int = 0
) -> np.ndarray:
    """Curriculum group ``[N]`` int of each row of ``combined`` (from :func:`combine`).

    Among the rows with a score, the ``round(easy_fraction * n)`` lowest form group 0 (the easy pool) and
    the rest are split by rank into ``n_hard_groups`` groups ``1..n_hard_groups`` of rising difficulty, of
    equal count (``numpy.array_split``: when the count does not divide, the easier groups get one more).
    Equal scores keep the input order (stable sort), so the result is deterministic.

    Rows with a NaN score (empty masks) go to ``empty_group``, by default the easy pool: they have no
    boundary to get wrong, and they teach "no lesion here" from the first stage on. They do not count
    towards ``easy_fraction``.
    """
    combined = np.asarray(combined, dtype=np.float64).reshape(-1)
    if not 0.0 <= easy_fraction <= 1.0:
        raise LesiondiffError(f"easy fraction must lie in [0, 1], got {easy_fraction}")
    if n_hard_groups < 1:
        raise LesiondiffError(f"need at least one hard group, got {n_hard_groups}")
    if not 0 <= empty_group <= n_hard_groups:
        raise LesiondiffError(f"empty_group must be 0..{n_hard_groups}, got {empty_group}")
    groups = np.full(combined.shape, empty_group, dtype=np.int64)
    scored = np.flatnonzero(~np.isnan(combined))
    order = scored[np.argsort(combined[scored], kind="stable")]
    n_easy = math.floor(easy_fraction * len(order) + 0.5)
    groups[order[:n_easy]] = 0
    for g, part in enumerate(np.array_split(order[n_easy:], n_hard_groups), start=1):
        groups[part] = g
    return groups


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def score_manifest(
    manifest: Manifest,
    split: str | None = "train",
    size: int = 256,
    band: int = 4,
    easy_fraction: float = 0.5,
    weights: Mapping[str, float] | None = None,
    progress: bool = True,
    n_hard_groups: int = 3,
) -> tuple[Manifest, dict[str, Any]]:
    """Score the rows of ``split`` (None: every row) and group them; returns ``(new manifest, summary)``.

    Each row's image and mask files are read (``read_image``; ``read_masks`` per file, so a mask whose
    size differs from its image raises an error naming it) and scored with :func:`difficulty_scores`,
    combined over the scored rows with :func:`combine`, and grouped with :func:`assign_groups` (empty
    masks into group 0). The new manifest has every row of ``manifest``; scored rows get the string
    columns :data:`COLUMNS` (``difficulty_area, difficulty_contrast, difficulty_complexity,
    difficulty_boundary_ratio, difficulty_disagreement, difficulty_score`` with 6 significant digits,
    ``difficulty_group`` an integer); a NaN is an empty cell, which an in-memory row holds as no key, as
    :class:`Manifest` does for every empty extra column. Other rows get none of these columns, so
    re-scoring a manifest replaces all earlier values.

    The summary (JSON-ready) holds the settings, and per group: its row count, empty-mask count, score
    range, the mean of each raw score over its non-empty rows (None when there are none) and its
    label counts. :func:`format_summary` prints it.
    """
    w = _check_weights(weights)
    rows = manifest.rows()
    picked = [i for i, r in enumerate(rows) if split is None or r["split"] == split]
    if not picked:
        present = sorted({r["split"] or "(none)" for r in rows})
        raise LesiondiffError(f"no rows with split {split!r} to score (splits present: {', '.join(present)})")
    scores = []
    for i in tqdm(picked, desc="difficulty", unit="img", leave=False, disable=not progress):
        row = rows[i]
        raw = read_image(row["image"])
        masks = [read_masks([p], shape=raw.shape[:2]) for p in mask_paths(row)]
        scores.append(difficulty_scores(raw, masks, size=size, band=band))
    combined = combine(scores, w)
    groups = assign_groups(combined, easy_fraction, n_hard_groups)
    for row in rows:
        for column in COLUMNS:
            row.pop(column, None)
    for i, s, c, g in zip(picked, scores, combined, groups):
        rows[i].update({f"difficulty_{k}": _fmt(s[k]) for k in SCORES})
        rows[i].update(difficulty_score=_fmt(c), difficulty_group=str(int(g)))
    summary: dict[str, Any] = {
        "split": split, "size": size, "band": band, "easy_fraction": easy_fraction,
        "n_hard_groups": n_hard_groups, "weights": w, "empty_group": 0,
        "n_scored": len(picked), "n_empty": int(np.isnan(combined).sum()), "groups": [],
    }
    labels = [rows[i]["label"] for i in picked]
    for g in range(n_hard_groups + 1):
        members = np.flatnonzero(groups == g)
        have = [j for j in members if not np.isnan(combined[j])]
        summary["groups"].append({
            "group": g,
            "n": len(members),
            "n_empty": len(members) - len(have),
            "score_min": float(combined[have].min()) if have else None,
            "score_max": float(combined[have].max()) if have else None,
            "mean": {k: _nanmean([scores[j][k] for j in have]) for k in SCORES},
            "labels": dict(sorted(Counter(labels[j] for j in members).items())),
        })
    return Manifest(rows), summary


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def format_summary(summary: Mapping[str, Any]) -> str:
    """A table of the groups of :func:`score_manifest`'s summary (count, empty masks, score range, mean
    raw scores, labels) and one protocol line with the settings."""
    def num(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = (f"{'group':<8}{'n':>5}{'empty':>6}  {'score':<11}{'area':>7}{'contrast':>9}{'complex':>8}"
            f"{'bound/px':>9}{'disagr':>7}  labels")
    lines = [head]
    for g in summary["groups"]:
        name = f"{g['group']} {'easy' if g['group'] == 0 else 'hard'}"
        rng = "-" if g["score_min"] is None else f"{g['score_min']:.2f}-{g['score_max']:.2f}"
        m = g["mean"]
        labels = ", ".join(f"{k or '(none)'} {v}" for k, v in g["labels"].items()) or "-"
        lines.append(f"{name:<8}{g['n']:>5}{g['n_empty']:>6}  {rng:<11}{num(m['area'], '.3f'):>7}"
                     f"{num(m['contrast'], '.2f'):>9}{num(m['complexity'], '.3f'):>8}"
                     f"{num(m['boundary_ratio'], '.3f'):>9}{num(m['disagreement'], '.2f'):>7}  {labels}")
    weights = ", ".join(f"{k} {v:g}" for k, v in summary["weights"].items())
    split = "all rows" if summary["split"] is None else f"split {summary['split']}"
    lines.append(
        f"protocol: {split} ({summary['n_scored']} rows), {summary['size']} px, band {summary['band']} px; "
        f"score = weighted mean of percentile ranks ({weights}); easy pool = lowest "
        f"{summary['easy_fraction']:g} of the {summary['n_scored'] - summary['n_empty']} rows with a lesion, "
        f"then {summary['n_hard_groups']} hard groups of equal count; {summary['n_empty']} empty-mask rows "
        f"pooled into group {summary['empty_group']}")
    return "\n".join(lines)
