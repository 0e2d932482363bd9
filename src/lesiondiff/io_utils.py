"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

An interrupted run therefore leaves either the old file or the new one, never a truncated one. The file gets
the user's normal permissions (0666 less the umask), as a plainly created file would: ``mkstemp`` creates
the temporary file 0600, and its mode would otherwise survive the rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
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


# --- output containment and ownership (DESIGN.md, "Output safety") ----------------------------------------

UNSAFE_NAME = "a plain file name: no '/', '\\', NUL, '..' or absolute path"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file name inside an output folder (None when it can): it would name another
    folder ('/', '\\', an absolute path, '.' or '..') or cannot be created (NUL, empty)."""
    if not name:
        return "it is empty"
    if "\0" in name:
        return "it holds a NUL character"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if name in (".", ".."):
        return f"it is {name!r}"
    return None


def inside(folder: str | Path, relative: str) -> Path:
    """``folder / relative`` where each '/'-separated part of ``relative`` is a plain name (:func:`name_problem`)
    and the result, resolved (symbolic links followed), lies inside ``folder`` resolved; else a one-line
    error. Every output path a command writes is built with this."""
    parts = relative.split("/")
    for part in parts:
        problem = name_problem(part)
        if problem:
            raise LesiondiffError(f"{relative!r}: not a safe output name ({problem}; {UNSAFE_NAME})")
    folder = Path(folder)
    path = folder.joinpath(*parts)
    root = folder.resolve()
    parent = path.parent.resolve()
    if not (parent == root or parent.is_relative_to(root)):
        raise LesiondiffError(f"{path}: lies outside the output folder {folder} (a symbolic link?); refused")
    return path


OWNED = ".lesiondiff-files.jsonl"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def side_record(path: Path, writer: str) -> Path:
    """The record of one writer among several beside the record ``path`` (``.lesiondiff-done.jsonl`` ->
    ``.lesiondiff-done.rank1.jsonl``): what one process of a launch, or one ``--part``, appends to."""
    if name_problem(writer) or "." in writer:
        raise LesiondiffError(f"{writer!r}: not a writer's name (letters and digits)")
    return path.with_name(f"{path.name.removesuffix('.jsonl')}.{writer}.jsonl")


def side_records(path: Path) -> list[Path]:
    """The records of the writers beside ``path`` (:func:`side_record`), sorted by name."""
    stem = path.name.removesuffix(".jsonl")
    return sorted(path.parent.glob(f"{stem}.*.jsonl")) if path.parent.is_dir() else []


def record_lines(path: Path) -> list[str]:
    """The lines of the record ``path`` and of its writers' records (:func:`side_records`), the main record
    first: lines a kill cut short are returned too, for the reader to skip."""
    lines = []
    for one in [path, *side_records(path)]:
        try:
            lines += one.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:  # folded away between the listing and the read
            continue
    return lines


def append_line(path: Path, line: str, sync: bool = False) -> None:
    """Append one line to ``path`` with one ``write`` call on a descriptor opened ``O_APPEND``: POSIX appends each
    such write whole at the end of the file, so the lines of processes that append at once never interleave on
    a local file system (on NFS they may: there each process appends to its own record, :func:`side_record`).
    A last line a kill cut short is ended first, so that it cannot swallow this one. ``sync``: fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        cut = size > 0 and hasattr(os, "pread") and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if cut else "") + line.rstrip("\n") + "\n").encode("utf-8"))
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fold_records(path: Path) -> None:
    """Fold the writers' records beside ``path`` into it (``path`` rewritten atomically with their lines after
    its own, then theirs removed). Only for a process that alone writes the folder (it holds its lock and no
    ``--part`` runs): a kill between the two steps leaves lines twice, which readers take once."""
    sides = side_records(path)
    if not sides:
        return
    texts = []
    for one in [path, *sides]:
        text = one.read_text(encoding="utf-8", errors="replace") if one.is_file() else ""
        texts.append(text if not text or text.endswith("\n") else text + "\n")
    atomic_write_text(path, "".join(texts))
    for one in sides:
        one.unlink(missing_ok=True)


