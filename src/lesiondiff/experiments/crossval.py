"""k-fold cross-validation of one preset over a manifest's folds, per dataset: ``lesiondiff cv``.

UniSegDiff's "unified lesion segmentation" trains one model over several lesion datasets at once and reports
4-fold cross-validation, mDice and mIoU per dataset (its Table 3). ``lesiondiff data index A B C --folds 4``
writes such a manifest: every row names its dataset, and the folds are stratified by dataset and label, so
each fold holds every dataset's share. For each fold k this trains the preset with ``data.fold=k`` (train on
the other folds' rows, validate on fold k: ``data.dataset.select_rows``), predicts fold k's rows and
evaluates them as split ``fold:k`` (``Manifest.select``). This module holds the plan (one run per fold),
the protocol line and the tables; the runs are trained, sampled and scored by ``experiments/runner.py`` into the
usual run, prediction and evaluation folders (``engine/phases.py``), so each can be inspected or rerun alone.

Layout of ``out/``:
    fold-<k>/      a run folder (train/, predictions/, evaluation/)
    cv.json        progress, settings, per-fold figures and the aggregate, rewritten after every phase
    cv.md          the protocol line and the tables (Table 3 form, then one row per fold)

Choices, stated once here and again in the protocol line printed above the table:
- Every fold gets the same preset, manifest, network size, seed, training budget (wall-clock minutes per
  fold) and step cap, and is sampled the same way (``--sampler``, ``--steps``, ``--samples``, else the
  preset's; fused by the preset's fusion). The config is the preset, then those settings, then the user's
  overrides, then ``data.fold=k`` (the fold is this command's to set).
- The test split is held out: its rows have fold -1 and are neither trained on nor evaluated. Rows outside
  the test split with fold -1 (``--train-only`` labels, e.g. BUSI's normal images) train every fold and are
  never evaluated.
- The checkpoint predicted with is ``best``: the highest validation Dice during training, and the validation
  rows of fold k are the rows it is evaluated on (at most ``data.val_max_images`` of them), so the selection
  has seen the evaluated fold; ``train.val_every`` larger than the step cap leaves only the last checkpoint.
- Per fold: mDice and mIoU are per-image means over the fold's images (fused mask, original size, threshold
  of the predictions, 0.5 unless overridden), in %, overall and per dataset (``summary["datasets"]`` of the
  evaluation). Over folds: mean ± sample standard deviation (ddof = 1) of the K fold means; one fold gives
  no standard deviation.
- Resumable and idempotent from the files themselves: a finished fold is not retrained, re-predicted or
  re-evaluated; an interrupted one resumes; a fold trained with other settings is refused, not mixed in, and
  so is a folder made from other folds (cv.json keeps a fingerprint of every row's split and fold: a manifest
  indexed again with another seed would otherwise let a fold's model have trained on the rows it is scored on).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.manifest import Manifest
from ..engine.phases import CHECKPOINT
from ..errors import LesiondiffError
from . import runner
from .runner import CLOCK_NAMES, ExperimentSettings, RunSpec, State, run_plan, sampling, write_tables

METRICS = ("dice", "iou")
HEADERS = {"dice": "mDice %", "iou": "mIoU %"}


@dataclass(kw_only=True)
class CVSettings(ExperimentSettings):
    """What ``lesiondiff cv`` was asked to do; the same for every fold."""

    preset: str
    folds: int | None = None  # run folds 0..folds-1 (None: every fold of the manifest)


def fold_numbers(manifest: Manifest, wanted: int | None, path: str) -> list[int]:
    """The folds to run: the first ``wanted`` of the manifest's folds (None: all of them)."""
    folds = manifest.folds()
    if not folds:
        raise LesiondiffError(f"{path}: no folds; index the data with lesiondiff data index ... --folds K "
                              "(e.g. --folds 4)")
    if wanted is None:
        return folds
    if not 1 <= wanted <= len(folds):
        raise LesiondiffError(f"--folds {wanted}: {path} has {len(folds)} folds ({', '.join(map(str, folds))})")
    return folds[:wanted]


