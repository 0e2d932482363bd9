"""Cut 3D volumes into 2D slice PNGs at index time, so that every other tool reads plain 2D image files.

PGDiffSeg's second data set (breast DCE-MRI) is patient volumes trained as 2D slices. A layout lists a
3D volume (a NIfTI or other file SimpleITK reads, or a folder holding one DICOM series) as one *volume
record*: its ``extra`` names the ``volume`` and has no ``slice`` (:func:`is_volume_record`).
:func:`slice_volumes` decodes each volume once and writes, under the slices folder,

- ``images/<id>_z<z>.png``: slice ``z`` as 8-bit grey. Each volume is min-max scaled over the whole
  volume to [0,255] (PGDiffSeg: "we normalize each patient's range to [0,255]"), then rounded. The
  paper's later truncation to [20,200] is not baked in: it is ``data.intensity_window=[20,200]``.
- ``masks/<id>_z<z>.png``: the label's foreground (> 0; several label files are unioned) as 0/255.

So the slices folder is itself a ``generic`` layout. Each slice record keeps its volume's label and case
(the patient: splits group by it) and adds ``extra`` ``volume`` (the source path), ``slice`` (``z``, an
index along axis 0 of SimpleITK's ``[z,y,x]`` array, the file's third axis; no reorientation) and
``patient``. Writes are atomic; re-running rewrites the same bytes, and slice PNGs of an indexed volume
that are no longer kept (e.g. after switching ``all`` to ``lesion``) are removed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ..errors import LesiondiffError
from .io import FileError, _minmax, num_slices, read_volume, write_mask_png, write_png
from .records import Record

SLICE_MODES = ("all", "lesion")
"""``all``: every slice (empty ones are negatives, e.g. for classifier-style priors); ``lesion``: only
slices whose mask has foreground."""
VOLUME_RATIOS = (0.7, 0.1, 0.2)
"""PGDiffSeg's DCE-MRI split (train, val, test), by patient."""

_SLICE_FILE = re.compile(r"^(?P<id>.+)_z\d+\.png$")


def check_slice_mode(slices: str) -> None:
    """Raise :class:`LesiondiffError` unless ``slices`` is one of :data:`SLICE_MODES`."""
    if slices not in SLICE_MODES:
        raise LesiondiffError(f"slices must be one of {', '.join(SLICE_MODES)}, got {slices!r}")


def is_volume_record(rec: Record) -> bool:
    """A record whose image is a whole 3D volume, not yet cut into slices."""
    return "volume" in rec.extra and "slice" not in rec.extra


def is_slice_record(rec: Record) -> bool:
    """A record written by :func:`slice_volumes`."""
    return "volume" in rec.extra and "slice" in rec.extra


def unsliced_reason(rec: Record) -> tuple[str, str]:
    """``(path, reason)`` for a volume record left out because no slices folder was given."""
    try:
        depth = num_slices(rec.image)
    except FileError as e:
        return e.path, e.reason
    kind = "DICOM series" if Path(rec.image).is_dir() else "3D volume"
    return rec.image, f"{kind} with {depth} slices; give a slices folder (--slices-dir) to cut it into 2D slices"


