"""One prediction folder written by one process, by the processes of an ``accelerate launch``, or by ``--part
I/N`` commands, with the same files in the end (``Predictor.run`` chooses; ``engine/outputs.py`` holds the
folder's rules).

- **One process** (:func:`run_one`): the folder's lock, the settings record and its checks, every image, then
  predictions.csv and predict.json.
- **A launch** (:func:`run_launch`, ``accelerate launch --num_processes N -m lesiondiff.cli predict ...``): rank 0
  takes the folder's lock, folds what an interrupted earlier launch left in the writers' records, makes the
  up-front checks (settings, foreign files) and writes the settings record, and finds the images not done yet.
  It sends that to-do list to the others (a broadcast, which is also the barrier: nobody writes before rank 0
  has checked the folder in, and when it refuses, every process stops with status 2, rank 0 alone printing the
  one ``error:`` line). Rank r predicts the to-do images at positions r, r + N, r + 2N, ... of that list (the
  inputs' order), appending to its own done and files records. After a barrier rank 0 folds the records and
  writes predictions.csv and predict.json from the done record, as one process would.
  Why the to-do list and not the whole input list: the split is deterministic (the same folder and inputs give
  the same shares) and no image is in two shares, and after a resume the remaining images are still shared
  evenly: a split of the whole list would leave the ranks whose images were done idle while one rank predicts
  all that an interrupted rank left. Stability across restarts is not what keeps an image from being predicted
  twice or lost; the done record is, and every rank reads rank 0's one snapshot of it.
- **Parts** (:func:`run_part`, ``--part I/N``: N commands, e.g. a SLURM array, at once or one after another): a
  part's share is fixed by index over the whole ordered input list (positions I-1, I-1+N, ...), independent of
  what is done, since parts do not see one another's progress. A part takes the folder's lock only to check in
  (the settings record, the job record ``.lesiondiff-parts.json``: the number of parts and the ordered inputs,
  which every part must match, and what predict.json will say) and holds its own part lock while it
  predicts; parts of one job are admitted together, a predict that is not one of them is refused while one
  runs. When a part finishes it checks out under the folder's lock; the last one, seeing no part running and
  every image of the job done, merges (:func:`merge_parts`; ``lesiondiff predict --merge OUT`` does the same,
  refused in one line while images are missing).

Each image's noise is seeded by its id (``Predictor.image_seed``), so which process predicts an image does not
change its files: the folder is byte for byte a one-process run's; predict.json differs in ``speed`` only.
"""

from __future__ import annotations

import csv
import io as _io
import json
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from ..errors import LesiondiffError, ReportedByMain
from ..uncertainty import SCORES
from .device import broadcast_from_main, wait_for_everyone
from .outputs import (
    JOB,
    OutputLock,
    PredictionFolder,
    fold_writers,
    live_parts,
    part_lock_name,
    read_job,
    refuse_live_parts,
    write_job,
)

TABLE_FIELDS = ["id", "image", "mask", "probs", "overlay", "maps"]


