"""Read any 2D image or binary mask robustly; write PNGs atomically.

Images come back as float32 ``[H,W,C]`` in ``[0,255]`` with ``C`` 1 (grey) or 3 (RGB); masks as bool
``[H,W]``. Files are decoded with Pillow (PNG, JPEG, TIFF, GIF, BMP, WebP, ...) except medical volumes
(NIfTI ``.nii``/``.nii.gz``, DICOM ``.dcm``, MetaImage ``.mha``/``.mhd``, NRRD ``.nrrd``), which go through
SimpleITK. Every failure (missing file, truncated or corrupt data, unsupported format, a volume without a
slice index) raises :class:`LesiondiffError` with one line that starts with the file's path.

Whole volumes (a volume file, or a folder holding one DICOM series) are read by :func:`read_volume`;
``data/volumes.py`` cuts them into 2D slice PNGs at index time. Predict's probability files (``.npz``) are read
by :func:`read_npz`, with the same one-line errors.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import LesiondiffError
from ..io_utils import atomic_write

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".mha", ".mhd", ".nrrd")
"""Suffixes read with SimpleITK; all others go through Pillow."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", *VOLUME_SUFFIXES)
"""Suffixes that layouts treat as image or mask files."""

_LOSSY_FORMATS = {"JPEG", "MPO"}
_EXIF_ORIENTATION = 0x0112


class FileError(LesiondiffError):
    """A :class:`LesiondiffError` about one file; ``path`` and ``reason`` are kept apart for reports."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = _one_line(reason)
        super().__init__(f"{self.path}: {self.reason}")


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def split_name(name: str) -> tuple[str, str]:
    """``"case_0000.nii.gz" -> ("case_0000", ".nii.gz")``; the suffix is lower-cased."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext.lower()}") if dot and stem else (name, "")


def is_image_file(path: str | Path) -> bool:
    """True for a non-hidden file name with one of :data:`IMAGE_SUFFIXES` (the file is not opened)."""
    name = Path(path).name
    return not name.startswith(".") and split_name(name)[1] in IMAGE_SUFFIXES


def _is_volume(path: Path) -> bool:
    return split_name(path.name)[1] in VOLUME_SUFFIXES


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileError(path, "no such file")
    if path.is_dir():
        raise FileError(path, "is a folder, not an image file")


# --- Pillow -------------------------------------------------------------------------------------------


def _open_pil(path: Path, slice_index: int | None) -> Image.Image:
    """Open, select the frame, decode fully (so truncation is caught here) and apply EXIF orientation."""
    _check_file(path)
    try:
        img = Image.open(path)
    except Image.UnidentifiedImageError:
        raise FileError(path, "unsupported or unrecognised image format") from None
    except Exception as e:  # Pillow raises many types for bad headers; none may escape
        raise FileError(path, f"cannot open image ({e})") from None
    with img:  # closes the file of multi-frame images, which load() leaves open
        frames = getattr(img, "n_frames", 1)
        if slice_index is not None and not 0 <= slice_index < frames:
            raise FileError(path, f"no slice {slice_index} (the file has {frames})")
        try:
            if slice_index:
                img.seek(slice_index)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place keeps ``img.format`` (a copy drops it)
        except Exception as e:
            raise FileError(path, f"corrupt or truncated image ({e})") from None
    return img


def _pil_image_array(img: Image.Image) -> np.ndarray:
    """Pillow image -> float32 [H,W,1|3] in [0,255] (channels not yet collapsed)."""
    mode = img.mode
    if mode == "1":
        arr = np.asarray(img, dtype=np.float32) * 255.0
    elif mode in ("L", "LA"):
        arr = np.asarray(img.getchannel("L") if mode == "LA" else img, dtype=np.float32)
    elif mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        # 16-bit data use the full 0..65535 range: 65535 / 257 == 255 keeps the mapping exact and linear.
        arr = np.asarray(img).astype(np.float32) / 257.0
    elif mode in ("I", "F"):
        arr = _minmax(np.asarray(img))
    elif mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(img, dtype=np.float32)[..., :3]
    else:  # P, PA, CMYK, YCbCr, LAB, HSV, I;16 variants Pillow cannot convert directly, ...
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return arr[..., None] if arr.ndim == 2 else arr


