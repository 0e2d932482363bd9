"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

An interrupted run therefore leaves either the old file or the new one, never a truncated one. The file gets
the user's normal permissions (0666 less the umask), as a plainly created file would: ``mkstemp`` creates
the temporary file 0600, and its mode would otherwise survive the rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .errors import LesiondiffError


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    An OSError while the temporary file is made, written or renamed (a full disk, a quota, an I/O error) names
    ``path``: a failed ``write`` carries no file name at all and the others name the hidden temporary file, so
    the user would read "No space left on device" without knowing where.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        hidden = str(path.parent / f".{path.name}.")  # how the temporary file's name starts
        if exc.filename is None or str(exc.filename).startswith(hidden):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once; os has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _refusal(folder: Path) -> str:
    """Why ``folder`` cannot be written: "read-only file system" when it is mounted read-only (``os.access``
    says no there whatever the permissions), else "permission denied"."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows) or the folder vanished: the permissions decide
        read_only = False
    return "read-only file system" if read_only else "permission denied"


def _check_writable_parent(path: Path, option: str) -> None:
    above = _nearest_existing(path.parent)
    if not above.is_dir():
        raise LesiondiffError(f"{option} {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise LesiondiffError(f"{option} {path}: cannot write in {above} ({_refusal(above)})")


def check_output_dir(path: str | Path, option: str) -> None:
    """An output folder that can be made or written, checked before any work starts (nothing is created);
    else a one-line error naming ``option``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LesiondiffError(f"{option} {path}: exists and is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise LesiondiffError(f"{option} {path}: cannot write in this folder ({_refusal(path)})")
        return
    _check_writable_parent(path, option)


def check_output_file(path: str | Path, option: str, overwrite: bool | None = None) -> None:
    """An output file that can be written: not a folder, its folder writable, and (``overwrite`` False) not
    there yet; else a one-line error naming ``option``."""
    path = Path(path)
    if path.is_dir():
        raise LesiondiffError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'manifest.csv'}")
    if overwrite is False and path.exists():
        raise LesiondiffError(f"{option} {path}: exists; add --overwrite to replace it")
    _check_writable_parent(path, option)