def folds_fingerprint(manifest: Manifest) -> str:
    """SHA-256 of every row's id, split and fold: equal exactly when the cross-validation partition is."""
    text = "\n".join(sorted(f"{r['id']}\t{r['split']}\t{r['fold']}" for r in manifest.rows()))
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_folds(out: Path, fingerprint: str, manifest: str) -> None:
    """Refuse an ``out`` whose earlier cv.json was made from another partition into folds."""
    try:
        before = json.loads((out / "cv.json").read_text(encoding="utf-8")).get("folds_fingerprint")
    except (OSError, ValueError):
        return
    if before and before != fingerprint:
        raise LesiondiffError(f"{out}: made from other folds than those of {manifest} now (indexed again?); "
                              "choose another --out or delete it to start over")


def run_config(s: CVSettings, k: int) -> Config:
    """The preset, the shared settings, the user's overrides, then ``data.fold=k``."""
    return runner.run_config(s, s.preset, after=[f"data.fold={k}"])


def plan(s: CVSettings, folds: list[int]) -> list[RunSpec]:
    """One run per fold: ``fold-<k>`` trains with ``data.fold=k`` and is predicted and evaluated on split
    ``fold:k``, every fold sampled the same way (the given settings, else the run config's)."""
    specs = []
    for k in folds:
        cfg = run_config(s, k)
        specs.append(RunSpec(f"fold-{k}", cfg, sampling(s, cfg, cfg.diffusion.mode), Path(s.out) / f"fold-{k}",
                             f"fold:{k}", {"fold": k, "status": "started"}, key=str(k),
                             tag=f"[fold {k + 1}/{len(folds)}]"))
    return specs


def fold_figures(summary: dict) -> dict:
    """One fold's evaluation summary -> ``{"n_images", "dice_pct", "iou_pct", "datasets": {name: same}}``:
    per-image means of the fused masks, in %."""

    def figures(n: int, stats: dict) -> dict:
        return {"n_images": n, **{f"{m}_pct": 100 * stats[m]["mean"] for m in METRICS}}

    return {**figures(summary["n_images"], summary["fused"]["all"]),
            "datasets": {name: figures(d["n_images"], d["fused"])
                         for name, d in (summary.get("datasets") or {}).items()}}


def over_folds(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof = 1; None for one value) of per-fold figures."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None, "n_folds": int(a.size),
            "per_fold": [float(v) for v in a]}


def aggregate(figures: dict[int, dict]) -> dict:
    """``{"overall": {"dice_pct": over_folds(...), "iou_pct": ...}, "datasets": {name: same}}`` over the folds'
    ``fold_figures`` (a dataset missing from a fold is aggregated over the folds that have it)."""
    folds = [figures[k] for k in sorted(figures)]
    names = sorted({name for f in folds for name in f["datasets"]})
    return {"overall": {f"{m}_pct": over_folds([f[f"{m}_pct"] for f in folds]) for m in METRICS},
            "datasets": {name: {f"{m}_pct": over_folds([f["datasets"][name][f"{m}_pct"] for f in folds
                                                        if name in f["datasets"]]) for m in METRICS}
                         for name in names}}


def crossval(s: CVSettings, log: Callable[[str], None] = print) -> dict:
    """Train, predict and evaluate every fold (skipping finished stages), then write cv.json and cv.md.

    Returns ``{"status": "done" | "interrupted", "folds": {...}, "aggregate": {...}, "text": the printed
    tables}``. On Ctrl-C during training the Trainer saves the last checkpoint and this returns
    ``interrupted``; calling again with the same settings continues from there.
    """
    runner.check(s)
    manifest = Manifest.read(s.manifest)
    folds = fold_numbers(manifest, s.folds, s.manifest)
    fingerprint = folds_fingerprint(manifest)
    check_same_folds(Path(s.out), fingerprint, s.manifest)
    doc = {"settings": asdict(s), "folds_fingerprint": fingerprint, "folds": {}}
    state = State(Path(s.out) / "cv.json", doc, table="folds")
    specs = plan(s, folds)
    outcome = run_plan(specs, state, s, log, record=_record)
    if outcome.interrupted:
        return {**outcome.interrupted, "aggregate": None}
    return _finish(s, state, manifest, folds, specs[-1].sampling)


def _record(entry: dict, trained: dict, ev: dict) -> None:
    """What cv.json keeps of an evaluated fold: where and on how many images it trained, its figures."""
    entry.update(device=trained.get("device"), train_images=trained.get("train_images"),
                 figures=fold_figures(ev), threshold=ev["threshold"])


