"""The training recipe before and after: ``unet`` and each seed preset trained on one manifest under
``--recipe paper`` (each paper's published optimiser settings, the project's training before recipes existed)
and under ``--recipe fast`` (the default), the same CPU-time budget, size and seed for every run; for the
presets whose paper trains with the eps objective, a third arm trains and samples through x0
(``diffusion.objective=x0_hybrid diffusion.prediction=x0``) under the fast recipe.

    python benchmarks/recipe_before_after.py --manifest busi.csv --minutes 10 --size 64 --out runs/before_after

Each training is its own ``lesiondiff train`` process with one thread and ``train.clock=process``, ``--jobs`` at
a time (so that runs sharing the cores get the same CPU time); finished runs are skipped and interrupted ones
resume when rerun. Each run's best-on-validation checkpoint then predicts the test split with its preset's own
sampler, S and fusion (seed --seed), no post-processing, and is evaluated. Writes ``table.md`` and
``table.json``: steps, best validation step, fused Dice over all test images, lesion-image Dice, normal images
predicted empty, per-image ECE, and the paired per-image Dice differences (each run - ``unet`` fast, fast - paper,
x0 - eps) with their 95 % bootstrap intervals (10,000 resamples, seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_runs import empty_cell, interval_cells, parse, per_image_dice, predict_eval, row, train
from lesiondiff.metrics import paired_difference

PRESETS = ["unet", "ensemdiff", "segdiff", "medsegdiff", "palscdiff", "pgdiffseg", "unisegdiff"]
EPS_PRESETS = ["ensemdiff", "segdiff", "medsegdiff"]  # trained and sampled through eps by their papers
X0 = ["diffusion.objective=x0_hybrid", "diffusion.prediction=x0"]


def arms(presets: list[str]) -> list[tuple[str, str, str, list[str]]]:
    """(arm name, preset, recipe, overrides) for every run of the table, in the order they are trained."""
    out = []
    for p in presets:
        out += [(f"{p} paper", p, "paper", []), (f"{p} fast", p, "fast", [])]
        if p in EPS_PRESETS:
            out.append((f"{p} fast x0", p, "fast", X0))
    return out


def run_arm(arm: tuple[str, str, str, list[str]], a, root: Path) -> dict:
    name, preset, recipe, overrides = arm
    run = train(preset, a, root / name.replace(" ", "_"), recipe, overrides, val_every=a.val_every)
    s = predict_eval(run, a, "test", run / "test", ["--no-postprocess"], root / f"{run.name}.log")
    t = json.loads((run / "summary.json").read_text())
    return {**row(name, s), "steps": t["step"], "best_step": t["best_step"], "best_val_dice": t["best_val_dice"],
            "dices": per_image_dice(run / "test")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--jobs", type=int, default=2)
    a, root = parse(p, minutes=20.0, size=64, threads=1)
    todo = arms(a.presets.split(","))
    with ThreadPoolExecutor(a.jobs) as pool:
        results = {r["run"]: r for r in pool.map(lambda arm: run_arm(arm, a, root), todo)}
    base = results.get("unet fast")
    ids = sorted(next(iter(results.values()))["dices"])

    def paired(before: dict, after: dict) -> dict:
        return paired_difference([before["dices"][i] for i in ids], [after["dices"][i] for i in ids])

    lines = [
        f"{a.manifest}, test split, {a.size} px, seed {a.seed}, {a.minutes:g} CPU minutes of training per run "
        "(train.clock=process, one thread), best-validation checkpoint (EMA weights), each preset's own sampler, "
        "S and fusion, threshold 0.5, Dice per image at the original size, no post-processing; val Dice: the "
        "best validation Dice during training (at the network size).", "",
        "| run | steps | best val step | val Dice | test Dice, all images | lesion-image Dice | normal predicted empty "
        "| ECE | − unet fast, paired (pp, 95 % CI) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        d = paired(base, r) if base is not None and r is not base else None
        cell = f"{100 * d['mean']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]" if d else "–"
        lines.append(f"| {r['run']} | {r['steps']} | {r['best_step']} | {r['best_val_dice']:.4f} | "
                     f"{100 * r['dice']:.2f} | {100 * r['lesion_dice']:.2f} | {empty_cell(r)} | {r['ece']:.4f} | "
                     f"{cell} |")
    lines += ["", "| paired per-image Dice difference, all test images | mean (pp) | 95 % bootstrap interval | "
              "better / worse / equal |", "| --- | --- | --- | --- |"]
    diffs = {}
    for name, preset, *_ in todo:
        before = {"fast": f"{preset} paper", "fast x0": f"{preset} fast"}.get(name.split(" ", 1)[1])
        if before is None:
            continue
        d = diffs[f"{name} - {before}"] = paired(results[before], results[name])
        lines.append(f"| {name} − {before} | {interval_cells(d)} | {d['better']} / {d['worse']} / {d['equal']} |")
    for r in results.values():
        r.pop("dices")
    (root / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "table.json").write_text(json.dumps({"rows": results, "paired": diffs}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