def part_share(items: list, index: int, count: int) -> list:
    """The items of part ``index`` (1-based) of ``count``: positions index - 1, index - 1 + count, ... ."""
    return items[index - 1::count]


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` as (I, N), 1 <= I <= N; else a one-line error."""
    head, slash, tail = text.partition("/")
    if not (slash and head.strip().isdigit() and tail.strip().isdigit()) or int(tail) < 1:
        raise LesiondiffError(f"--part {text}: expected I/N, part I of N (e.g. --part 1/4)")
    index, count = int(head), int(tail)
    if not 1 <= index <= count:
        raise LesiondiffError(f"--part {text}: there is no part {index} of {count}; parts are numbered 1 to {count}")
    return index, count


def score_summary(rows: list[dict]) -> dict:
    """predict.json's ``scores``: per score of ``uncertainty.SCORES``, its meaning and mean +- population std over
    the images that have it."""
    out = {}
    for name, means in SCORES.items():
        values = np.array([r[name] for r in rows if r.get(name) not in (None, "")], dtype=np.float64)
        if values.size:
            out[name] = {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size),
                         "means": means}
    return out


def selective_summary(record: dict | None, rows: list[dict]) -> dict:
    """predict.json's ``selective``: the calibration applied (score, threshold, target, delta) and how many images
    were accepted; a plain description when there is none."""
    if record is None:
        return {"description": "none (the run has no selective.json, or it was calibrated with other settings)"}
    accepted = sum(r.get("review") == "accept" for r in rows)
    return {"score": record["score"], "threshold": record["threshold"], "target_dice": record["target_dice"],
            "delta": record["delta"], "calibrated_on": f"split {record['split']} of {record['manifest']}",
            "accepted": accepted, "images": len(rows), "coverage": accepted / len(rows) if rows else 0.0}


def speed_figures(rows: list[dict], samples: int, device: str, threads: int, processes: int,
                  wall_s: float | None, predicted: int | None, parts: dict | None = None) -> dict:
    """predict.json's ``speed``: sampling speed over the folder's images (wall clock in the sampler only, not
    reading, fusion or writing, one image at a time with its S samples in one batch, summed over the processes:
    the speed of one process), ``predict_s`` (the whole per-image work, summed) and ``scores_s`` (the scores'
    part); ``processes``, how many processes predicted (a launch's, or the number of parts); ``wall_s``, this
    command's wall clock from start to the tables, with the ``predicted_now`` images it predicted and their
    rate over all processes (None for merged parts, which ran apart: ``parts`` has each part's)."""
    secs = sum(r["sampling_s"] for r in rows)
    per_s = (lambda n: round(n / secs, 3)) if secs > 0 else (lambda n: None)
    out = {"device": device, "processes": processes, "images": len(rows), "sampling_s": round(secs, 3),
           "images_per_s": per_s(len(rows)), "masks_per_s": per_s(len(rows) * samples),
           "predict_s": round(sum(r.get("predict_s", 0.0) for r in rows), 3),
           "scores_s": round(sum(r.get("scores_s", 0.0) for r in rows), 4), "threads": threads,
           "wall_s": None if wall_s is None else round(wall_s, 3), "predicted_now": predicted,
           "wall_images_per_s": round(predicted / wall_s, 3) if wall_s and predicted else None}
    if parts is not None:
        out["parts"] = parts
    return out


def write_tables(folder: PredictionFolder, meta: dict, record: dict | None, split: str | None,
                 speed: dict) -> list[dict]:
    """Write predictions.csv and predict.json of every finished image of ``folder``, in the order the images were
    first given: ``meta`` (``Predictor.meta``) with the speed, the lesion / no-lesion count, the scores, the
    accept / review summary of ``record`` and the splits. Returns the table's rows."""
    rows = folder.rows()
    meta = dict(meta)
    meta["speed"] = speed
    if "declared_empty" in (meta.get("postprocess") or {}):
        meta["postprocess"] = {**meta["postprocess"], "declared_empty": sum(r["declared_empty"] for r in rows)}
    meta.update({"scores": score_summary(rows), "selective": selective_summary(record, rows),
                 "split": split if split else (folder.splits[-1] if folder.splits else None),
                 "splits": folder.splits})
    buffer = _io.StringIO()
    fields = [*TABLE_FIELDS, *(k for k in (*SCORES, "review") if any(k in r for r in rows))]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    folder.files.write_text("predictions.csv", buffer.getvalue())
    folder.files.write_text("predict.json", json.dumps(meta, indent=2))
    return [{k: r.get(k, "") for k in fields} for r in rows]


def _to_do(folder: PredictionFolder, items: list[tuple[str, str]], out: Path, log) -> list[tuple[str, str]]:
    todo = [(id_, path) for id_, path in items if id_ not in folder.done]
    if len(todo) < len(items):
        log(f"resuming: {len(items) - len(todo)} of {len(items)} images were predicted with these settings "
            f"in {out} already")
    return todo


def _finish(predictor, folder: PredictionFolder, checkpoint: str, split: str | None, processes: int,
            wall_s: float, predicted: int) -> list[dict]:
    rows = folder.rows()
    predictor.add_up(rows)
    speed = speed_figures(rows, predictor.cfg.sample.samples, str(predictor.device), torch.get_num_threads(),
                          processes, wall_s, predicted)
    return write_tables(folder, predictor.meta(checkpoint), predictor.selective_mark(), split, speed)


def run_one(predictor, items: list[tuple[str, str]], out: Path, checkpoint: str, overwrite: bool, log,
            split: str | None, verify: bool) -> list[dict]:
    """Predict ``items`` into ``out`` in this one process (``Predictor.run``)."""
    start = time.perf_counter()
    with OutputLock(out, "predict", log):
        refuse_live_parts(out, log)
        fold_writers(out)  # what an interrupted launch or parts left
        folder = PredictionFolder(out, predictor.settings(checkpoint), items, overwrite, log, verify, split)
        todo = _to_do(folder, items, out, log)
        predictor.predicted_now = len(todo)
        predictor.note_selective(log)
        predictor.predict_all(folder, todo)
        return _finish(predictor, folder, checkpoint, split, 1, time.perf_counter() - start, len(todo))


def run_launch(predictor, items: list[tuple[str, str]], out: Path, rank: int, world: int, checkpoint: str,
               overwrite: bool, log, split: str | None, verify: bool) -> list[dict]:
    """This process's share of ``items`` as rank ``rank`` of ``world`` processes of one launch (module
    docstring); rank 0 returns the rows, the others an empty list."""
    start = time.perf_counter()
    with ExitStack() as stack:
        payload, failure, folder = None, None, None
        if rank == 0:
            try:
                stack.enter_context(OutputLock(out, f"predict (rank 0 of {world} processes)", log))
                refuse_live_parts(out, log)
                fold_writers(out)
                folder = PredictionFolder(out, predictor.settings(checkpoint), items, overwrite, log, verify, split)
                payload = {"todo": _to_do(folder, items, out, log)}
                predictor.note_selective(log)
            except (LesiondiffError, OSError) as exc:
                failure, payload = exc, {"error": str(exc)}
        payload = broadcast_from_main(payload)  # the others wait here until rank 0 has checked the folder in
        if "error" in payload:
            if failure is not None:
                raise failure
            raise ReportedByMain(payload["error"])
        if rank != 0:
            folder = PredictionFolder.reopen(out, writer=f"rank{rank}", read_done=False, log=log)
        todo = payload["todo"]
        predictor.predicted_now = len(todo)
        predictor.predict_all(folder, todo[rank::world], progress=rank == 0, who=f" [rank 0 of {world}]")
        wait_for_everyone()
        rows = []
        if rank == 0:
            folder.reload()
            rows = _finish(predictor, folder, checkpoint, split, world, time.perf_counter() - start, len(todo))
        wait_for_everyone()  # the tables are written before any process returns
        return rows


def _check_job(out: Path, job: dict | None, live: list[dict], inputs: list[list[str]], index: int, count: int,
               overwrite: bool) -> None:
    """Refuse, in one line, a part that does not belong to the job of the parts in ``out``."""
    others = [p for p in live if p["part"] != index or p["parts"] != count]
    other_split = [p for p in others if p["parts"] != count]
    if other_split:
        p = other_split[0]
        raise LesiondiffError(f"{out}: part {p['part']}/{p['parts']} of a split into {p['parts']} parts (PID "
                              f"{p['pid']} on {p['host']}) is writing here; give --part I/{p['parts']}, or wait "
                              "for it to finish")
    if overwrite and others:
        p = others[0]
        raise LesiondiffError(f"{out}: --overwrite would remove the predictions of part {p['part']}/{p['parts']} "
                              f"(PID {p['pid']} on {p['host']}), which is writing here; leave --overwrite out")
    if job is not None and (job.get("parts") != count or job.get("inputs") != inputs):
        what = (f"{job.get('parts')} parts" if job.get("parts") != count else
                f"the same number of parts over other inputs ({len(job.get('inputs', []))} images)")
        if others:
            p = others[0]
            raise LesiondiffError(f"{out}: part {p['part']}/{p['parts']} of a job of {what} (PID {p['pid']}) is "
                                  "writing here; give the same inputs and --part I/N, or wait for it to finish")
        if not overwrite:
            raise LesiondiffError(f"{out}: holds an unmerged predict --part job of {what}; finish it (the same "
                                  f"inputs, --part I/{job.get('parts')}, then lesiondiff predict --merge {out}) or "
                                  "add --overwrite to start this one")


def _missing(job: dict, folder: PredictionFolder) -> dict[int, int]:
    """Part -> how many of its images are not done."""
    missing: dict[int, int] = {}
    count = int(job["parts"])
    for k, (id_, _) in enumerate(job["inputs"]):
        if id_ not in folder.done:
            missing[k % count + 1] = missing.get(k % count + 1, 0) + 1
    return missing


def run_part(predictor, items: list[tuple[str, str]], out: Path, part: tuple[int, int], checkpoint: str,
             overwrite: bool, log, split: str | None, verify: bool) -> list[dict]:
    """Part ``part`` = (I, N) of ``items`` (module docstring); the rows when this part merged the job, else an
    empty list."""
    index, count = part
    share = part_share(items, index, count)
    inputs = [list(item) for item in items]
    predictor.predicted_now = 0
    start = time.perf_counter()
    with ExitStack() as holding:
        with OutputLock(out, f"predict --part {index}/{count} (checking in)", log, brief=True):
            live = live_parts(out, log)
            job = read_job(out)
            _check_job(out, job, live, inputs, index, count, overwrite)
            holding.enter_context(OutputLock(out, f"predict --part {index}/{count}", log,
                                             name=part_lock_name(index, count)))
            folder = PredictionFolder(out, predictor.settings(checkpoint), items, overwrite, log, verify, split,
                                      writer=f"part{index}of{count}", mine={i for i, _ in share})
            todo = _to_do(folder, share, out, log)
            same = job is not None and job.get("parts") == count and job.get("inputs") == inputs
            write_job(out, {"parts": count, "split": split, "meta": predictor.meta(checkpoint),
                            "selective": predictor.selective_mark(),
                            "finished": job.get("finished", {}) if same else {}, "inputs": inputs})
        predictor.note_selective(log)
        predictor.predict_all(folder, todo, who=f" [part {index}/{count}]")
        predictor.predicted_now = len(todo)
        with OutputLock(out, f"predict --part {index}/{count} (checking out)", log, brief=True):
            holding.close()  # this part's lock
            job = read_job(out) or {}
            job.setdefault("finished", {})[str(index)] = {
                "images": len(share), "predicted_now": len(todo), "wall_s": round(time.perf_counter() - start, 3),
                "device": str(predictor.device), "threads": torch.get_num_threads()}
            write_job(out, job)
            live = live_parts(out, log)
            missing = _missing(job, PredictionFolder.reopen(out, log=log))
            if live or missing:
                waiting = sorted({p["part"] for p in live} | set(missing))
                log(f"part {index}/{count} done; waiting for part{'s' if len(waiting) > 1 else ''} "
                    f"{', '.join(f'{p}/{count}' for p in waiting)}: the last part to finish merges the parts into "
                    f"predictions.csv and predict.json (or: lesiondiff predict --merge {out})")
                return []
            return _merge(out, job, verify, log)


def merge_parts(out: str | Path, log=print, verify: bool = False) -> list[dict]:
    """Merge the finished parts of the ``predict --part`` job in ``out`` into predictions.csv and predict.json,
    as one process would have written them; refused in one line, with nothing written, while a part runs or
    images of the job are not done. Returns the rows."""
    out = Path(out)
    if not out.is_dir():
        raise LesiondiffError(f"--merge {out}: no such folder")
    with OutputLock(out, "predict --merge", log, brief=True):
        job = read_job(out)
        if job is None:
            raise LesiondiffError(f"{out}: no predict --part job to merge here (no {JOB}: the parts were merged "
                                  "already, or none ran)")
        live = live_parts(out, log)
        if live:
            p = live[0]
            raise LesiondiffError(f"{out}: part {p['part']}/{p['parts']} (PID {p['pid']} on {p['host']}) is still "
                                  "writing here; the last part to finish merges, or merge after it")
        return _merge(out, job, verify, log)


def _merge(out: Path, job: dict, verify: bool, log) -> list[dict]:
    """predictions.csv and predict.json of a job whose parts all finished (under the folder's lock, no part
    running); refused in one line while any of its images is not done."""
    count = int(job["parts"])
    folder = PredictionFolder.reopen(out, verify=verify, log=log)
    missing = _missing(job, folder)
    if missing:
        parts = ", ".join(f"{p}/{count}" for p in sorted(missing))
        first = min(missing)
        raise LesiondiffError(
            f"{out}: cannot merge: part{'s' if len(missing) > 1 else ''} {parts} not finished ({sum(missing.values())} "
            f"of {len(job['inputs'])} images not predicted); run predict with the same inputs and --part "
            f"{first}/{count} --out {out}, then lesiondiff predict --merge {out}; nothing was written")
    folder.reload(verify)
    finished = job.get("finished", {})
    first = finished[min(finished, key=int)] if finished else {}
    speed = speed_figures(folder.rows(), int(job["meta"]["samples"]), first.get("device", "unrecorded"),
                          first.get("threads", 0), count, None, None, parts=finished)
    rows = write_tables(folder, job["meta"], job.get("selective"), job.get("split"), speed)
    (out / JOB).unlink(missing_ok=True)
    log(f"merged {count} parts into {out / 'predictions.csv'} and predict.json ({len(rows)} images)")
    return rows
