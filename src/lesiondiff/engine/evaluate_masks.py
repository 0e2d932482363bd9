"""Score a folder of mask files from any tool (nnU-Net, MedSegDiff, a human reader) against a manifest split,
with the metrics, protocol line and tables ``lesiondiff evaluate`` gives lesiondiff's own predictions.

Matching: a file belongs to the manifest row whose id is its name without the image suffix, or without a
trailing ``_mask``, ``_pred``, ``_seg`` or ``_segmentation`` as well (``case1.png``, ``case1_mask.png``,
``case1_seg.nii.gz``). Files are searched in the folder and its sub-folders. Rows of the split without a file
are listed and refused, unless ``missing="empty"`` scores them as empty predictions (stated in the protocol);
files that match no row of the split, or two files for one id, are listed.

Reading: by default a mask file must say plainly which pixels are foreground. Its values (colour: the largest
of R, G and B) are accepted when they are

- binary: 0 and 1, or 0 and 255 (0 and 65535 in a 16-bit file), or one of them alone (all background, all
  foreground); foreground is the non-zero value;
- a label map: whole numbers from 0 to :data:`LABEL_MAX` (31), e.g. 0, 1, 2 for background, benign, malignant;
  foreground is every label > 0;
- or the file is 1-bit or a palette image (its values are indices, foreground > 0), or a JPEG (its grey values
  are compression noise: foreground > 127, as for ground truth).

Any other values (a soft output saved as 8-bit grey, a uniform 128, float probabilities in a NIfTI file) are
refused with one line naming the file and the values found: read silently, they went through a rule meant for
labels, > 0 when the file's brightest pixel is below 128 and > 127 otherwise, so the cut depended on each file's
brightest pixel (a uniform grey became all foreground) and the score meant nothing. With ``threshold`` T the grey
value is read as a probability instead (value / the type's maximum >= T, e.g. a soft output saved as an 8-bit
PNG). A mask at another size than its image is resized to the image's size (nearest neighbour) and counted in the
summary.

There are no samples or probabilities, so the summary has the fused view (the given masks), lesion-image
figures, the image-level decision and pooled Dice, and no sampling rounds, uncertainty or calibration.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.dataset import mask_paths
from ..data.io import (
    FileError,
    image_size,
    is_image_file,
    mask_from_values,
    read_image,
    read_mask_values,
    read_masks,
    split_name,
)
from ..data.manifest import Manifest
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..uncertainty import SCORES
from .evaluate import failure_summary
from .outputs import owned_folder
from .scoring import metrics_csv, score

SUFFIXES = ("_mask", "_pred", "_segmentation", "_seg")
MISSING = ("error", "empty")
OUT_NAME = "lesiondiff-evaluation"  # the default output folder inside the mask folder (never read as masks)
LABEL_MAX = 31
"""The largest label of a label map read without ``threshold`` (module docstring): room for any lesion class
list, and far below the grey values of a soft mask saved as 8-bit (0..255)."""
BINARY = ((0, 1), (0, 255), (0, 65535))
"""Binary masks read without ``threshold``: the values are a subset of one of these pairs."""


def _candidate_ids(name: str) -> list[str]:
    stem = split_name(name)[0]
    return [stem] + [stem[: -len(s)] for s in SUFFIXES if stem.endswith(s) and len(stem) > len(s)]


def match_files(folder: Path, ids: list[str]) -> tuple[dict[str, Path], list[str], list[Path], dict[str, list[Path]]]:
    """(id -> file, ids without a file, files matching no id, ids with several files)."""
    wanted = set(ids)
    found: dict[str, list[Path]] = {}
    extra = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not is_image_file(path) or OUT_NAME in path.relative_to(folder).parts:
            continue
        hit = next((c for c in _candidate_ids(path.name) if c in wanted), None)
        if hit is None:
            extra.append(path)
        else:
            found.setdefault(hit, []).append(path)
    missing = [i for i in ids if i not in found]
    return {i: files[0] for i, files in found.items()}, missing, extra, {i: f for i, f in found.items() if len(f) > 1}


def unplain_values(values: np.ndarray, rule: str) -> str | None:
    """None when ``values`` (:func:`~lesiondiff.data.io.read_mask_values`) are a binary mask or a label map
    (module docstring), else what they are, for the error: "grey values 0..200 (37 distinct)"."""
    if rule in ("index", "lossy"):
        return None
    if values.dtype in (np.uint8, np.uint16):  # counting is much faster than np.unique's sort on large masks
        found = np.flatnonzero(np.bincount(values.ravel(), minlength=1))
    else:
        found = np.unique(values)
    if any(np.isin(found, pair).all() for pair in BINARY):
        return None
    if found.size and found.min() >= 0 and found.max() <= LABEL_MAX and np.all(found == np.round(found)):
        return None
    lo, hi = found.min(), found.max()  # not empty: an empty (0-pixel) file has no values to refuse
    return f"grey values {lo:g}..{hi:g} ({found.size} distinct)" if found.size > 1 else f"grey value {lo:g} everywhere"


def read_given_mask(path: Path, threshold: float | None) -> np.ndarray:
    """The mask as bool [H,W]: a binary mask or label map read as ground truth is (any other grey values are
    refused, module docstring), or (``threshold``) grey value / maximum >= threshold."""
    if threshold is None:
        values, rule = read_mask_values(path)
        found = unplain_values(values, rule)
        if found:
            raise FileError(path, f"{found}: neither a binary mask (0/1, 0/255) nor a label map (whole numbers "
                                  f"0..{LABEL_MAX}); give --threshold T to read them as probabilities "
                                  "(value / maximum >= T)")
        return mask_from_values(values, rule)
    return read_image(path).max(axis=-1) / 255.0 >= threshold  # read_image scales 16-bit and 1-bit to 0..255


def _listing(paths: list, n: int = 5) -> str:
    names = [p.name if isinstance(p, Path) else str(p) for p in paths]
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def read_scores(path: str | Path, ids: list[str]) -> list[dict]:
    """The per-image score rows of ``path`` (a CSV with ``id`` and score columns) for ``ids``, in their order; a
    file without a known score column, or without a row for an id, is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise LesiondiffError(f"{path}: no such score file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            table = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LesiondiffError(f"{path}: not a CSV file ({exc})") from None
    columns = set(table[0]) if table else set()
    known = [s for s in SCORES if s in columns]
    if "id" not in columns or not known:
        raise LesiondiffError(f"{path}: needs an id column and at least one score column named "
                              f"{', '.join(SCORES)}; it has {', '.join(sorted(columns)) or 'none'}")
    by_id = {r["id"]: r for r in table}
    absent = [i for i in ids if i not in by_id]
    if absent:
        raise LesiondiffError(f"{path}: no score for {len(absent)} images ({_listing(absent)})")
    try:
        return [{k: float(by_id[i][k]) for k in known} for i in ids]
    except ValueError as exc:
        raise LesiondiffError(f"{path}: a score that is not a number ({exc})") from None


def evaluate_masks(mask_dir: str | Path, manifest: str | Path, split: str = "test", out: str | Path | None = None,
                   threshold: float | None = None, missing: str = "error", log=print,
                   scores: str | Path | None = None) -> dict:
    """Score the mask files in ``mask_dir`` against ``split`` of ``manifest`` (module docstring); writes
    ``metrics.csv`` and ``summary.json`` to ``out`` (default: ``mask_dir``/lesiondiff-evaluation). ``scores``:
    a CSV with an ``id`` column and per-image scores named as predict writes them (``uncertainty.SCORES``:
    agreement, lesion_fraction, entropy, band_entropy), whose failure detection is added (AURC, e-AURC)."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise LesiondiffError(f"{mask_dir}: no such folder of masks")
    if missing not in MISSING:
        raise LesiondiffError(f"--missing must be one of {', '.join(MISSING)}, got {missing!r}")
    out = Path(out) if out else mask_dir / OUT_NAME
    rows = Manifest.read(manifest).select(split)
    if not rows:
        raise LesiondiffError(f"{manifest}: no rows in split {split!r}")
    files, absent, extra, doubled = match_files(mask_dir, [r["id"] for r in rows])
    if absent and missing == "error":
        raise LesiondiffError(f"{mask_dir}: no mask file for {len(absent)} of {len(rows)} {split} images "
                              f"({_listing(absent)}); add --missing empty to score them as empty predictions")
    if extra:
        log(f"note: {len(extra)} files match no {split} image and are not scored: {_listing(extra)}")
    if doubled:
        log(f"note: several files for {len(doubled)} ids, the first (sorted) is scored: "
            f"{_listing([f for fs in doubled.values() for f in fs])}")
    if absent:
        log(f"note: {len(absent)} {split} images have no mask file and are scored as empty: {_listing(absent)}")
    resized = []

    def read(row: dict) -> tuple[np.ndarray, np.ndarray, None]:
        paths = mask_paths(row)
        shape = image_size(row["image"])  # the header only: the pixels are not needed
        gt = read_masks(paths, shape=shape) if paths else np.zeros(shape, bool)
        if row["id"] not in files:
            return np.zeros(gt.shape, bool), gt, None
        pred = read_given_mask(files[row["id"]], threshold)
        if pred.shape != gt.shape:
            resized.append(row["id"])
            # np.array: a writable copy (np.asarray of a Pillow image is read-only)
            pred = np.array(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST), dtype=bool)
        return pred, gt, None

    scorer = score(rows, read, f"evaluate masks {split}", columns=lambda row: {"file": str(files.get(row["id"], ""))})
    reading = ("grey value / maximum >= threshold " + f"{threshold:g}" if threshold is not None
               else f"as binary masks or label maps (0/1, 0/255 or labels 0..{LABEL_MAX}: foreground > 0; "
                    "JPEG > 127)")
    summary = {
        **scorer.summary(split, manifest, f"masks from {mask_dir} read {reading}; {len(absent)} images without a "
                                          f"file scored as empty; {len(resized)} masks resized to their image "
                                          "(nearest)"),
        "source": "masks", "masks": str(mask_dir), "threshold": threshold, "missing_files": absent,
        "extra_files": [str(p) for p in extra], "resized": len(resized), "prediction_settings": {},
        "postprocess": "none (masks from another tool)",
    }
    if scores is not None:
        summary["failure_detection"] = failure_summary(scorer.dice(), read_scores(scores, [r["id"] for r in rows]))
    with owned_folder(out).writing(("metrics.csv", "summary.json")) as paths:
        atomic_write_text(paths["metrics.csv"], metrics_csv(scorer.rows, ["file"]))
        atomic_write_text(paths["summary.json"], json.dumps(summary, indent=2))
    return summary
