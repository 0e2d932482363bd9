"""An output folder of ``predict``: one run's predictions, made with one set of settings, by one predict at a time
(one process, or the processes of one launch or one job of parts), that never replaces a file lesiondiff did not
write.

- **Lock**: ``.lesiondiff.lock`` holds the writer's PID and host; it is created exclusively (written whole, then
  hard-linked into place; ``O_EXCL`` where there are no hard links), so of two processes that start together one
  gets the folder and the other a one-line error. A lock left by a process
  that no longer runs (on this host) is taken over with a notice. ``train`` takes the same lock on its run folder.
- **Ownership**: every file is written through :class:`~lesiondiff.io_utils.OwnedFolder`, which lists what
  lesiondiff wrote (``.lesiondiff-files.jsonl``: name, bytes, sha256). Before anything is written, the names a
  ``predict`` would write are checked: one that exists and is not on that list (a ground-truth mask beside its
  image, ``benign (2)_mask.png``, in a folder predicted into itself) is refused in one line, and nothing is
  written. ``--overwrite`` removes only files on the list.
- **Settings record**: ``.lesiondiff-predict.json`` records what made the folder's predictions (the run, the
  checkpoint file's size and modification time, every sampling setting), every image id predicted here with
  its input path, and the splits given. A ``predict`` with other settings or another run is refused unless
  ``overwrite``; then the old predictions are removed first, so the folder never mixes two runs. A ``predict``
  with the same settings adds its images: predicting another split, or more images, into the folder keeps the
  earlier ones, and predictions.csv lists them all. An id predicted before from another input file is refused
  (``overwrite``: predicted again from the new file).
- **Resume**: ``.lesiondiff-done.jsonl`` gets one line per finished image, appended after its files were
  written (atomically). An image counts as done only while each of its files is as lesiondiff wrote it (its
  size; with ``verify`` its sha256 too); a damaged or missing file is predicted again, with a note. A
  truncated last line (a kill while appending) is ignored.
- **Several writers** (``engine/predict.py``: the processes of one ``accelerate launch``, or ``--part I/N``
  commands): each appends its done lines and its files list to its own ``.lesiondiff-done.<writer>.jsonl`` and
  ``.lesiondiff-files.<writer>.jsonl`` (``io_utils.side_record``), so no file has two appending processes, on a
  local disk or on NFS, where ``O_APPEND`` from two hosts is not atomic. Readers read the main record and every
  writer's; the one writer left (a single predict or rank 0 of a launch, under the folder's lock; the merge of
  parts) folds them into the main record (:func:`fold_writers`). A launch's rank 0 holds the folder's lock. A
  part holds ``.lesiondiff-part-I-of-N.lock`` while it predicts and the folder's lock only while it checks the
  folder and records itself (``brief``: a part or merge waiting for the folder's lock waits for such a holder,
  :data:`BRIEF_WAIT_S`, instead of being refused); the parts of one job share ``.lesiondiff-parts.json`` (the
  number of parts, the ordered inputs, what predict.json will say). A predict that is not one of the parts is
  refused while a part runs, and a part is refused while another predict writes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

from ..errors import LesiondiffError
from ..io_utils import (
    OWNED,
    OwnedFolder,
    append_line,
    atomic_write_text,
    fold_records,
    name_problem,
    record_lines,
    side_record,
    side_records,
)

LOCK = ".lesiondiff.lock"
RECORD = ".lesiondiff-predict.json"
DONE = ".lesiondiff-done.jsonl"
JOB = ".lesiondiff-parts.json"  # the job of ``predict --part I/N`` commands sharing the folder
PART_LOCK = re.compile(r"^\.lesiondiff-part-(\d+)-of-(\d+)\.lock$")
BRIEF_WAIT_S = 600.0  # how long a lock waits for a holder that holds it briefly (a part checking in, a merge)
# the files predict writes per image and per folder (and evaluate beside them; what is never an input)
IMAGE_OUTPUTS = ("_mask.png", "_probs.npz", "_overlay.png", "_maps.png")
FOLDER_OUTPUTS = ("predictions.csv", "predict.json", "metrics.csv", "summary.json", "rounds.md", "reliability.png")


def image_outputs(id_: str) -> list[str]:
    """The file names predict writes for image ``id_``."""
    return [f"{id_}{suffix}" for suffix in IMAGE_OUTPUTS]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def part_lock_name(index: int, count: int) -> str:
    """The lock file of part ``index`` of ``count`` (``predict --part I/N``)."""
    return f".lesiondiff-part-{index}-of-{count}.lock"


def _holder(path: Path) -> tuple[int, str, dict]:
    """(PID, host, the whole record) of a lock file; PID -1 on this host when it cannot be read (a lock is
    written whole before it appears, :meth:`OutputLock._claim`, so an unreadable one was damaged: stale).
    FileNotFoundError when it is gone."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return int(holder["pid"]), str(holder.get("host", "")), holder
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return -1, socket.gethostname(), {}