def _pil_mask_values(img: Image.Image) -> tuple[np.ndarray, str]:
    """Pillow image -> ([H,W] values, rule); see :func:`read_mask_values`."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8), "index"
    if mode in ("P", "PA"):
        return np.asarray(img.getchannel("P") if mode == "PA" else img), "index"
    if mode.startswith("I") or mode == "F":
        return np.asarray(img), "number"
    if mode in ("L", "LA"):
        arr = np.asarray(img.getchannel("L") if mode == "LA" else img)
    elif mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(img)[..., :3].max(axis=2)
    else:
        arr = np.asarray(img.convert("RGB")).max(axis=2)
    return arr, "lossy" if img.format in _LOSSY_FORMATS else "grey"


# --- SimpleITK ----------------------------------------------------------------------------------------


def _sitk_reader(path: Path):
    import SimpleITK as sitk

    _check_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    return reader


def _volume_size(path: Path) -> tuple[int, ...]:
    """(X, Y[, Z]) from the header only."""
    reader = _sitk_reader(path)
    try:
        reader.ReadImageInformation()
    except Exception as e:
        raise FileError(path, f"cannot read image header ({_sitk_reason(e)})") from None
    size = tuple(int(s) for s in reader.GetSize())
    return size[:2] if len(size) > 2 and all(s == 1 for s in size[2:]) else size


def _sitk_reason(e: Exception) -> str:
    """SimpleITK's messages open with a C++ source location; keep the part after ``ERROR:``."""
    text = _one_line(str(e))
    return text.split("ERROR:", 1)[-1].strip() or type(e).__name__


def _read_volume(path: Path, slice_index: int | None) -> tuple[np.ndarray, float, float]:
    """A 2D slice as [H,W] or [H,W,C] (the file's dtype), plus the whole file's min and max."""
    import SimpleITK as sitk

    volume = read_volume(path)
    arr = sitk.GetArrayFromImage(volume)
    vector = volume.GetNumberOfComponentsPerPixel() > 1
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    spatial = arr.shape[:-1] if vector else arr.shape
    # Singleton trailing axes (e.g. a 2D image stored as X*Y*1) are 2D.
    while len(spatial) > 2 and spatial[0] == 1:
        arr, spatial = arr[0], spatial[1:]
    if len(spatial) == 3:
        depth = spatial[0]
        if slice_index is None:
            raise FileError(path, f"is a 3D volume with {depth} slices; give a slice index (0..{depth - 1})")
        if not 0 <= slice_index < depth:
            raise FileError(path, f"no slice {slice_index} (the volume has {depth})")
        arr = arr[slice_index]
    elif len(spatial) != 2:
        raise FileError(path, f"has {len(spatial)} spatial dimensions; only 2D images and 3D volumes are read")
    elif slice_index not in (None, 0):
        raise FileError(path, f"no slice {slice_index} (the image is 2D)")
    if vector and arr.shape[-1] not in (3, 4):
        raise FileError(path, f"has {arr.shape[-1]} components per pixel; expected 1, 3 or 4")
    return arr, lo, hi


def _minmax(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.float32)


# --- public API ---------------------------------------------------------------------------------------


def _collapse_grey(arr: np.ndarray) -> np.ndarray:
    if arr.shape[2] == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        return arr[..., :1]
    return arr


def read_image(path: str | Path, slice_index: int | None = None) -> np.ndarray:
    """Read an image as float32 ``[H,W,C]`` in ``[0,255]``, ``C`` 1 or 3.

    - Grey ``L`` as is; 1-bit as 0/255; ``LA`` drops alpha.
    - 16-bit (``I;16*`` modes, and 16-bit PNGs Pillow opens as ``I``): divided by 257, so 65535 -> 255.
      Other integer or float data (32-bit ``I``/``F`` TIFFs, medical volumes) are min-max scaled to
      ``[0,255]`` (a constant image becomes all zeros); for a volume the min and max are the whole file's,
      so slices of one volume share a scale.
    - RGB as is; RGBA drops alpha (no compositing); palette, CMYK, YCbCr and the rest are converted to RGB.
    - EXIF orientation is applied (``ImageOps.exif_transpose``), so shapes are as a viewer shows them.
    - An RGB image whose three channels are identical everywhere is returned with ``C=1``.
    - ``slice_index`` picks a slice of a 3D volume (required for volumes, which otherwise raise) or a
      frame of a multi-page TIFF/GIF (first frame by default). NIfTI/DICOM slices are array ``[z]`` of
      SimpleITK's ``[z,y,x]`` order, rows are ``y``; no reorientation is done.
    """
    path = Path(path)
    if _is_volume(path):
        arr, lo, hi = _read_volume(path, slice_index)
        out = _minmax(arr[..., :3] if arr.ndim == 3 else arr, lo, hi)
    else:
        out = _pil_image_array(_open_pil(path, slice_index))
    return _collapse_grey(out[..., None] if out.ndim == 2 else out)


