"""The jobs of ``lesiondiff serve``: each accepted upload is a job with an unguessable id and a folder of its own,
run by ``Predictor.run``, the code path of ``lesiondiff predict``, so its files are the ones predict writes.

Jobs run one at a time on one worker thread, in the order they came; at most ``limit`` are queued or running (more
are refused), so that no client can fill the disk with queued uploads or make the wait unbounded. One job touches
a model at a time, so the wrapper that counts its network evaluations for the progress bar (``count_evaluations``
shadows ``model.denoise``) never counts another job's; sampling is batched over S already and gains nothing from
a second job beside it.
"""

from __future__ import annotations

import queue
import re
import secrets
import shutil
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LesiondiffError
from .catalog import Model
from .uploads import redact

# what a job's page shows and offers for download: kind -> the file name's ending after the image id
OUTPUTS = {"mask": "_mask.png", "overlay": "_overlay.png", "maps": "_maps.png", "samples": "_samples.png",
           "probs": "_probs.npz"}


class UnsafePath(LesiondiffError):
    """A job file's name that is not a plain name, or that leads out of the job's folder once resolved."""


def job_path(folder: Path, *names: str) -> Path:
    """``folder/names...``, each a plain file name (no separator, NUL, '.' or '..') and the whole inside ``folder``
    once resolved (no symbolic link leads out): every path serve writes or serves is made here (DESIGN.md,
    "Output safety"), whatever the names were made of. :class:`UnsafePath` names no server folder."""
    for name in names:
        if name in ("", ".", "..") or re.search(r"[\\/\0]", name) or Path(name).name != name:
            raise UnsafePath(f"{name!r}: not a plain file name")
    path = folder.joinpath(*names)
    if not path.resolve().is_relative_to(folder.resolve()):
        raise UnsafePath(f"{'/'.join(names)}: leads outside the job's folder")
    return path


@dataclass(eq=False)  # a job is itself: compared by identity
class Job:
    id: str
    folder: Path  # input/ holds the upload, out/ what predict writes
    image: Path  # the saved upload
    image_id: str  # the id predict would give it: the file's stem (uploads.upload_name)
    shown: str  # the file name as uploaded, for messages
    model: Model
    samples: int
    steps: int
    seed: int
    status: str = "queued"  # queued, running, done or error
    stage: str = "queued"
    error: str = ""
    total: int = 0  # network evaluations the sampler will make: network_calls(steps, S)["evaluations"]
    count: object = field(default=None, repr=False)  # the live EvaluationCount while sampling
    trust: dict = field(default_factory=dict)  # the scores and the accept / review mark, once done

    @property
    def out(self) -> Path:
        return self.folder / "out"

    def file(self, kind: str) -> Path | None:
        """The output file of ``kind`` (:data:`OUTPUTS`) once the job is done; None otherwise (:func:`job_path`:
        :class:`UnsafePath` when it is not a plain name inside the job's folder)."""
        if self.status != "done" or kind not in OUTPUTS:
            return None
        return job_path(self.folder, "out", f"{self.image_id}{OUTPUTS[kind]}")

    def progress(self) -> dict:
        done = min(self.count.rows, self.total) if self.count is not None else 0
        return {"done": self.total if self.status == "done" else done, "total": self.total}


def predict(job: Job, device: str | None) -> None:
    """Run ``job`` through the Predictor as ``lesiondiff predict --run RUN IMAGE --samples S --steps N --seed K``
    does, counting network evaluations as it goes, then draw every sample's mask."""
    from ..analysis.sampler_sweep import count_evaluations
    from ..engine.predict import Predictor

    job.stage = "loading the model"
    overrides = [f"sample.samples={job.samples}", f"sample.steps={job.steps}", f"sample.seed={job.seed}"]
    predictor = Predictor.from_run(job.model.run, "best", device, overrides)
    first = predictor.members.sources[0]  # the progress bar counts the first run's evaluations (of an ensemble)
    job.total = first.sampler.network_calls(predictor.cfg.sample.steps,
                                            predictor.members.draws(first) * len(predictor.members.views))["evaluations"]
    job.stage = "sampling"
    with count_evaluations(first.model) as count:
        job.count = count
        rows = predictor.run([(job.image_id, str(job.image))], job.out, checkpoint="best", log=lambda *_: None)
    job.trust = trust_of(rows[0], predictor.selective_mark())
    job.stage = "drawing the sample masks"
    draw_samples(job.folder, job.image_id)