def _live(pid: int, host: str) -> bool:
    """Whether a lock's holder may still run: on another host it may (we cannot look); here, if its PID does."""
    return host != socket.gethostname() or (pid > 0 and _alive(pid))


class OutputLock:
    """``with OutputLock(folder, what):`` holds the folder's lock file for the block (see the module docstring).

    ``name``: another lock file (a part's, :func:`part_lock_name`). ``brief``: this holder holds it only for a
    moment (a part checking the folder in, a merge); a lock held by such a holder is waited for, up to
    ``wait_s``, instead of refused, so that parts started together (an array job) all get in."""

    def __init__(self, folder: Path, what: str = "predict", log=print, name: str = LOCK, brief: bool = False,
                 wait_s: float = BRIEF_WAIT_S) -> None:
        self.path = Path(folder) / name
        self.what = what
        self.log = log
        self.brief = brief
        self.wait_s = wait_s
        self.held = False

    def _claim(self) -> bool:
        """Create the lock with its content in one step: written to a temporary file, then hard-linked to the
        lock's name (which fails when it exists; atomic on NFS too), so no reader ever sees it empty. Where the
        file system has no hard links, created with ``O_EXCL`` and then written."""
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                           **({"brief": True} if self.brief else {})})
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        deadline = time.monotonic() + self.wait_s
        tries = 0
        while tries < 3:  # a holder may finish between our attempts
            if self._claim():
                self.held = True
                return self
            try:
                pid, host, holder = _holder(self.path)
            except FileNotFoundError:
                tries += 1
                continue
            if _live(pid, host):
                if holder.get("brief") and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                what = holder.get("command", "predict")
                what = f", {what}" if what not in ("predict", "train") else ""
                raise LesiondiffError(f"{self.path.parent}: another lesiondiff process (PID {pid} on {host}{what}) "
                                      "is writing here; wait for it to finish or choose another --out")
            self.log(f"note: {self.path.parent}: taking over the lock of PID {pid}, which is no longer running")
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            tries += 1
        raise LesiondiffError(f"{self.path}: could not take the lock; remove it if no lesiondiff process runs")

    def __exit__(self, *exc) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


def live_parts(folder: Path, log=print) -> list[dict]:
    """The ``predict --part`` commands writing ``folder`` now: ``{"part", "parts", "pid", "host"}`` per part lock
    whose holder runs. A part lock left by a process that no longer runs (on this host) is removed with a
    notice. Call it holding the folder's lock."""
    found = []
    for path in sorted(Path(folder).glob(".lesiondiff-part-*-of-*.lock")):
        match = PART_LOCK.match(path.name)
        if match is None:
            continue
        try:
            pid, host, _ = _holder(path)
        except FileNotFoundError:
            continue
        if not _live(pid, host):
            log(f"note: {folder}: removing the lock of part {match[1]}/{match[2]} (PID {pid}), which is no longer "
                "running")
            path.unlink(missing_ok=True)
            continue
        found.append({"part": int(match[1]), "parts": int(match[2]), "pid": pid, "host": host})
    return found


def refuse_live_parts(folder: Path, log=print) -> None:
    """A predict that is not one of a job's parts is refused, in one line, while a part writes ``folder``."""
    live = live_parts(folder, log)
    if live:
        p = live[0]
        more = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
        raise LesiondiffError(f"{folder}: part {p['part']}/{p['parts']} of a predict --part job (PID {p['pid']} on "
                              f"{p['host']}){more} is writing here; wait for the parts to finish, or choose another "
                              "--out")


def fold_writers(folder: Path) -> None:
    """Fold the records of the writers of a launch or of parts (done lines, files lists) into the main ones;
    only for the one process writing ``folder`` (``io_utils.fold_records``)."""
    for name in (DONE, OWNED):
        fold_records(Path(folder) / name)


