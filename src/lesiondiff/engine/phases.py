"""Train, predict and evaluate one run folder, resumably and without redoing finished work.

The phases of every run of the multi-run experiments (``lesiondiff compare``, ``ablate``, ``cv``), run in turn by
``experiments/runner.py``. A run folder holds
    train/         a run directory (config.yaml, checkpoints/, log.csv, summary.json)
    predictions/   ``lesiondiff predict`` output for the split
    evaluation/    metrics.csv, summary.json, reliability.png, rounds.md
and each phase decides from those files alone whether it has work to do:
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
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from .checkpoint import run_checkpoint
from .evaluate import evaluate
from .outputs import read_predictions
from .predict import Predictor
from .runs import train_in

CHECKPOINT = "best"


def train_phase(cfg: Config, run: Path, device: str | None, log: Callable[[str], None] = print) -> dict:
    """Train, resume or skip one run of an experiment (``run/train``); returns its summary plus ``action``."""
    return train_in(cfg, run / "train", device, log)


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


def predict_phase(run: Path, wanted: dict, items: list[tuple[str, str]], device: str | None,
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


def evaluate_phase(run: Path, manifest: str, split: str) -> tuple[dict, str]:
    """Evaluate ``run/predictions`` on ``split`` into ``run/evaluation``, unless a current evaluation exists;
    returns its summary and what was done."""
    pred_dir, eval_dir = run / "predictions", run / "evaluation"
    path = eval_dir / "summary.json"
    if path.is_file() and path.stat().st_mtime_ns >= (pred_dir / "predictions.csv").stat().st_mtime_ns:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("split") == split and summary.get("manifest") == str(manifest) \
                and "calibration" in summary and "rounds" in summary:
            return summary, "skipped (newer than its predictions)"
    return evaluate(pred_dir, manifest, split, out=eval_dir), "evaluated"

