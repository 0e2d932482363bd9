"""One runner for the multi-run experiments (``lesiondiff compare``, ``ablate``, ``cv``).

The three commands differ only in which runs they plan and which tables they write (``compare.py``,
``ablate.py``, ``crossval.py`` beside this module). What they share is here: the settings every run of an
experiment shares (:class:`ExperimentSettings`, :func:`run_config`, :func:`sampling`), the run spec, the
train -> predict -> evaluate step over a plan, the state file (``<command>.json``) rewritten after every phase,
and the table writer.

Whether a phase has work to do is decided from the run folder's own files (``engine/phases.py``): a finished
run is not retrained, an interrupted one is resumed, a run trained with another config is refused, not mixed
in, and predictions and evaluations are redone only when out of date. The state file only reports progress.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..engine.phases import evaluate_phase, predict_phase, train_phase
from ..engine.predict import collect_inputs
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..presets import load_preset

CLOCK_NAMES = {"wall": "wall clock", "process": "the run's CPU time (process time, all threads; train.clock)"}
TRAIN_KEYS = ("action", "status", "step", "elapsed_s", "best_val_dice", "best_step", "parameters")


@dataclass(kw_only=True)
class ExperimentSettings:
    """What every run of one experiment shares; the settings of ``compare``, ``ablate`` and ``cv`` extend it."""

    manifest: str
    budget_minutes: float  # training budget per run, minutes of ``train.clock``
    out: str
    size: int = 128
    seed: int = 0
    samples: int | None = None  # None: the preset's
    sampler: str | None = None  # diffusion runs; None: the preset's
    steps: int | None = None
    max_steps: int = 1_000_000
    device: str | None = None
    overrides: list[str] = field(default_factory=list)
    recipe: str | None = None  # the training recipe (config.DEFAULT_RECIPE when None; "paper": the papers' own)


def check(s: ExperimentSettings) -> None:
    """One-line errors, before any work, for a training budget <= 0 and fewer than one sample per image."""
    if s.budget_minutes <= 0:
        raise LesiondiffError(f"--budget-minutes must be > 0, got {s.budget_minutes}")
    if s.samples is not None and s.samples < 1:
        raise LesiondiffError(f"--samples must be >= 1, got {s.samples}")


def run_config(s: ExperimentSettings, preset: str, before: Sequence[str] = (), after: Sequence[str] = ()) -> Config:
    """The preset with ``s.recipe``, then the shared settings (manifest, size, seed, budget, step cap), then
    ``before``, the user's overrides and ``after``, in that order: later ones win."""
    return load_preset(preset, s.recipe).override([
        f"data.manifest={Path(s.manifest).resolve()}", f"data.size={s.size}", f"train.seed={s.seed}",
        f"train.max_minutes={s.budget_minutes}", f"train.steps={s.max_steps}", *before, *s.overrides, *after])


def sampling(s: ExperimentSettings, defaults: Config, mode: str) -> dict:
    """How one run is sampled, in the keys ``predict.json`` records: ``--samples/--sampler/--steps`` when given,
    else ``defaults``'s; feed-forward ``mode``: the one-shot sampler, one step (one network evaluation per
    sample); fusion: ``defaults``'s. The one rule of all three experiments."""
    if mode == "feedforward":
        sampler, steps = "oneshot", 1
    else:
        sampler, steps = s.sampler or defaults.sample.sampler, s.steps or defaults.sample.steps
    return {"samples": s.samples or defaults.sample.samples, "sampler": sampler, "steps": steps, "seed": s.seed,
            "fusion": defaults.fusion.method}


@dataclass
class RunSpec:
    """One run of a plan: trained with ``cfg`` in ``folder/train``, sampled with ``sampling`` (keys of
    ``predict.json``), predicted and evaluated on ``split``."""

    name: str  # the run's name in the log and the state (and its folder's name under ``out``)
    cfg: Config | None  # None only for a skipped run
    sampling: dict | None
    folder: Path
    split: str
    entry: dict = field(default_factory=dict)  # what the state says of the run before it starts
    key: str = ""  # its key in the state's table of runs ("": name)
    tag: str = ""  # the log prefix ("": "[k/n] name")
    skip: str | None = None  # why the plan lists the run but does not run it
    train_from: Path | None = None  # another run's folder whose training this run reuses


