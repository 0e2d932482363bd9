"""The budget curve (docs/results/diffusion_vs_unet.md): the feed-forward ``unet`` against a diffusion preset on
one manifest at several training budgets, with a paired interval at each.

    python benchmarks/budget_curve.py --manifest busi.csv --budgets 10,30,90 --size 128 --out runs/budget_busi \\
        --reuse 30:unet=runs/unc_busi/unet data.val_max_images=10000

For each budget (CPU minutes, ``train.clock=process``, one thread, two trainings side by side; finished runs are
skipped, interrupted ones resume) both presets are trained with ``--recipe fast`` and seed ``--seed``, unless
``--reuse MINUTES:PRESET=RUN`` names a run of the same protocol. Each run's test split is predicted (its own
sampler and samples, no post-processing) and evaluated. Writes ``table.md``, ``table.json`` and
``budget_curve.png``: lesion-image Dice of each run with a 95 % bootstrap interval of its mean, the paired
per-image difference (diffusion minus unet, 10,000 resamples, seed 0) at each budget, and a least-squares line
Dice = a + b log10(minutes) per preset (exact through two budgets) with the budget where the two lines cross,
if they do.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_runs import interval_cells, lesion_ids, parse, per_image_dice, predict_eval, train
from lesiondiff.metrics import bootstrap_mean, paired_difference
from lesiondiff.render.budget_figures import budget_curve_figure


def log_fit(minutes: list[float], dice: list[float]) -> tuple[float, float]:
    """(a, b) of the least-squares line dice = a + b log10(minutes)."""
    b, a = np.polyfit(np.log10(minutes), dice, 1)
    return float(a), float(b)


def crossing(f: tuple[float, float], g: tuple[float, float]) -> float | None:
    """The minutes where two lines a + b log10(m) meet, or None when they are parallel."""
    if f[1] == g[1]:
        return None
    return float(10 ** ((g[0] - f[0]) / (f[1] - g[1])))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="10,30,90", help="CPU minutes per training, comma-separated")
    p.add_argument("--baseline", default="unet")
    p.add_argument("--diffusion", default="medsegdiff-aligned", help="the diffusion preset")
    p.add_argument("--recipe", default="fast")
    p.add_argument("--reuse", action="append", default=[], metavar="MINUTES:PRESET=RUN")
    p.add_argument("--diffusion-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the diffusion trainings only (e.g. sample.samples=8, to keep the "
                        "samples of runs made before a preset default changed)")
    a, root = parse(p, minutes=30.0, size=128, threads=1)
    budgets = [float(b) for b in a.budgets.split(",") if b]
    reuse = {}
    for item in a.reuse:
        key, run = item.split("=", 1)
        minutes, preset = key.split(":", 1)
        reuse[(float(minutes), preset)] = Path(run)
    presets = [a.baseline, a.diffusion]
    runs = {(m, pr): reuse.get((m, pr), root / f"{pr}-{m:g}min") for m in budgets for pr in presets}
    jobs = [(m, pr) for (m, pr), run in runs.items() if (m, pr) not in reuse]

    def one(job):
        m, pr = job
        extra = a.diffusion_override if pr == a.diffusion else []
        return train(pr, argparse.Namespace(**{**vars(a), "minutes": m}), runs[job], a.recipe, extra)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, jobs))
    dices, points, paired = {}, {pr: [] for pr in presets}, {}
    for (m, pr), run in runs.items():
        out = root / "pred" / f"{pr}-{m:g}min"
        predict_eval(run, a, "test", out, ["--no-postprocess"], root / f"{pr}-{m:g}min_predict.log")
        dices[(m, pr)] = per_image_dice(out)
    lesions = lesion_ids(root / "pred" / f"{a.baseline}-{budgets[0]:g}min")
    steps = {k: json.loads((run / "summary.json").read_text())["step"] for k, run in runs.items()}
    for m in budgets:
        for pr in presets:
            points[pr].append((m, *bootstrap_mean([dices[(m, pr)][i] for i in lesions])))
        paired[m] = paired_difference([dices[(m, a.baseline)][i] for i in lesions],
                                      [dices[(m, a.diffusion)][i] for i in lesions])
    fits = {pr: log_fit([p[0] for p in pts], [p[1] for p in pts]) for pr, pts in points.items() if len(pts) >= 2}
    cross = crossing(fits[a.baseline], fits[a.diffusion]) if len(fits) == 2 else None
    lines = [f"{a.manifest}, test split ({len(lesions)} lesion images), {a.size} px, seed {a.seed}, recipe {a.recipe}, "
             "train.clock=process (one thread); each run's own sampler and samples, no post-processing, threshold "
             "0.5, per-image lesion-image Dice at the original size; intervals: 95 % bootstrap (10,000 resamples, "
             "seed 0) of the mean, and of the paired per-image difference.", "",
             f"| CPU minutes | {a.baseline} lesion Dice [interval] (steps) | {a.diffusion} lesion Dice [interval] (steps) "
             f"| {a.diffusion} minus {a.baseline} (pp) | paired 95 % interval |", "| --- | --- | --- | --- | --- |"]
    for k, m in enumerate(budgets):
        cells = [f"{100 * d:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] ({steps[(m, pr)]})"
                 for pr in presets for (_, d, lo, hi) in [points[pr][k]]]
        lines.append(f"| {m:g} | {cells[0]} | {cells[1]} | {interval_cells(paired[m])} |")
    lines.append("")
    for pr, (fa, fb) in fits.items():
        lines.append(f"fit {pr}: lesion Dice = {100 * fa:.2f} + {100 * fb:.2f} log10(CPU minutes) (least squares "
                     f"over {len(budgets)} budgets{'; exact through two points' if len(budgets) == 2 else ''})")
    if len(fits) == 2:
        where = ("" if cross is None else " (within the measured budgets)" if min(budgets) <= cross <= max(budgets)
                 else " (below the smallest budget)" if cross < min(budgets) else " (an extrapolation)")
        lines.append(f"the fitted lines cross at {cross:.3g} CPU minutes{where}" if cross is not None else
                     "the fitted lines are parallel: they do not cross")
    (root / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "table.json").write_text(json.dumps({
        "points": points, "paired": {f"{m:g}": d for m, d in paired.items()}, "fits": fits, "crossing_minutes": cross,
        "steps": {f"{pr}@{m:g}": s for (m, pr), s in steps.items()}}, indent=2))
    budget_curve_figure({pr: pts for pr, pts in points.items()}, fits, root / "budget_curve.png",
                        f"{Path(a.manifest).stem}, test split, lesion images: {a.diffusion} vs {a.baseline} by "
                        "training budget")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
