"""An output folder that holds one run's predictions, made with one set of settings, by one process at a time.

- **Lock**: ``.lesiondiff.lock`` holds the writer's PID and host; it is created exclusively (``O_EXCL``), so of
  two processes that start together one gets the folder and the other a one-line error. A lock left by a process
  that no longer runs (on this host) is taken over with a notice.
- **Ownership**: ``.lesiondiff-predict.json`` records what made the folder's predictions (the run, the
  checkpoint file's size and modification time, every sampling setting) and each input image's path. A second
  ``predict`` with other settings or another run is refused unless ``overwrite``; then the old predictions are
  removed first, so the folder never mixes two runs.
- **Resume**: ``.lesiondiff-done.jsonl`` gets one line per finished image, appended after its files were
  written (atomically). A ``predict`` interrupted and started again with the same settings skips those images
  and does the rest; a truncated last line (a kill while appending) is ignored.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

from ..errors import LesiondiffError
from ..io_utils import atomic_write_text

LOCK = ".lesiondiff.lock"
RECORD = ".lesiondiff-predict.json"
DONE = ".lesiondiff-done.jsonl"
# the files predict writes per image and per folder (what overwrite removes, what is never an input)
IMAGE_OUTPUTS = ("_mask.png", "_probs.npz", "_overlay.png", "_maps.png")
FOLDER_OUTPUTS = ("predictions.csv", "predict.json", "metrics.csv", "summary.json", DONE, RECORD)


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


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class PredictionFolder:
    """The predictions of one run and one set of settings in ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path, settings: dict, inputs: list[tuple[str, str]], overwrite: bool = False,
                 log=print) -> None:
        self.folder = Path(folder)
        self.inputs = dict(inputs)
        self.done: dict[str, dict] = {}
        record = self.folder / RECORD
        if record.is_file():
            try:
                old = json.loads(record.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                old = {"settings": {"unreadable record": True}, "inputs": {}}
            diff = _differences(old.get("settings", {}), settings)
            if diff and not overwrite:
                raise LesiondiffError(f"{self.folder}: holds predictions of another run or other settings "
                                      f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}); add --overwrite "
                                      "to replace them, or choose another --out")
            if diff:
                self._remove(old.get("inputs", {}))
                log(f"note: {self.folder}: removed the predictions made with other settings (--overwrite)")
            else:
                self.done = self._read_done(old.get("inputs", {}))
        elif (self.folder / "predict.json").is_file():  # made before settings records existed
            if not overwrite:
                raise LesiondiffError(f"{self.folder}: holds predictions without a settings record; add --overwrite "
                                      "to replace them, or choose another --out")
            self._remove(self._listed())
        atomic_write_text(record, json.dumps({"settings": settings, "inputs": self.inputs}, indent=2))

    def _read_done(self, old_inputs: dict) -> dict[str, dict]:
        """Finished images whose input path is unchanged and whose files are all there."""
        done = {}
        path = self.folder / DONE
        if not path.is_file():
            return done
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            id_ = row.get("id")
            if (id_ in self.inputs and self.inputs[id_] == row.get("image") == old_inputs.get(id_)
                    and all((self.folder / f"{id_}{suffix}").is_file() for suffix in IMAGE_OUTPUTS)):
                done[id_] = row
        return done

    def _listed(self) -> dict:
        """The predictions predictions.csv lists by id (a folder without a settings record)."""
        return read_predictions(self.folder)[0] if (self.folder / "predictions.csv").is_file() else {}

    def _remove(self, old_inputs: dict) -> None:
        for id_ in old_inputs:
            for suffix in IMAGE_OUTPUTS:
                (self.folder / f"{id_}{suffix}").unlink(missing_ok=True)
        for name in FOLDER_OUTPUTS:
            (self.folder / name).unlink(missing_ok=True)

    def mark_done(self, row: dict) -> None:
        """Record a finished image (its files are written): one line appended and flushed to disk."""
        self.done[row["id"]] = row
        with (self.folder / DONE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


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
