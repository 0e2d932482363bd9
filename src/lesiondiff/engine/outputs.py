"""An output folder of ``predict``: one run's predictions, made with one set of settings, by one process at a time,
that never replaces a file lesiondiff did not write.

- **Lock**: ``.lesiondiff.lock`` holds the writer's PID and host; it is created exclusively (``O_EXCL``), so of
  two processes that start together one gets the folder and the other a one-line error. A lock left by a process
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
"""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

from ..errors import LesiondiffError
from ..io_utils import OwnedFolder, atomic_write_text, name_problem

LOCK = ".lesiondiff.lock"
RECORD = ".lesiondiff-predict.json"
DONE = ".lesiondiff-done.jsonl"
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


class OutputLock:
    """``with OutputLock(folder, what):`` holds the folder's lock file for the block (see the module docstring)."""

    def __init__(self, folder: Path, what: str = "predict", log=print) -> None:
        self.path = Path(folder) / LOCK
        self.what = what
        self.log = log
        self.held = False

    def _claim(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": self.what}, f)
        return True

    def __enter__(self) -> OutputLock:
        for _ in range(3):  # a holder may finish between our attempts
            if self._claim():
                self.held = True
                return self
            try:
                holder = json.loads(self.path.read_text(encoding="utf-8"))
                pid, host = int(holder["pid"]), str(holder.get("host", ""))
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError, OSError):
                pid, host = -1, socket.gethostname()  # unreadable: left by a writer killed mid-write
            if host != socket.gethostname() or (pid > 0 and _alive(pid)):
                raise LesiondiffError(f"{self.path.parent}: another lesiondiff process (PID {pid} on {host}) is "
                                      f"writing here; wait for it to finish or choose another --out")
            self.log(f"note: {self.path.parent}: taking over the lock of PID {pid}, which is no longer running")
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        raise LesiondiffError(f"{self.path}: could not take the lock; remove it if no lesiondiff process runs")

    def __exit__(self, *exc) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


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
    written until the names of every file to come were checked (:meth:`OwnedFolder.claim`)."""

    def __init__(self, folder: Path, settings: dict, inputs: list[tuple[str, str]], overwrite: bool = False,
                 log=print, verify: bool = False, split: str | None = None) -> None:
        self.folder = Path(folder)
        self.files = owned_folder(self.folder)
        self.log = log
        old = self._read_record()
        old_inputs, splits = {}, []
        if old is not None:
            change = describe_change(old.get("settings", {}), settings)
            if change and not overwrite:
                raise LesiondiffError(f"{self.folder}: holds predictions {change}; add --overwrite to replace them, "
                                      "or choose another --out")
            if change:
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
        self.done = self._read_done(verify, {i for i, _ in inputs} - {i for i, _, _ in moved})
        todo = [i for i, _ in inputs if i not in self.done]
        self.files.claim([name for i in todo for name in image_outputs(i)] + list(FOLDER_OUTPUTS[:2]),
                         hint="predict into another folder (e.g. a new subfolder) with --out")
        self._write_record(settings)

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

    def _done_lines(self) -> list[dict]:
        return done_lines(self.folder)

    def _read_done(self, verify: bool, asked: set[str]) -> dict[str, dict]:
        """Finished images whose input path is unchanged and whose files are all as lesiondiff wrote them; the
        damaged ones among those asked for now are named in a note and predicted again."""
        done, damaged = {}, []
        for row in self._done_lines():
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
        for name in (DONE, RECORD):
            (self.folder / name).unlink(missing_ok=True)
        self.inputs, self.splits = {}, []

    def write(self, name: str, data: bytes) -> None:
        """Write one output file of an image (listed as lesiondiff's)."""
        self.files.write_bytes(name, data)

    def mark_done(self, row: dict) -> None:
        """Record a finished image (its files are written): one line appended and flushed to disk."""
        self.done[row["id"]] = row
        with (self.folder / DONE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict]:
        """The finished images of the folder, every split and input predicted here, in the order first given."""
        return [self.done[i] for i in self.inputs if i in self.done]


def done_lines(folder: Path) -> list[dict]:
    """The lines of a predict folder's done record, those cut by a kill left out."""
    path = Path(folder) / DONE
    rows = []
    for line in (path.read_text(encoding="utf-8").splitlines() if path.is_file() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def owned_folder(folder: str | Path) -> OwnedFolder:
    """``folder``'s list of what lesiondiff wrote there. A predict folder made before lesiondiff kept that list
    (it has a settings record but no list) adopts what its done record and settings say predict wrote."""
    files = OwnedFolder(folder)
    if (files.folder / RECORD).is_file() and not files.list_path.is_file():
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