class OwnedFolder:
    """An output folder and the list of the files lesiondiff wrote in it (``.lesiondiff-files.jsonl``: one line
    per write, ``{"name", "bytes", "sha256"}``, the last line of a name wins).

    ``writer``: this process is one of several writing the folder at once (a rank of ``accelerate launch``, a
    ``predict --part``); it lists its files in its own ``.lesiondiff-files.<writer>.jsonl``, and every reader reads
    the main list and all writers' lists (:func:`record_lines`) until the one writer left folds them
    (:func:`fold_records`).

    A file lesiondiff would write is replaced only when the list says lesiondiff wrote it (:meth:`owns`; a file
    damaged since, e.g. cut short by a full disk, is still lesiondiff's and may be written again); a file of the
    same name that the user put there is never replaced: :meth:`claim` refuses it in one line. :meth:`intact`
    tells whether a file is still as written. Every name is checked with :func:`inside`.

    A name is listed twice when lesiondiff first writes it: ``{"name"}`` before the file is written (the intent),
    and ``{"name", "bytes", "sha256"}`` after. A kill between the file's rename and its full line thus leaves a
    file that is still lesiondiff's (not :meth:`intact`, so written again on resume) rather than one that looks
    like the user's and blocks the folder for good. A write that fails before its file is in place withdraws
    the intent (``{"name", "withdrawn": true}``), so that a file of that name the user puts there later stays
    the user's; only a kill in that same window leaves an intent without a file, which lesiondiff's resume then
    writes.
    """

    def __init__(self, folder: str | Path, writer: str | None = None) -> None:
        self.folder = Path(folder)
        self.list_path = self.folder / OWNED
        self.write_path = self.list_path if writer is None else side_record(self.list_path, writer)
        self.files: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        """Read the lists again (what the other writers of the folder listed since)."""
        self.files = {}
        for line in record_lines(self.list_path):
            try:
                entry = json.loads(line)
                if entry.get("withdrawn"):
                    self.files.pop(str(entry["name"]), None)
                else:
                    self.files[str(entry["name"])] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill: that file counts as not written by lesiondiff

    def path(self, name: str) -> Path:
        return inside(self.folder, name)

    def owns(self, name: str) -> bool:
        """Whether ``name`` exists and lesiondiff wrote it (it is listed), even if it was damaged since."""
        return name in self.files and (self.folder / name).is_file()

    def intact(self, name: str, verify: bool = False) -> bool:
        """Whether ``name`` exists as lesiondiff wrote it: listed, the same size (``verify``: and sha256)."""
        entry = self.files.get(name)
        path = self.folder / name
        if entry is None or not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return False
        return not verify or entry.get("sha256") in (None, file_sha256(path))

    def foreign(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that exist but that lesiondiff did not write."""
        return [n for n in names if (self.folder / n).exists() and not self.owns(n)]

    def claim(self, names: Iterable[str], hint: str = "choose another --out") -> None:
        """Refuse, in one line, when any of ``names`` would replace a file lesiondiff did not write."""
        names = list(names)
        for name in names:
            self.path(name)
        taken = self.foreign(names)
        if taken:
            listing = ", ".join(taken[:3]) + (f", ... ({len(taken)} in all)" if len(taken) > 3 else "")
            raise LesiondiffError(f"{self.folder}: would replace {listing}, which lesiondiff did not write; "
                                  f"nothing was written; {hint}")

    @contextmanager
    def writing(self, names: Iterable[str], hint: str = "choose another --out"):
        """``with folder.writing(names) as paths:`` claims ``names`` (:meth:`claim`), yields name -> path for
        writers that take a path (figures), and lists each file written once the block ends."""
        names = list(names)
        self.claim(names, hint)
        paths = {n: self.path(n) for n in names}
        new = self.intend(names)
        try:
            yield paths
        finally:  # what was claimed and written is lesiondiff's, also when the block stopped half-way
            for name, path in paths.items():
                if path.is_file():
                    self.record(name)
            self.withdraw(n for n in new if not paths[n].is_file())

    def write(self, name: str, writer: Callable[[Path], None], sha: bool = True) -> Path:
        """Write ``name`` atomically with ``writer(tmp_path)`` after :meth:`claim`, and list it."""
        self.claim([name])
        path = self.path(name)
        new = self.intend([name])
        try:
            atomic_write(path, writer)
        except BaseException:
            self.withdraw(n for n in new if not path.is_file())
            raise
        self.record(name, sha)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write(name, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_bytes(self, name: str, data: bytes) -> Path:
        return self.write(name, lambda tmp: tmp.write_bytes(data))

    def intend(self, names: Iterable[str]) -> list[str]:
        """List those of ``names`` not yet listed as lesiondiff's before they are written (class docstring), in
        one append, and return them; an intent alone is not :meth:`intact`."""
        new = [n for n in dict.fromkeys(names) if n not in self.files]
        if new:
            for name in new:
                self.files[name] = {"name": name}
            append_line(self.write_path, "\n".join(json.dumps({"name": n}) for n in new))
        return new

    def withdraw(self, names: Iterable[str]) -> None:
        """Unlist ``names``, intended but never written (their write failed), in one append."""
        gone = [n for n in dict.fromkeys(names) if self.files.pop(n, None) is not None]
        if gone:
            append_line(self.write_path, "\n".join(json.dumps({"name": n, "withdrawn": True}) for n in gone))

    def record(self, name: str, sha: bool = True) -> None:
        """List ``name`` (already written) as lesiondiff's, with its size and, with ``sha``, its sha256."""
        path = self.folder / name
        entry = {"name": name, "bytes": path.stat().st_size, **({"sha256": file_sha256(path)} if sha else {})}
        self.files[name] = entry
        append_line(self.write_path, json.dumps(entry))

    def remove(self, names: Iterable[str]) -> None:
        """Delete those of ``names`` that lesiondiff wrote; others stay. The lists are rewritten as one (only for
        the one process writing the folder, :func:`fold_records`)."""
        gone = [n for n in names if self.owns(n)]
        for name in gone:
            (self.folder / name).unlink(missing_ok=True)
            self.files.pop(name, None)
        if gone:
            atomic_write_text(self.list_path, "".join(json.dumps(e) + "\n" for e in self.files.values()))
            for side in side_records(self.list_path):
                side.unlink(missing_ok=True)