def read_mask(path: str | Path, slice_index: int | None = None) -> np.ndarray:
    """Read a binary mask as bool ``[H,W]``.

    - Palette (``P``) masks: palette index > 0 (the colours are ignored).
    - 1-bit: nonzero. 16-bit, 32-bit and float masks, and NIfTI/DICOM label maps: > 0.
    - Grey ``L``/``LA`` and colour masks (max over R, G, B; alpha ignored): > 127. JPEG masks always use
      > 127, which removes compression noise. A lossless 8-bit mask whose values are all below 128 is a
      label map (0/1 or class indices), so > 0 is used for it; > 127 would make it empty.
    - EXIF orientation is applied, as for images.
    """
    return mask_from_values(*read_mask_values(path, slice_index))


def read_mask_values(path: str | Path, slice_index: int | None = None) -> tuple[np.ndarray, str]:
    """The numbers a mask file holds, ``[H,W]`` in the file's type (colour: the largest of R, G and B; alpha
    dropped; EXIF orientation applied), and the rule by which :func:`read_mask` makes them a mask
    (:func:`mask_from_values`): ``"index"`` (1-bit and palette files: > 0, whatever the numbers), ``"lossy"``
    (JPEG: > 127), ``"grey"`` (lossless 8-bit: > 0 when every value is below 128, else > 127) or ``"number"``
    (16-bit, 32-bit and float files, volumes: > 0). For callers that judge the values first (``evaluate
    --masks`` refuses grey values that are neither a binary mask nor a label map)."""
    path = Path(path)
    if _is_volume(path):
        arr = _read_volume(path, slice_index)[0]
        return (arr.max(axis=-1) if arr.ndim == 3 else arr), "number"
    return _pil_mask_values(_open_pil(path, slice_index))


def mask_from_values(values: np.ndarray, rule: str) -> np.ndarray:
    """bool ``[H,W]`` from :func:`read_mask_values`'s values and rule (the rules of :func:`read_mask`)."""
    if rule == "lossy":
        return values > 127
    if rule == "grey" and values.max(initial=0) >= 128:
        return values > 127
    return values > 0  # "index", "number", and a lossless 8-bit label map (all below 128)


def read_masks(
    paths: Sequence[str | Path], shape: tuple[int, int] | None = None, slice_index: int | None = None
) -> np.ndarray:
    """Union of several mask files as bool ``[H,W]``.

    ``shape`` ``(H, W)`` is the image's size: each mask must match it, else a :class:`LesiondiffError`
    ``"<mask>: mask is WxH but its image is WxH"``. With no paths, ``shape`` is required and an all-False
    mask is returned.
    """
    if not paths:
        if shape is None:
            raise ValueError("read_masks needs a shape when there are no mask paths")
        return np.zeros(tuple(shape), bool)
    union: np.ndarray | None = None
    first = ""
    for p in paths:
        mask = read_mask(p, slice_index)
        if shape is not None and mask.shape != tuple(shape):
            raise FileError(p, f"mask is {_wxh(mask.shape)} but its image is {_wxh(shape)}")
        if union is None:
            union, first = mask.copy(), str(p)
        elif mask.shape != union.shape:
            raise FileError(p, f"mask is {_wxh(mask.shape)} but {first} is {_wxh(union.shape)}")
        else:
            union |= mask
    assert union is not None
    return union


