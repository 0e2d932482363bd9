"""The uncertainty study (docs/results/uncertainty.md): which source of per-image uncertainty tells which masks to
trust, at equal training CPU time, on one manifest.

    python benchmarks/uncertainty_study.py --manifest busi.csv --minutes 30 --size 128 --out runs/unc_busi \
        data.val_max_images=10000

Trainings (one thread each, two side by side, ``train.clock=process``; finished runs are skipped, interrupted
ones resume):
- ``unet``: the feed-forward U-Net, --minutes of CPU time; read three ways: alone (its entropy score), with
  test-time flips (``--tta flips``) and nothing else;
- ``unet-dropout``: the same U-Net with ``model.dropout`` (0.1), sampled with dropout on (MC dropout);
- ``ensemble``: 3 U-Nets with seeds seed, seed+1, seed+2 at --minutes / 3 each, read as one source;
- ``medsegdiff-x0``: MedSegDiff trained and sampled through x0 (``x0_hybrid``), S = 8;
- ``refiner``: the refiner preset, S = 8.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_runs import parse, train

MEMBERS = 3
DROPOUT = 0.1


def trainings(a, root: Path) -> list[tuple[str, Path, list[str], float]]:
    """(preset, run folder, overrides, CPU minutes) of every training of the study."""
    jobs = [("unet", root / "unet", [], a.minutes),
            ("medsegdiff", root / "medsegdiff-x0", ["diffusion.objective=x0_hybrid", "diffusion.prediction=x0"],
             a.minutes),
            ("unet", root / "unet-dropout", [f"model.dropout={DROPOUT}"], a.minutes),
            ("refiner", root / "refiner", [], a.minutes)]
    jobs += [("unet", root / "ensemble" / f"member-{k}", [f"train.seed={a.seed + k}"], a.minutes / MEMBERS)
             for k in range(MEMBERS)]
    return jobs


def train_all(a, root: Path) -> None:
    def one(job):
        preset, run, overrides, minutes = job
        run.parent.mkdir(parents=True, exist_ok=True)
        return train(preset, argparse.Namespace(**{**vars(a), "minutes": minutes}), run, a.recipe, overrides)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, trainings(a, root)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--train-only", action="store_true", help="stop after the trainings")
    a, root = parse(p, minutes=30.0, size=128, threads=2)
    train_all(a, root)
    if a.train_only:
        return 0
    raise SystemExit("the evaluation phases are not written yet")


if __name__ == "__main__":
    sys.exit(main())
