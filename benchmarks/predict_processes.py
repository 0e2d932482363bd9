"""Prediction throughput of one process against several on the same machine, measured side by side.

    python benchmarks/predict_processes.py --model busi --images busi48/ --out runs/predict_processes --rounds 3

Each round predicts the same images into a fresh folder once per setting, the settings in a rotated order
(round r starts with setting r), so that a load that changes over time (other jobs on the machine) falls on every
setting alike. The settings: one process with one thread and with two threads (``OMP_NUM_THREADS``), and
``accelerate launch --multi_gpu --num_processes 2 ... --device cpu`` with one thread each. Reported per
setting: the median over the rounds of the command's wall clock (start-up included: Python, torch, the model,
and accelerate's launcher), and of predict.json's ``speed.wall_s`` (from the folder's check-in to the tables,
all processes), as images per second; the load average before each run is kept in ``runs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SETTINGS = {  # name -> (processes, threads per process)
    "1 process x 1 thread": (1, 1),
    "2 processes x 1 thread": (2, 1),
    "1 process x 2 threads": (1, 2),
}


def command(processes: int, predict: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "lesiondiff.cli", *predict, "--device", "cpu"]
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lesiondiff.cli", *predict,
            "--device", "cpu"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="busi", help="a shipped model (lesiondiff models)")
    p.add_argument("--images", required=True, help="a folder of images")
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(SETTINGS)
    runs = []
    for r in range(a.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            processes, threads = SETTINGS[name]
            folder = out / f"round{r}_{processes}x{threads}"
            shutil.rmtree(folder, ignore_errors=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
            load = os.getloadavg()[0]
            start = time.perf_counter()
            done = subprocess.run(command(processes, ["predict", "--model", a.model, a.images, "--out", str(folder)]),
                                  env=env, capture_output=True, text=True, encoding="utf-8")
            wall = time.perf_counter() - start
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-3000:])
                return 1
            speed = json.loads((folder / "predict.json").read_text())["speed"]
            runs.append({"setting": name, "round": r, "command_s": round(wall, 2), "load_before": load, **speed})
            print(f"round {r}: {name}: {wall:.1f} s (prediction {speed['wall_s']:.1f} s, "
                  f"{speed['predicted_now']} images; load {load:.2f})", flush=True)
    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    n = runs[0]["predicted_now"]
    lines = ["| setting | command, median s | images/s (command) | prediction, median s | images/s (prediction) |",
             "| --- | --- | --- | --- | --- |"]
    for name in names:
        command_s = statistics.median(r["command_s"] for r in runs if r["setting"] == name)
        predict_s = statistics.median(r["wall_s"] for r in runs if r["setting"] == name)
        lines.append(f"| {name} | {command_s:.1f} | {n / command_s:.2f} | {predict_s:.1f} | {n / predict_s:.2f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
