"""Shared pieces of the benchmark scripts: run ``lesiondiff`` sub-commands with one thread each, train a
preset under a recipe on a CPU-time budget (resuming an interrupted run, skipping a finished one), predict and
evaluate a split, and read per-image Dice and one table row back from the outputs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from lesiondiff.engine.evaluate import fused_metrics

LESIONDIFF = [sys.executable, "-m", "lesiondiff.cli"]


def parse(p: argparse.ArgumentParser, minutes: float, size: int, threads: int) -> tuple[argparse.Namespace, Path]:
    """Add the options every benchmark has (manifest, CPU minutes per training, size, seed, prediction threads,
    output folder, config overrides), parse, and return the arguments (manifest made absolute) and the output
    folder, created."""
    p.add_argument("--manifest", required=True)
    p.add_argument("--minutes", type=float, default=minutes, help="CPU minutes (process time) per training")
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=threads, help="threads of each prediction (after training)")
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*", help="config overrides for every training")
    a = p.parse_args()
    a.manifest = str(Path(a.manifest).resolve())
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    return a, root


def sh(args: list[str], log: Path, threads: int = 1) -> None:
    """Run ``lesiondiff ARGS`` with ``threads`` OpenMP threads (passive waiting), appending to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    with log.open("a") as f:
        f.write("+ lesiondiff " + " ".join(args) + "\n")
        f.flush()
        subprocess.run([*LESIONDIFF, *args], env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def done(path: Path) -> bool:
    return path.is_file()


def train(preset: str, a, run: Path, recipe: str, overrides: list[str] = (), val_every: int = 100) -> Path:
    """``lesiondiff train`` of ``preset`` under ``recipe`` for ``a.minutes`` of process time at ``a.size`` px,
    seed ``a.seed`` (``a.overrides`` and ``overrides`` laid over it), one thread. Skipped when finished."""
    summary = run / "summary.json"
    if summary.is_file() and json.loads(summary.read_text())["status"] != "interrupted":
        return run
    resume = ["--resume"] if (run / "checkpoints" / "last.safetensors").is_file() else []
    sh(["train", "--preset", preset, "--recipe", recipe, "--manifest", a.manifest, "--out", str(run), *resume,
        f"data.size={a.size}", "train.steps=1000000", f"train.max_minutes={a.minutes}", "train.clock=process",
        f"train.seed={a.seed}", f"train.val_every={val_every}", *a.overrides, *overrides],
       run.parent / f"{run.name}.log")
    return run


def predict_eval(run: Path, a, split: str, out: Path, extra: list[str], log: Path) -> dict:
    """Predict ``split`` with the run's best checkpoint (seed ``a.seed``, ``a.threads`` threads), evaluate it,
    return the evaluation summary. Skipped when its summary exists."""
    if not done(out / "summary.json"):
        sh(["predict", "--run", str(run), "--manifest", a.manifest, "--split", split, "--out", str(out),
            "--seed", str(a.seed), *extra], log, a.threads)
        sh(["evaluate", "--pred", str(out), "--manifest", a.manifest, "--split", split], log, a.threads)
    return json.loads((out / "summary.json").read_text())


def per_image_dice(pred_dir: Path) -> dict[str, float]:
    """Fused per-image Dice by image id, from an evaluated prediction folder's metrics.csv."""
    return {r["id"]: float(r["dice"]) for r in fused_metrics(pred_dir)}


def lesion_ids(pred_dir: Path) -> list[str]:
    """Ids of the images whose label is not ``normal`` (images with a lesion), from metrics.csv."""
    return sorted({r["id"] for r in fused_metrics(pred_dir) if r["label"] != "normal"})


def row(name: str, s: dict) -> dict:
    """One table row from an evaluation summary: lesion-image and overall Dice, normal images predicted empty,
    per-image ECE, sampling time per image."""
    il = s["image_level"]
    speed = s["prediction_settings"]["speed"]
    return {"run": name, "lesion_dice": s["lesion_images"]["dice"]["mean"],
            "lesion_iou": s["lesion_images"]["iou"]["mean"], "dice": s["fused"]["all"]["dice"]["mean"],
            "normal_empty": il.get("normal_predicted_empty", il["specificity"]),
            "normal_n": il.get("normal_images", il["empty_images"]),
            "ece": s["calibration"]["ece_per_image"]["mean"],
            "s_per_image": speed["sampling_s"] / max(1, speed["images"]),
            "samples": s["prediction_settings"]["samples"], "postprocess": s["postprocess"]}


def interval_cells(d: dict) -> str:
    """A paired difference's mean and 95 % interval, in percentage points: "+1.04 | [-1.70, +4.10]"."""
    return f"{100 * d['mean']:+.2f} | [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"


def empty_cell(r: dict) -> str:
    return f"{100 * r['normal_empty']:.1f} % of {r['normal_n']}" if r["normal_n"] else "– (none lesion-free)"