@dataclass
class State:
    """An experiment's progress file: the document, where it is written and which key holds the runs."""

    path: Path
    doc: dict
    table: str = "runs"

    @property
    def runs(self) -> dict:
        return self.doc[self.table]

    def save(self) -> None:
        """Write the document atomically, stamped with the time."""
        self.doc["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        atomic_write_text(self.path, json.dumps(self.doc, indent=2))


@dataclass
class Outcome:
    """What running a plan gave: the inputs of each split, each run's training and evaluation summaries, and
    the command's result when Ctrl-C stopped a training (None otherwise)."""

    inputs: dict[str, list[tuple[str, str]]]
    trained: dict[str, dict] = field(default_factory=dict)
    evaluated: dict[str, dict] = field(default_factory=dict)
    interrupted: dict | None = None


# what a command adds to a run's state entry once it is evaluated: (entry, train summary, evaluation summary)
Record = Callable[[dict, dict, dict], None]


def run_plan(specs: list[RunSpec], state: State, s: ExperimentSettings, log: Callable[[str], None] = print,
             record: Record | None = None) -> Outcome:
    """Train, predict and evaluate every run of ``specs`` in turn (each phase skipped when its files are
    current), rewriting ``state`` after every phase; stops at the first training that Ctrl-C interrupts."""
    inputs = {split: collect_inputs([], s.manifest, split) for split in dict.fromkeys(x.split for x in specs)}
    state.path.parent.mkdir(parents=True, exist_ok=True)  # after the inputs: a bad split leaves no folder
    outcome = Outcome(inputs)
    for k, spec in enumerate(specs, 1):
        tag = spec.tag or f"[{k}/{len(specs)}] {spec.name}"
        entry = state.runs[spec.key or spec.name] = dict(spec.entry)
        if spec.skip:
            entry.update(status="skipped", reason=spec.skip)
            log(f"{tag}: skipped: {spec.skip}")
            state.save()
        elif not run_one(spec, entry, outcome, s, state, tag, log, record):
            outcome.interrupted = interrupted_result(state.runs, spec.name, outcome.trained[spec.name]["step"])
            return outcome
    return outcome


def run_one(spec: RunSpec, entry: dict, outcome: Outcome, s: ExperimentSettings, state: State, tag: str,
            log: Callable[[str], None], record: Record | None = None) -> bool:
    """The shared step: train (or reuse) -> predict -> evaluate one run, into ``outcome`` and ``entry``.
    False when the training was interrupted."""
    trained = outcome.trained[spec.name] = train(spec, entry, s.device, tag, log)
    if trained["status"] == "interrupted":
        state.save()
        return False
    advance(entry, state, "trained")
    train_dir = (spec.train_from or spec.folder) / "train"
    items = outcome.inputs[spec.split]
    entry["predictions"] = predict_phase(spec.folder, spec.sampling, items, s.device, train_dir)
    log(f"{tag}: predictions of {spec.split}: {entry['predictions']}")
    advance(entry, state, "predicted")
    ev, entry["evaluation"] = evaluate_phase(spec.folder, s.manifest, spec.split)
    log(f"{tag}: evaluation: {entry['evaluation']}")
    outcome.evaluated[spec.name] = ev
    if record:
        record(entry, trained, ev)
    entry["evaluation_summary"] = f"{spec.name}/evaluation/summary.json"
    advance(entry, state, "evaluated")
    return True


def advance(entry: dict, state: State, status: str) -> None:
    """Record that a run reached ``status`` and save the state, so an interruption loses no progress."""
    entry["status"] = status
    state.save()


def train(spec: RunSpec, entry: dict, device: str | None, tag: str, log: Callable[[str], None]) -> dict:
    """Train, resume or skip one run (``engine.phases.train_phase``), or read the summary of the run whose
    training it reuses; ``entry["train"]`` records what happened. Returns the training summary."""
    if spec.train_from is not None:
        entry["train"] = f"reuses {spec.train_from.name}"
        return json.loads((spec.train_from / "train" / "summary.json").read_text(encoding="utf-8"))
    summary = train_phase(spec.cfg, spec.folder, device, log=lambda msg: log(f"{tag}: {msg}"))
    entry["train"] = {key: summary.get(key) for key in TRAIN_KEYS}
    if summary["status"] == "interrupted":
        entry["status"] = "interrupted"
    else:
        log(f"{tag}: training: {summary['action']}; at step {summary['step']} ({summary['status']}, "
            f"{summary['elapsed_s']} s of training in all)")
    return summary


def interrupted_result(runs: dict, name: str, step: int) -> dict:
    """What an experiment returns when Ctrl-C stopped the training of run ``name`` at ``step``."""
    return {"status": "interrupted", "runs": runs,
            "text": f"interrupted while training {name} at step {step}; run the same command again to continue "
                    "from its last checkpoint"}


def write_tables(out: Path, stem: str, text: str, columns: Sequence[str] = (), rows: Sequence[dict] = ()) -> None:
    """``stem.md``: the printed text; with ``columns``, ``stem.csv`` too: one line per row, those columns
    only, None as an empty cell."""
    if columns:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / f"{stem}.csv", buffer.getvalue())
    atomic_write_text(out / f"{stem}.md", text + "\n")