def read_job(folder: Path) -> dict | None:
    """The job record of ``predict --part`` commands in ``folder`` (None when there is none)."""
    path = Path(folder) / JOB
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None


def write_job(folder: Path, job: dict) -> None:
    atomic_write_text(Path(folder) / JOB, json.dumps(job, indent=1))


def describe_change(old: dict, new: dict) -> str | None:
    """In words, what made a folder's predictions other than ``new`` settings (None when nothing did)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not keys:
        return None
    if "run" in keys:
        return f"of another run ({old.get('run', 'unrecorded')})"
    if "checkpoint" in keys:
        return f"of the run's {old.get('checkpoint') or 'unrecorded'} checkpoint, not its {new.get('checkpoint')}"
    if any(k.startswith("checkpoint_") for k in keys):
        return (f"of an earlier version of this run's {new.get('checkpoint_file', 'checkpoint')} (the file has "
                "changed since: the run was trained further or replaced)")
    if "postprocess" in keys:
        return "made with another lesion / no-lesion rule (the run's postprocess.json changed)"
    shown = "; ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3])
    return f"made with other settings ({shown}{'; ...' if len(keys) > 3 else ''})"


class PredictionFolder:
    """The predictions of one run and one set of settings in ``folder`` (see the module docstring). Nothing is
    written until the names of every file to come were checked (:meth:`OwnedFolder.claim`).

    ``writer``: this process is one of several writing the folder (module docstring): its done lines and files
    list go to its own records. ``mine``: the ids of ``inputs`` this process will predict (default: all), whose
    damaged files are noted and whose names are checked."""

    def __init__(self, folder: Path, settings: dict, inputs: list[tuple[str, str]], overwrite: bool = False,
                 log=print, verify: bool = False, split: str | None = None, writer: str | None = None,
                 mine: set[str] | None = None) -> None:
        self.folder = Path(folder)
        self.log = log
        self.done_path = self.folder / DONE if writer is None else side_record(self.folder / DONE, writer)
        old = self._read_record()
        old_inputs, splits = {}, []
        if old is not None:
            change = describe_change(old.get("settings", {}), settings)
            if change and not overwrite:
                raise LesiondiffError(f"{self.folder}: holds predictions {change}; add --overwrite to replace them, "
                                      "or choose another --out")
            if change:
                self.files = owned_folder(self.folder, writer)
                self._remove_all()
                log(f"note: {self.folder}: removed the predictions {change} (--overwrite)")
            else:
                old_inputs, splits = dict(old.get("inputs", {})), list(old.get("splits", []))
        moved = [(i, old_inputs[i], p) for i, p in inputs if old_inputs.get(i, p) != p]
        if moved and not overwrite:
            id_, before, now = moved[0]
            raise LesiondiffError(f"{self.folder}: {id_!r} was predicted here from {before}, not {now}"
                                  f"{f' ({len(moved)} ids in all)' if len(moved) > 1 else ''}; add --overwrite to "
                                  "predict it again from the new file, or choose another --out")
        self.inputs = {**old_inputs, **dict(inputs)}
        self.splits = splits + ([split] if split and split not in splits else [])
        mine = {i for i, _ in inputs} if mine is None else mine
        # the done lines before the files lists: a line read implies its files were listed before it was written
        lines = done_lines(self.folder)
        self.files = owned_folder(self.folder, writer)
        self.done = self._read_done(verify, mine - {i for i, _, _ in moved}, lines)
        todo = [i for i, _ in inputs if i in mine and i not in self.done]
        self.files.claim([name for i in todo for name in image_outputs(i)] + list(FOLDER_OUTPUTS[:2]),
                         hint="predict into another folder (e.g. a new subfolder) with --out")
        self._write_record(settings)

    @classmethod
    def reopen(cls, folder: Path, writer: str | None = None, verify: bool = False, read_done: bool = True,
               log=print) -> PredictionFolder:
        """The folder as its record and done lines say, read only (nothing is checked or written): for the other
        processes of a launch, whose rank 0 checked it in, and for a merge. ``read_done``: find the finished
        images (each file's size, or with ``verify`` its sha256)."""
        self = cls.__new__(cls)
        self.folder, self.log = Path(folder), log
        self.done_path = self.folder / DONE if writer is None else side_record(self.folder / DONE, writer)
        record = self._read_record() or {}
        self.inputs, self.splits = dict(record.get("inputs", {})), list(record.get("splits", []))
        self.settings = record.get("settings", {})
        lines = done_lines(self.folder) if read_done else []
        self.files = owned_folder(self.folder, writer)
        self.done = self._read_done(verify, set(), lines)
        return self

    def reload(self, verify: bool = False) -> None:
        """Fold the other writers' records into the main ones (only for the one process left writing the folder)
        and read what they finished."""
        fold_writers(self.folder)
        lines = done_lines(self.folder)
        self.files = owned_folder(self.folder)
        self.done_path = self.folder / DONE
        self.done = self._read_done(verify, set(), lines)

    def _read_record(self) -> dict | None:
        record = self.folder / RECORD
        if not record.is_file():
            return None
        try:
            return json.loads(record.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return {"settings": {"unreadable record": True}, "inputs": {}}

    def _write_record(self, settings: dict) -> None:
        atomic_write_text(self.folder / RECORD, json.dumps({"settings": settings, "inputs": self.inputs,
                                                            "splits": self.splits}, indent=2))

    def _read_done(self, verify: bool, asked: set[str], lines: list[dict]) -> dict[str, dict]:
        """Finished images (of the done ``lines``) whose input path is unchanged and whose files are all as
        lesiondiff wrote them; the damaged ones among those asked for now are named in a note and predicted
        again."""
        done, damaged = {}, []
        for row in lines:
            id_ = row.get("id")
            if id_ in self.inputs and self.inputs[id_] == row.get("image"):
                done[id_] = row
        for id_ in list(done):
            bad = [n for n in image_outputs(id_) if not self.files.intact(n, verify)]
            if bad:
                del done[id_]
                if id_ in asked:
                    damaged.append(bad[0])
        if damaged:
            self.log(f"note: {len(damaged)} finished predictions have a damaged or missing file and are predicted "
                     f"again ({', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''})")
        return done

    def _remove_all(self) -> None:
        """Remove every file lesiondiff wrote here (files it did not write stay), and the records."""
        self.files.remove(list(self.files.files))
        for path in (self.folder / DONE, *side_records(self.folder / DONE), self.folder / RECORD,
                     self.folder / JOB):
            path.unlink(missing_ok=True)
        self.inputs, self.splits = {}, []

    def write(self, name: str, data: bytes) -> None:
        """Write one output file of an image (listed as lesiondiff's)."""
        self.files.write_bytes(name, data)

    def mark_done(self, row: dict) -> None:
        """Record a finished image (its files are written): one line appended and flushed to disk."""
        self.done[row["id"]] = row
        append_line(self.done_path, json.dumps(row), sync=True)

    def rows(self) -> list[dict]:
        """The finished images of the folder, every split and input predicted here, in the order first given."""
        return [self.done[i] for i in self.inputs if i in self.done]


def done_lines(folder: Path) -> list[dict]:
    """The lines of a predict folder's done record and of its writers' (module docstring), those cut by a kill
    left out."""
    rows = []
    for line in record_lines(Path(folder) / DONE):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def owned_folder(folder: str | Path, writer: str | None = None) -> OwnedFolder:
    """``folder``'s list of what lesiondiff wrote there (``writer``: :class:`OwnedFolder`). A predict folder made
    before lesiondiff kept that list (it has a settings record but no list) adopts what its done record and
    settings say predict wrote."""
    files = OwnedFolder(folder, writer)
    if (files.folder / RECORD).is_file() and not files.list_path.is_file() and not side_records(files.list_path):
        names = {n for row in done_lines(files.folder) for n in image_outputs(str(row.get("id")))}
        for name in sorted(names | set(FOLDER_OUTPUTS)):
            if name_problem(name) is None and (files.folder / name).is_file():
                files.record(name, sha=False)
    return files


def is_own_output(path: Path) -> bool:
    """Whether ``path`` is a file predict wrote: an image output in a folder that holds a predictions record."""
    return path.name.endswith(IMAGE_OUTPUTS) and (path.parent / RECORD).is_file()


def read_predictions(pred_dir: Path) -> tuple[dict[str, dict], dict]:
    """The rows of a predict folder's predictions.csv by id, and predict.json's settings ({} without it)."""
    table = pred_dir / "predictions.csv"
    if not table.is_file():
        raise LesiondiffError(f"{table}: not found; run lesiondiff predict --out {pred_dir} first")
    with table.open(encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    meta_path = pred_dir / "predict.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return rows, meta