def trust_of(row: dict, record: dict | None) -> dict:
    """What the page shows of how far to trust the mask: the image's scores (predictions.csv), and the accept /
    review mark with the calibration's promise when the run was calibrated for these settings."""
    from ..uncertainty import SCORES

    trust = {"scores": {k: float(row[k]) for k in SCORES if row.get(k) not in (None, "")}}
    if record is not None:
        trust.update(review=row.get("review"), score=record["score"], target_dice=record["target_dice"],
                     delta=record["delta"])
    return trust


def draw_samples(folder: Path, image_id: str) -> None:
    """``out/<id>_samples.png`` of a job's ``folder``: the S samples of ``out/<id>_probs.npz`` binarised at its
    threshold, the run's."""
    from ..data.io import read_npz, write_png
    from ..render.maps import sample_masks

    probs = read_npz(job_path(folder, "out", f"{image_id}{OUTPUTS['probs']}"), ("samples", "threshold"))
    grid = sample_masks(probs["samples"].astype(np.float32), float(probs["threshold"]))
    write_png(job_path(folder, "out", f"{image_id}{OUTPUTS['samples']}"), grid)


def run_job(job: Job, device: str | None) -> None:
    """Run ``job``; any failure becomes its error message (the server goes on). A client is shown no server path
    and no exception text: a LesiondiffError's message (meant for users) with its paths redacted, any other
    failure (a bug or a resource failure) as a short message, its traceback in the server's log."""
    job.status = "running"
    try:
        predict(job, device)
    except LesiondiffError as exc:
        job.error = redact(str(exc), {job.image: job.shown, job.folder: "job", job.folder.parent: "jobs",
                                      job.model.run: job.model.name})
    except Exception:
        print(f"lesiondiff serve: job {job.id} failed ({job.shown}, model {job.model.name}):", file=sys.stderr)
        traceback.print_exc()
        job.error = (f"the job failed because of an error inside the server (its log has the details, under job "
                     f"{job.id})")
    job.status, job.stage = ("error", "failed") if job.error else ("done", "done")


class QueueFull(LesiondiffError):
    """A job refused because the queue holds as many unfinished jobs as it takes."""


class JobQueue:
    """Jobs by id, run one at a time on one worker thread (started with the first job) under ``root``; at most
    ``limit`` queued or running; only the newest ``keep`` finished jobs keep their folders."""

    def __init__(self, root: Path, device: str | None = None, keep: int = 100, limit: int = 8) -> None:
        self.root, self.device, self.keep, self.limit = Path(root), device, keep, limit
        self.jobs: dict[str, Job] = {}
        self.pending: queue.Queue[Job | None] = queue.Queue()
        self.lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="lesiondiff-serve-jobs", daemon=True)

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id (128 random bits, unguessable) and its folder."""
        job_id = secrets.token_hex(16)
        folder = self.root / job_id
        (folder / "input").mkdir(parents=True)
        return job_id, folder

    def unfinished(self) -> int:
        """Jobs queued or running (call it holding the lock)."""
        return sum(j.status in ("queued", "running") for j in list(self.jobs.values()))

    def full(self) -> bool:
        """Whether a job submitted now would be refused (the early check, before an upload is read)."""
        with self.lock:
            return self.unfinished() >= self.limit

    def busy(self) -> QueueFull:
        return QueueFull(f"the server is busy: {self.limit} job{'s are' if self.limit > 1 else ' is'} queued or "
                         "running, the most it takes; try again when one has finished")

    def submit(self, job: Job) -> None:
        """Queue ``job``; :class:`QueueFull` when ``limit`` jobs are unfinished (checked again here, under the
        lock: the queue may have filled while the job's upload was read)."""
        with self.lock:
            if self.unfinished() >= self.limit:
                raise self.busy()
            self.jobs[job.id] = job
            if self.worker.ident is None:
                self.worker.start()
        self.pending.put(job)
        self._prune()

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def ahead(self, job: Job) -> int:
        """How many jobs run before ``job``: the one running and those queued earlier."""
        with self.lock:
            order = list(self.jobs.values())
        earlier = order[:order.index(job)] if job in order else []
        return sum(j.status in ("queued", "running") for j in earlier)

    def close(self) -> None:
        """Stop the worker after the job it is running (queued jobs are dropped)."""
        while not self.pending.empty():
            self.pending.get_nowait()
        if self.worker.is_alive():
            self.pending.put(None)
            self.worker.join(timeout=5)

    def _work(self) -> None:
        while (job := self.pending.get()) is not None:
            run_job(job, self.device)

    def _prune(self) -> None:
        with self.lock:
            finished = [j for j in self.jobs.values() if j.status in ("done", "error")]
            for job in finished[:max(0, len(finished) - self.keep)]:
                del self.jobs[job.id]
                shutil.rmtree(job.folder, ignore_errors=True)
