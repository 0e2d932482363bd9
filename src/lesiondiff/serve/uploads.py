"""Uploads: the id a file's name gives (the stem ``lesiondiff predict`` would take, made safe), saving within a size
limit, and decoding with the reader predict uses, so that a corrupt, unsupported or oversized file is refused with a
clear message before a job is made."""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

from ..data.io import (
    VOLUME_SUFFIXES,
    FileError,
    image_size,
    is_image_file,
    num_slices,
    read_image,
    split_name,
)
from ..errors import LesiondiffError

MAX_UPLOAD = 25 * 2**20  # bytes
MAX_PIXELS = 40_000_000  # decoded pixels (all slices of a volume): about 0.5 GB as float32 RGB, more while read
CHUNK = 2**20
KNOWN = "PNG, JPEG, TIFF, BMP, GIF or WebP"
WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in "123456789¹²³")}


class UploadError(LesiondiffError):
    """An upload refused, with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def storable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def upload_name(filename: str | None) -> tuple[str, str]:
    """(id, suffix) of an uploaded file's name: the stem as ``split_name`` takes it for predict, in NFC, with any
    character but (Unicode) letters, digits, '.', '_' and '-' replaced by '_', so that no path can be made of it (no
    separator, drive, control or format character; no leading '.'), within 150 bytes of UTF-8 (the outputs append
    up to 12 to it, a file name takes 255) and no Windows device name; "image" when none is left. A letter the
    file system's encoding cannot store (an ASCII locale with Python's UTF-8 mode off) becomes '_' as well."""
    name = re.split(r"[\\/]", unicodedata.normalize("NFC", filename or ""))[-1]
    stem, suffix = split_name(name)
    encoding = sys.getfilesystemencoding()
    stem = "".join(c if re.fullmatch(r"[\w.-]", c) and storable(c, encoding) else "_" for c in stem)
    stem = stem.strip("._")[:100]
    while len(stem.encode()) > 150:
        stem = stem[:-1]
    head, dot, rest = stem.partition(".")
    stem = f"{head}_{dot}{rest}" if head.upper() in WINDOWS_DEVICES else stem or "image"
    return stem, suffix if re.fullmatch(r"\.[a-z0-9.]{1,10}", suffix) else ""


# an absolute path (POSIX or Windows) after the start, a space, a quote, a bracket or '=': its last part is "name"
PART = r"[^\s\\/'\"()\[\],;:]+"  # one part of a path in a message
ABSOLUTE = re.compile(rf"(?<![^\s'\"(\[=])(?:[A-Za-z]:)?[\\/](?:{PART}[\\/])*(?P<name>{PART})")


def redact(text: str, names: dict[Path, str]) -> str:
    """``text`` with every server path of ``names`` (as given and resolved, the longest first) replaced by the name
    a user knows it by, then any other absolute path by its last part: what a client is shown names no folder of
    the server's."""
    known = {form: name for path, name in names.items() for form in (str(path), str(Path(path).resolve()))}
    for form in sorted(known, key=len, reverse=True):
        text = re.sub(re.escape(form) + r"(?![\w-]|\.\w)", lambda _, name=known[form]: name, text)
    return ABSOLUTE.sub(lambda m: m["name"], text)


def too_large(limit: int) -> UploadError:
    return UploadError(f"the file is too large: uploads are limited to {limit / 2**20:.3g} MB", 413)


async def save_upload(upload, path: Path, limit: int = MAX_UPLOAD) -> None:
    """Copy an uploaded file (a Starlette ``UploadFile``) to ``path`` in chunks, refusing it past ``limit`` bytes."""
    size = 0
    with open(path, "wb") as f:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            f.write(chunk)
    if size == 0:
        raise UploadError(f"{upload.filename}: the file is empty")


def check_image(path: Path, shown: str, max_pixels: int = MAX_PIXELS) -> None:
    """Decode ``path`` as predict will (``read_image``); a failure names the file as uploaded (``shown``).

    The pixel count is read from the header first and more than ``max_pixels`` is refused undecoded: a PNG of
    one colour compresses about 1000:1, so a file far below the byte limit can decode to gigabytes. The refusal
    is 413, as for too many bytes: the image is well formed, only larger than this server takes (422 would say
    the request itself is wrong)."""
    if not is_image_file(path):
        raise UploadError(f"{shown}: unsupported file type; give an image ({KNOWN})", 415)
    try:
        h, w = image_size(path)
        slices = num_slices(path) if split_name(path.name)[1] in VOLUME_SUFFIXES else 1  # read_image reads all
        if h * w * slices > max_pixels:
            size = f"{w} x {h}" + (f" x {slices}" if slices > 1 else "")
            raise UploadError(f"{shown}: the image is {size} pixels ({h * w * slices / 1e6:.3g} megapixels); "
                              f"this server takes at most {max_pixels / 1e6:.3g} megapixels", 413)
        read_image(path)
    except FileError as exc:
        raise UploadError(f"{shown}: {redact(exc.reason, {path: shown})}") from None
    except UploadError:
        raise
    except LesiondiffError as exc:
        raise UploadError(f"{shown}: {redact(str(exc), {path: shown})}") from None