def _finish(s: CVSettings, state: State, manifest: Manifest, folds: list[int], sampled: dict) -> dict:
    """Aggregate the folds, write cv.md and the final cv.json; the command's result."""
    entries, doc = state.runs, state.doc
    doc["aggregate"] = aggregate({e["fold"]: e["figures"] for e in entries.values()})
    doc["protocol"] = protocol(s, manifest, folds, entries, sampled)
    text = format_cv(s.preset, doc["protocol"], doc["aggregate"], entries)
    write_tables(Path(s.out), "cv", text)
    doc["outputs"] = {"markdown": "cv.md"}
    doc["status"] = "done"
    state.save()
    return {"status": "done", "folds": entries, "aggregate": doc["aggregate"], "text": text}


def protocol(s: CVSettings, manifest: Manifest, folds: list[int], entries: dict, sampled: dict) -> str:
    """How every number of the tables was made, in one paragraph."""
    n_test = len(manifest.rows(split="test"))
    extra = sum(r["fold"] < 0 and r["split"] != "test" for r in manifest.rows())
    evaluated = sum(e["figures"]["n_images"] for e in entries.values())
    steps = ", ".join(f"fold {e['fold']} {e['train']['step']}" for e in entries.values())
    devices = sorted({str(e.get("device")) for e in entries.values()})
    thresholds = sorted({e["threshold"] for e in entries.values()})
    of_all = f"folds {', '.join(map(str, folds))} of {len(manifest.folds())}"
    how = ("one network evaluation each (feed-forward)" if sampled["sampler"] == "oneshot"
           else f"{sampled['sampler']} {sampled['steps']} steps")
    return (f"Protocol: {len(folds)}-fold cross-validation on {s.manifest} ({of_all}; {evaluated} images "
            f"evaluated, each once, by the model that did not train on it): fold k trains on the other folds' rows"
            f"{f' and the {extra} train-only rows (fold -1)' if extra else ''} and is evaluated on its own rows; "
            f"the {n_test} test-split rows are held out (neither trained on nor evaluated). Preset {s.preset}, "
            f"size {s.size} px, seed {s.seed}, training budget {s.budget_minutes:g} min of "
            f"{CLOCK_NAMES.get(run_config(s, folds[0]).train.clock, 'wall clock')} per fold, at most "
            f"{s.max_steps} steps (steps reached: {steps}); checkpoint {CHECKPOINT} (highest validation Dice on "
            f"the evaluated fold itself); S = {sampled['samples']} samples per image, {how}, fused by "
            f"{sampled['fusion']}, threshold "
            f"{', '.join(str(t) for t in thresholds)} (prob >= threshold); device {', '.join(devices)}. mDice and "
            "mIoU: per-image mean over a fold's images at the original image size, in %, per dataset and overall; "
            f"mean ± sample std (ddof = 1) over the {len(folds)} fold means.")


def _cell(stats: dict) -> str:
    std = "–" if stats["std"] is None else f"{stats['std']:.2f}"
    return f"{stats['mean']:.2f} ± {std}"


def format_cv(preset: str, protocol_line: str, agg: dict, entries: dict) -> str:
    """The protocol line, the Table 3 form (rows: preset; columns: each dataset's mDice and mIoU, then the
    overall ones), then one row per fold."""
    names = list(agg["datasets"])
    groups = [*((f"{n} ", agg["datasets"][n]) for n in names), ("overall ", agg["overall"])]
    head = [*(f"{g}{HEADERS[m]}" for g, _ in groups for m in METRICS)]
    lines = [protocol_line, "", "| preset | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1),
             f"| {preset} | " + " | ".join(_cell(stats[f"{m}_pct"]) for _, stats in groups for m in METRICS) + " |",
             "", "Per fold (per-image means, %):", "",
             "| fold | images | steps | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 3)]
    for e in entries.values():
        f = e["figures"]
        cells = [f"{f['datasets'][n][f'{m}_pct']:.2f}" if n in f["datasets"] else "–" for n in names for m in METRICS]
        cells += [f"{f[f'{m}_pct']:.2f}" for m in METRICS]
        lines.append(f"| {e['fold']} | {f['n_images']} | {e['train']['step']} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± std: over the folds' per-image means, sample standard deviation (ddof = 1); –: not "
              "defined (one fold) or the dataset has no image in that fold."]
    return "\n".join(lines)
