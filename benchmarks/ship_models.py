"""Make the models that ship with lesiondiff (``src/lesiondiff/shipped/<name>/``), one per data set, with their
model cards.

    python benchmarks/ship_models.py --data ../shared/data --work runs/ship --out src/lesiondiff/shipped

Per data set (BUSI, Kvasir-SEG at 256 px, ISIC 2017 at 512 px):
1. ``lesiondiff data index`` of its folder (seed 0, 70/15/15 stratified by label);
2. each candidate trained as in the issue-16 target protocol (``bench_runs.train``: ``--recipe fast``, 128 px,
   ``--minutes`` CPU minutes of process time, seed 0, one thread), and its lesion / no-lesion rule chosen on the
   validation split (``lesiondiff postprocess``); ``--reuse busi:unet=DIR`` takes a run already trained that
   way instead;
3. the candidate with the higher validation Dice (with its rule, per image, all validation images, its own
   sampling settings: ``postprocess.json``) is exported (EMA weights as float16, ``engine/export.py``); the
   test split is never used to choose;
4. the exported folder predicts and evaluates the test split, and ``card.json`` and ``MODEL_CARD.md`` are
   written from that evaluation (``reporting/model_card.py``), with four test images (evenly spaced lesion
   images and one lesion-free where the set has them) whose Dice the shipped-model test reproduces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from bench_runs import predict_eval, sh, train
from lesiondiff.data.dataset import mask_paths
from lesiondiff.data.manifest import Manifest, evenly_spaced
from lesiondiff.engine.export import export_run
from lesiondiff.reporting.model_card import failure_modes, write_card

DATASETS = {  # name -> (folder under --data, what it is)
    "busi": ("BUSI", "BUSI breast ultrasound (benign, malignant, normal)"),
    "kvasir": ("Kvasir-SEG_resized256", "Kvasir-SEG colonoscopy polyps, 256 px copies"),
    "isic": ("ISIC2017_512", "ISIC 2017 dermoscopy, 512 px copies"),
}
CANDIDATES = {"unet": ("unet", []),
              "medsegdiff-x0": ("medsegdiff", ["diffusion.objective=x0_hybrid", "diffusion.prediction=x0"])}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the folder holding the data sets (../shared/data)")
    p.add_argument("--work", required=True, help="where manifests, trainings and evaluations go")
    p.add_argument("--out", required=True, help="src/lesiondiff/shipped")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--minutes", type=float, default=30.0, help="CPU minutes (process time) per training")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="threads of each prediction")
    p.add_argument("--reuse", action="append", default=[], metavar="DATASET:CANDIDATE=RUN",
                   help="a run trained with this protocol to use instead of training the candidate again")
    a = p.parse_args()
    a.overrides = []
    return a


def candidate_run(a, ds: str, cand: str, manifest: Path, reuse: dict, log: Path) -> Path:
    """The candidate's run (trained now, or the one ``--reuse`` names) with its rule chosen on validation."""
    if (ds, cand) in reuse:
        run = Path(reuse[ds, cand])
    else:
        preset, overrides = CANDIDATES[cand]
        run = train(preset, a, Path(a.work) / ds / cand, "fast", overrides)
    if not (run / "postprocess.json").is_file():
        sh(["postprocess", "--run", str(run), "--manifest", str(manifest), "--split", "val"], log, a.threads)
    return run


def check_rows(manifest: Path, data_root: Path, k: int = 4) -> list[dict]:
    """``k`` test rows for the shipped-model test: evenly spaced lesion images, plus one lesion-free image when
    the split has one; paths relative to the data root."""
    rows = Manifest.read(manifest).rows(split="test")
    lesion = [r for r in rows if mask_paths(r) and r.get("label") != "normal"]
    normal = [r for r in rows if r.get("label") == "normal"]
    chosen = evenly_spaced(lesion, k - 1 if normal else k) + normal[:1]
    rel = lambda p: str(Path(p).resolve().relative_to(data_root.resolve()))  # noqa: E731
    return [{"id": r["id"], "image": rel(r["image"]), "masks": [rel(m) for m in mask_paths(r)],
             "label": r.get("label", "")} for r in chosen]


def ship(a, ds: str, reuse: dict) -> dict:
    folder, what = DATASETS[ds]
    work = Path(a.work) / ds
    work.mkdir(parents=True, exist_ok=True)
    manifest, log = work / f"{ds}.csv", work / "ship.log"
    if not manifest.is_file():
        sh(["data", "index", str(Path(a.data) / folder), "-o", str(manifest), "--seed", str(a.seed)], log)
    a.manifest = str(manifest.resolve())
    runs = {c: candidate_run(a, ds, c, manifest, reuse, log) for c in a.candidates.split(",")}
    val = {c: json.loads((r / "postprocess.json").read_text())["validation"]["dice"] for c, r in runs.items()}
    chosen = max(val, key=val.get)
    out = export_run(runs[chosen], Path(a.out) / ds)
    summary = predict_eval(out, a, "test", work / "shipped_test", [], log)
    rows = Manifest.read(manifest)
    card = {"name": ds, "data": {"name": what, "folder": folder, "manifest": manifest.name,
                                 "splits": {k: len(rows.rows(split=k)) for k in ("train", "val", "test")}},
            "candidate": chosen, "validation_dice": val, "run": str(runs[chosen]),
            "command": "python benchmarks/ship_models.py " + " ".join(sys.argv[1:]),
            "training": json.loads((runs[chosen] / "summary.json").read_text()),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch": torch.__version__, "python": platform.python_version()},
            "check_rows": check_rows(manifest, Path(a.data)), "failure_modes": failure_modes(work / "shipped_test")}
    return write_card(out, card, summary, work / "shipped_test", a)


def main() -> int:
    a = parse()
    reuse = {}
    for item in a.reuse:
        key, _, run = item.partition("=")
        ds, _, cand = key.partition(":")
        reuse[ds, cand] = run
    for ds in a.datasets.split(","):
        card = ship(a, ds, reuse)
        print(f"{ds}: {card['candidate']} shipped, test lesion-image Dice {100 * card['test']['lesion_dice']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
