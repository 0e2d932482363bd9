"""Uploads: the id a file's name gives (the stem ``lesiondiff predict`` would take, made safe), saving within a size
limit, and decoding with the reader predict uses, so that a corrupt or unsupported file is refused with a clear
message before a job is made."""

from __future__ import annotations

import re
from pathlib import Path

from ..data.io import FileError, is_image_file, read_image, split_name
from ..errors import LesiondiffError

MAX_UPLOAD = 25 * 2**20  # bytes
CHUNK = 2**20
KNOWN = "PNG, JPEG, TIFF, BMP, GIF or WebP"


class UploadError(LesiondiffError):
    """An upload refused, with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def upload_name(filename: str | None) -> tuple[str, str]:
    """(id, suffix) of an uploaded file's name: the stem as ``split_name`` takes it for predict, with any character
    but letters, digits, '.', '_' and '-' replaced by '_' (no path can be made of it); "image" when none is left."""
    name = re.split(r"[\\/]", filename or "")[-1]
    stem, suffix = split_name(name)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip("._")[:100] or "image"
    return stem, suffix if re.fullmatch(r"\.[a-z0-9.]{1,10}", suffix) else ""


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


def check_image(path: Path, shown: str) -> None:
    """Decode ``path`` as predict will (``read_image``); a failure names the file as uploaded (``shown``)."""
    if not is_image_file(path):
        raise UploadError(f"{shown}: unsupported file type; give an image ({KNOWN})", 415)
    try:
        read_image(path)
    except FileError as exc:
        raise UploadError(f"{shown}: {exc.reason}") from None
    except LesiondiffError as exc:
        raise UploadError(f"{shown}: {str(exc).replace(str(path), shown)}") from None