def _wxh(shape: Iterable[int]) -> str:
    h, w = tuple(shape)[:2]
    return f"{w}x{h}"


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` from the header only (after EXIF orientation), without decoding the pixels."""
    path = Path(path)
    if _is_volume(path):
        size = _volume_size(path)
        return size[1], size[0]
    _check_file(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            # Pillow's PNG getexif() decodes the whole image to look for a late eXIf chunk: only ask
            # when the header already held one.
            cheap = img.format != "PNG" or "exif" in img.info
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if cheap else 1
    except Image.UnidentifiedImageError:
        raise FileError(path, "unsupported or unrecognised image format") from None
    except Exception as e:
        raise FileError(path, f"cannot read image header ({e})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def num_slices(path: str | Path) -> int:
    """Slices of a 3D volume (or of a DICOM series folder: its file count), or frames of a multi-page
    TIFF/GIF; 1 for a 2D image (header only)."""
    path = Path(path)
    if path.is_dir():
        return len(dicom_series_files(path))
    if _is_volume(path):
        size = _volume_size(path)
        return size[2] if len(size) > 2 else 1
    _check_file(path)
    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    except Exception as e:
        raise FileError(path, f"cannot read image header ({_one_line(str(e))})") from None


def dicom_series_files(folder: str | Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order (GDCM sorts them by position along
    the slice normal). A folder with no series, or with several, raises :class:`FileError`."""
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise FileError(folder, "no such folder" if not folder.exists() else "not a folder")
    # ITK prints a multi-line warning for a folder without a series; the FileError below says it in one line
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except Exception as e:
        raise FileError(folder, f"cannot scan for DICOM files ({_sitk_reason(e)})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if not ids:
        raise FileError(folder, "no DICOM series in the folder")
    if len(ids) > 1:
        raise FileError(folder, f"holds {len(ids)} DICOM series; expected one per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def read_volume(path: str | Path):
    """A whole image as a ``SimpleITK.Image`` (any dimension, the file's pixel type and geometry).

    ``path`` is a file SimpleITK reads (NIfTI, MetaImage, NRRD, one DICOM file, ...) or a folder holding
    one DICOM series (read with ``ImageSeriesReader``; rescale slope/intercept applied). Failures raise
    :class:`FileError` naming the file or folder.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(dicom_series_files(path))
    else:
        reader = _sitk_reader(path)
    try:
        return reader.Execute()
    except Exception as e:
        raise FileError(path, f"corrupt or unreadable file ({_sitk_reason(e)})") from None


def read_npz(path: str | Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` file (predict's ``<id>_probs.npz``), read in full while the file is open.

    A missing, empty, truncated or corrupt file, a plain ``.npy`` array, or a file without one of ``keys``
    raises :class:`FileError` ``"PATH: not a readable probability file (REASON); predict it again"``: numpy and
    zipfile raise EOFError, BadZipFile, KeyError, zlib and pickle errors for these, which were tracebacks.
    """
    path = Path(path)

    def refused(reason: str) -> FileError:
        return FileError(path, f"not a readable probability file ({reason}); predict it again")

    if not path.is_file():
        raise refused("no such file" if not path.exists() else "not a file")
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as e:
        raise refused(e.strerror or type(e).__name__) from None
    if not head:
        raise refused("empty file, 0 bytes")
    if head.startswith(b"\x93NUMPY"):
        raise refused("a single .npy array, not an .npz archive of arrays")
    if not head.startswith(b"PK"):  # np.load would guess a pickle and say so
        raise refused("not a zip archive, as an .npz is")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy and zipfile raise many types for a bad file; none may escape
        raise refused(f"{type(e).__name__}: {_one_line(str(e))}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise refused("not an .npz archive of arrays")
    with npz:
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise refused(f"no {', '.join(repr(k) for k in missing)} array; it has {', '.join(npz.files) or 'none'}")
        try:
            return {k: npz[k] for k in keys}
        except Exception as e:  # a corrupt member: CRC, zlib, a bad array header, truncated data
            raise refused(f"{type(e).__name__}: {_one_line(str(e))}") from None


def encode_png(array: np.ndarray) -> bytes:
    """uint8 ``[H,W]`` (grey) or ``[H,W,3]`` (RGB) as the bytes of a PNG file."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"encode_png expects [H,W] or [H,W,3], got {list(array.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A bool ``[H,W]`` mask as 8-bit grey with values 0 and 255 (how masks are written)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_image expects [H,W], got {list(mask.shape)}")
    return np.where(mask.astype(bool), 255, 0).astype(np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 ``[H,W]`` (grey) or ``[H,W,3]`` (RGB) as PNG, atomically."""
    data = encode_png(array)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool ``[H,W]`` mask as an 8-bit grey PNG with values 0 and 255, atomically."""
    write_png(path, mask_image(mask))
