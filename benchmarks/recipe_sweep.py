"""The training-recipe sweep behind presets/recipes/fast.yaml: one preset trained under several recipes on the
same manifest, size, seed and CPU-time budget, scored by the best validation Dice each reached (never the test
split). Writes sweep.md and sweep.json to --out; finished arms are skipped when rerun.

    python benchmarks/recipe_sweep.py --manifest busi.csv --preset unet --minutes 8 --size 128 --out runs/sweep

Each arm runs as its own ``lesiondiff train`` process with one thread (OMP_NUM_THREADS=1,
OMP_WAIT_POLICY=PASSIVE), ``--jobs`` at a time, with ``train.clock=process`` so that arms sharing the cores
still get the same CPU time. Validation: every image of the validation split (data.val_max_images=10000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# name -> (recipe, overrides laid over it)
ARMS = {
    "paper (constant 1e-4, EMA 0.999, flip + rot90)": ("paper", []),
    "cosine 1e-3": ("fast", ["train.lr=1e-3"]),
    "cosine 3e-4": ("fast", ["train.lr=3e-4"]),
    "cosine 3e-3": ("fast", ["train.lr=3e-3"]),
    "constant 3e-4": ("fast", ["train.lr=3e-4", "train.schedule=constant", "train.warmup=0"]),
    "cosine 3e-4, flip + rot90": ("fast", ["train.lr=3e-4", "data.augment=[flip,rot90]"]),
}


def run_arm(key: int, name: str, args) -> dict:
    recipe, overrides = ARMS[name]
    out = Path(args.out) / f"arm{key}"
    summary_path = out / "summary.json"
    if not (summary_path.is_file() and json.loads(summary_path.read_text())["status"] != "interrupted"):
        resume = ["--resume"] if (out / "checkpoints" / "last.safetensors").is_file() else []
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        cmd = [sys.executable, "-m", "lesiondiff.cli", "train", "--preset", args.preset, "--manifest", args.manifest,
               "--out", str(out), "--recipe", recipe, *resume, f"data.size={args.size}", "train.steps=1000000",
               f"train.max_minutes={args.minutes}", "train.clock=process", f"train.seed={args.seed}",
               "train.val_every=100", "data.val_max_images=10000", *overrides]
        with (Path(args.out) / f"arm{key}.log").open("w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    s = json.loads(summary_path.read_text())
    return {"arm": name, "recipe": recipe, "overrides": overrides, "steps": s["step"],
            "cpu_minutes": round(s["elapsed_s"] / 60, 1), "best_val_dice": s["best_val_dice"],
            "best_step": s["best_step"], "val_images": s["val_images"],
            "val_dice_per_cpu_minute": round(s["best_val_dice"] / (s["elapsed_s"] / 60), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--preset", default="unet")
    p.add_argument("--minutes", type=float, default=8.0, help="CPU minutes (process time) per arm")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--arms", default="", help="comma-separated arm numbers (default: all)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    names = list(ARMS)
    keys = [int(k) for k in args.arms.split(",")] if args.arms else list(range(len(names)))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda k: run_arm(k, names[k], args), keys))
    # the table holds every finished arm, also those of earlier invocations (--arms)
    finished = [k for k in range(len(names)) if (Path(args.out) / f"arm{k}" / "summary.json").is_file()]
    rows = [run_arm(k, names[k], args) for k in finished]
    lines = [f"Recipe sweep: preset {args.preset}, {args.manifest}, {args.size} px, seed {args.seed}, "
             f"{args.minutes:g} CPU minutes per arm (train.clock=process, one thread each); best validation Dice "
             "(EMA weights, threshold 0.5, per-image mean over the whole validation split, at the network size).",
             "", "| arm (fast recipe unless named: warm-up 50, weight decay 1e-4, clip 1, batch 8, EMA 0.99, flip) | steps | best val Dice | at step | val Dice per CPU minute |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['arm']} | {r['steps']} | {r['best_val_dice']:.4f} | {r['best_step']} | "
              f"{r['val_dice_per_cpu_minute']:.4f} |" for r in rows]
    (Path(args.out) / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (Path(args.out) / "sweep.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