def _array3d(path: Path, image) -> np.ndarray:
    """A SimpleITK image -> ``[Z,H,W]`` array (the file's dtype); a 2D image is one slice."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise FileError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected 1")
    arr = sitk.GetArrayFromImage(image)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise FileError(path, f"is {arr.ndim}D with shape {list(arr.shape)}; expected one 3D volume per file")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise FileError(path, "has NaN or infinite values")
    return arr


def _size(image) -> str:
    return "x".join(str(s) for s in image.GetSize())


def read_pair(image: str | Path, labels: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """A volume and the union of its label volumes: ``[Z,H,W]`` (the file's dtype) and bool ``[Z,H,W]``.

    Each label must have its image's size and orientation (direction cosines): a label of another size or
    a flipped/permuted one raises :class:`FileError` naming the label file.
    """
    image = Path(image)
    vol = read_volume(image)
    arr = _array3d(image, vol)
    mask = np.zeros(arr.shape, bool)
    for path in map(Path, labels):
        lab = read_volume(path)
        if lab.GetSize() != vol.GetSize():
            raise FileError(path, f"label is {_size(lab)} but its image {image} is {_size(vol)}")
        if not np.allclose(lab.GetDirection(), vol.GetDirection(), atol=1e-3):
            raise FileError(path, f"label orientation differs from its image {image}; resample it onto the image")
        mask |= _array3d(path, lab) > 0
    return arr, mask


def to_uint8(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``array`` mapped linearly from ``[lo, hi]`` to [0,255], rounded, as uint8 (``lo == hi`` gives 0)."""
    return np.clip(np.rint(_minmax(array, lo, hi)), 0, 255).astype(np.uint8)


def slice_volume(rec: Record, slices_dir: str | Path, slices: str = "all") -> list[Record]:
    """Write one volume record's slices (see the module docstring) and return their records, in z order."""
    arr, mask = read_pair(rec.image, rec.masks)
    lo, hi = float(arr.min()), float(arr.max())  # the whole volume's range; slices are scaled one at a time
    depth = arr.shape[0]
    width = max(3, len(str(depth - 1)))
    folder = Path(slices_dir)
    out = []
    for z in range(depth):
        if slices == "lesion" and not mask[z].any():
            continue
        sid = f"{rec.id}_z{z:0{width}d}"
        image, label = folder / "images" / f"{sid}.png", folder / "masks" / f"{sid}.png"
        write_png(image, to_uint8(arr[z], lo, hi))
        write_mask_png(label, mask[z])
        extra = {**rec.extra, "volume": rec.image, "slice": str(z), "patient": rec.case}
        out.append(dataclasses.replace(rec, id=sid, image=str(image), masks=[str(label)], extra=extra))
    return out


def slice_volumes(
    records: Sequence[Record],
    slices_dir: str | Path,
    slices: str = "all",
    on_error: Literal["raise", "skip"] = "skip",
    progress: bool = False,
) -> tuple[list[Record], list[tuple[str, str]]]:
    """Replace every volume record by its slice records, writing the PNGs under ``slices_dir``.

    Other records pass unchanged (first, in their order). Returns ``(records, skipped)`` with ``skipped``
    as ``(path, reason)``. A volume that cannot be read, or whose label has another size or orientation,
    raises :class:`FileError` naming the file with ``on_error="raise"``, and is left out and listed with
    ``"skip"``; one with no foreground slice under ``slices="lesion"`` is always listed.
    """
    check_slice_mode(slices)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    folder = Path(slices_dir).expanduser().resolve()
    out = [r for r in records if not is_volume_record(r)]
    volumes = [r for r in records if is_volume_record(r)]
    skipped: list[tuple[str, str]] = []
    # disable=None: a bar on a terminal only, so logs and one-line errors stay clean
    for rec in tqdm(volumes, desc="slicing", unit="vol", disable=None if progress else True, leave=False):
        try:
            new = slice_volume(rec, folder, slices)
        except FileError as e:
            if on_error == "raise":
                raise
            skipped.append((e.path, e.reason))
            continue
        if not new:
            skipped.append((rec.image, "no slice with foreground in its label (--slices lesion keeps none)"))
        out += new
    _remove_stale(folder, {r.id for r in volumes}, {Path(r.image).name for r in out if is_slice_record(r)})
    return out, skipped


def _remove_stale(folder: Path, volume_ids: set[str], kept: set[str]) -> None:
    """Delete slice PNGs of these volumes that this run did not write (both ``images/`` and ``masks/``)."""
    for sub in ("images", "masks"):
        d = folder / sub
        if not d.is_dir():
            continue
        for path in d.iterdir():
            m = _SLICE_FILE.match(path.name)
            if m and m["id"] in volume_ids and path.name not in kept:
                path.unlink()


def split_ratios(records: Sequence[Record], default: Sequence[float]) -> tuple[float, ...]:
    """:data:`VOLUME_RATIOS` when any record is a volume slice, else ``default``."""
    return VOLUME_RATIOS if any(is_slice_record(r) for r in records) else tuple(default)
