"""Train, predict and evaluate one run folder, resumably and without redoing finished work.

Shared by the multi-run experiments (``lesiondiff compare``, ``lesiondiff ablate``, ``lesiondiff cv``), with the
settings every run of one experiment shares (:func:`experiment_config`, :func:`sampling_settings`). A run
folder holds
    train/         a run directory (config.yaml, checkpoints/, log.csv, summary.json)
    predictions/   ``lesiondiff predict`` output for the split
    evaluation/    metrics.csv, summary.json, reliability.png, rounds.md
and each stage decides from those files alone whether it has work to do:
- training: a run whose summary says ``finished`` or ``time budget reached`` is not retrained; one with
  ``checkpoints/last.safetensors`` but no such summary is resumed. A run trained with a different config is
  refused, not mixed in;
- predictions are redone only when they miss an image of the split, were made with other sampling settings,
  or are older than the checkpoint they come from;
- an evaluation only when it is missing, older than its predictions, or of another split or manifest.
Predictions use the ``best`` checkpoint (highest validation Dice; ``last`` when there is none).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import Config, load_preset
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from .checkpoint import run_checkpoint
from .evaluate import evaluate
from .outputs import read_predictions
from .predict import Predictor
from .train import train_in

CLOCK_NAMES = {"wall": "wall clock", "process": "the run's CPU time (process time, all threads; train.clock)"}
CHECKPOINT = "best"


def experiment_config(preset: str, manifest: str, size: int, seed: int, budget_minutes: float, max_steps: int,
                      overrides: Sequence[str] = (), recipe: str | None = None) -> Config:
    """The preset with its training ``recipe`` (None: the default), then an experiment's shared settings
    (manifest, network size, training seed, wall-clock budget per run, step cap), then ``overrides`` (which
    therefore win)."""
    return load_preset(preset, recipe).override([
        f"data.manifest={Path(manifest).resolve()}", f"data.size={size}", f"train.seed={seed}",
        f"train.max_minutes={budget_minutes}", f"train.steps={max_steps}", *overrides])


def sampling_settings(defaults: Config, mode: str, seed: int, samples: int | None = None, sampler: str | None = None,
                      steps: int | None = None) -> dict:
    """How one run is sampled, in the keys ``predict.json`` records (for :func:`predict_stage`): ``samples``,
    ``sampler`` and ``steps`` as given, else ``defaults``'s; feed-forward ``mode``: the one-shot sampler, one
    step; ``fusion``: ``defaults``'s."""
    if mode == "feedforward":
        sampler, steps = "oneshot", 1
    else:
        sampler, steps = sampler or defaults.sample.sampler, steps or defaults.sample.steps
    return {"samples": samples or defaults.sample.samples, "sampler": sampler, "steps": steps, "seed": seed,
            "fusion": defaults.fusion.method}


def check_budget(budget_minutes: float, samples: int | None) -> None:
    """One-line errors for a training budget <= 0 and fewer than one sample per image."""
    if budget_minutes <= 0:
        raise LesiondiffError(f"--budget-minutes must be > 0, got {budget_minutes}")
    if samples is not None and samples < 1:
        raise LesiondiffError(f"--samples must be >= 1, got {samples}")


def train_stage(cfg: Config, run: Path, device: str | None, log: Callable[[str], None] = print) -> dict:
    """Train, resume or skip one run of an experiment (``run/train``); returns its summary plus ``action``."""
    return train_in(cfg, run / "train", device, log)


TRAIN_KEYS = ("action", "status", "step", "elapsed_s", "best_val_dice", "best_step", "parameters")


def train_recorded(cfg: Config, run: Path, device: str | None, entry: dict, tag: str,
                   log: Callable[[str], None] = print) -> dict:
    """``train_stage`` for one run of an experiment: its summary's ``TRAIN_KEYS`` go to ``entry["train"]``;
    an interrupted run sets ``entry["status"]``, a finished one logs where it stopped. Returns the summary."""
    summary = train_stage(cfg, run, device, log=lambda msg: log(f"{tag}: {msg}"))
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


def predictions_current(pred_dir: Path, wanted: dict, ids: list[str], checkpoint: Path) -> bool:
    """True when ``pred_dir`` covers ``ids`` with the ``wanted`` sampling settings and is newer than the
    checkpoint it would be made from."""
    table, meta_path = pred_dir / "predictions.csv", pred_dir / "predict.json"
    if not (table.is_file() and meta_path.is_file()):
        return False
    rows, meta = read_predictions(pred_dir)
    if any(meta.get(k) != v for k, v in wanted.items()) or not set(ids) <= set(rows):
        return False
    return not checkpoint.is_file() or table.stat().st_mtime_ns >= checkpoint.stat().st_mtime_ns


def predict_stage(run: Path, wanted: dict, items: list[tuple[str, str]], device: str | None,
                  train_dir: Path | None = None) -> str:
    """Predict ``items`` with the ``best`` checkpoint of ``train_dir`` (default: the run's own ``train/``) and
    the ``wanted`` sampling settings (keys of ``predict.json``: samples, sampler, steps, seed, and optionally
    fusion) into ``run/predictions``, unless current predictions exist."""
    pred_dir, train_dir = run / "predictions", train_dir or run / "train"
    wanted = {**wanted, "checkpoint": CHECKPOINT}
    if predictions_current(pred_dir, wanted, [i for i, _ in items], run_checkpoint(train_dir)):
        return "skipped (current predictions cover the split)"
    overrides = [f"sample.{k}={wanted[k]}" for k in ("samples", "sampler", "steps", "seed")]
    if "fusion" in wanted:
        overrides.append(f"fusion.method={wanted['fusion']}")
    Predictor.from_run(train_dir, CHECKPOINT, device, overrides).run(items, pred_dir, checkpoint=CHECKPOINT,
                                                                    overwrite=True)  # not current: replaced
    return "predicted"


def evaluate_stage(run: Path, manifest: str, split: str) -> tuple[dict, str]:
    pred_dir, eval_dir = run / "predictions", run / "evaluation"
    path = eval_dir / "summary.json"
    if path.is_file() and path.stat().st_mtime_ns >= (pred_dir / "predictions.csv").stat().st_mtime_ns:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("split") == split and summary.get("manifest") == str(manifest) \
                and "calibration" in summary and "rounds" in summary:
            return summary, "skipped (newer than its predictions)"
    return evaluate(pred_dir, manifest, split, out=eval_dir), "evaluated"


def write_state(path: Path, state: dict) -> None:
    """Write an experiment's progress file atomically, stamped with the time."""
    state["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_text(path, json.dumps(state, indent=2))
