"""Can a per-image score of the S draws decide which images are lesion-free? (docs/results/diffusion_vs_unet.md,
section 6.4: the target of 85 % of normal images predicted empty at a cost of at most one lesion-Dice point.)

    python benchmarks/normals_by_score.py --out runs/normals_busi \\
        --source medsegdiff-aligned=runs/unc_busi/pred/medsegdiff-aligned_val,runs/unc_busi/pred/medsegdiff-aligned_test

Each ``--source NAME=VAL,TEST`` names two evaluated prediction folders of one run (predictions.csv with the
scores, metrics.csv with the labels and the fused per-image Dice at threshold 0.5). For each score where a low
value means "no lesion" (the draws' mean pairwise Dice ``agreement``, the fraction of draws that find any lesion
``lesion_fraction``):
1. on validation, how well the score separates normal from lesion images (AUROC: the chance that a random
   normal image scores lower than a random lesion image, ties counting one half), and the rule "lesion-free when
   the score is at most tau", with tau the smallest value that empties at least --target of the validation
   normal images;
2. that rule applied once to the test split: the normal images then predicted empty (the rule's and those whose
   mask was empty already), the lesion images it empties, and the lesion-image Dice before and after (an
   emptied lesion image scores 0).
Writes ``table.md`` and ``table.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from lesiondiff.engine.evaluate import fused_metrics

SCORES = ("agreement", "lesion_fraction")  # low = the draws see no lesion


def separation_auroc(scores: np.ndarray, normal: np.ndarray) -> float:
    """P(score of a normal image < score of a lesion image) + P(equal) / 2: the Mann-Whitney U of the lesion
    images' scores against the normal images', over the number of pairs; nan without both."""
    s_n, s_l = scores[normal], scores[~normal]
    if not s_n.size or not s_l.size:
        return math.nan
    return float(mannwhitneyu(s_l, s_n, method="asymptotic").statistic / (s_l.size * s_n.size))


def threshold_for(scores: np.ndarray, normal: np.ndarray, target: float) -> float:
    """The smallest tau with at least ``target`` of the normal images at score <= tau."""
    s_n = np.sort(scores[normal])
    if not s_n.size:
        raise ValueError("no normal image to choose the threshold on")
    return float(s_n[max(0, math.ceil(target * s_n.size) - 1)])


def apply_rule(scores: np.ndarray, normal: np.ndarray, dice: np.ndarray, tau: float) -> dict:
    """The rule "lesion-free when score <= tau" on one split. ``dice``: the fused per-image Dice without the rule
    (a normal image scores 1 exactly when its mask is empty)."""
    emptied = scores <= tau
    after = np.where(emptied, np.where(normal, 1.0, 0.0), dice)
    lesion = ~normal
    return {"normal_n": int(normal.sum()), "normal_empty_before": float((dice[normal] == 1).mean()),
            "normal_empty_after": float((after[normal] == 1).mean()), "lesion_n": int(lesion.sum()),
            "lesion_emptied": float(emptied[lesion].mean()), "lesion_dice_before": float(dice[lesion].mean()),
            "lesion_dice_after": float(after[lesion].mean())}


def rule_cells(r: dict) -> str:
    """The three table cells of an :func:`apply_rule` result: normal images empty before -> after, lesion
    images emptied, lesion-image Dice before -> after (pp)."""
    return (f"{100 * r['normal_empty_before']:.1f} % -> {100 * r['normal_empty_after']:.1f} % of {r['normal_n']} | "
            f"{100 * r['lesion_emptied']:.1f} % of {r['lesion_n']} | {100 * r['lesion_dice_before']:.2f} -> "
            f"{100 * r['lesion_dice_after']:.2f} ({100 * (r['lesion_dice_after'] - r['lesion_dice_before']):+.2f})")


def read_split(folder: Path, score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, normal, fused Dice) per image of an evaluated prediction folder, in predictions.csv order."""
    with (folder / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or score not in rows[0] or not rows[0][score]:
        raise SystemExit(f"error: {folder / 'predictions.csv'} has no {score!r} scores (a run with S >= 2 draws)")
    metrics = {r["id"]: r for r in fused_metrics(folder)}  # one read of metrics.csv: labels and Dice
    ids = [r["id"] for r in rows]
    return (np.array([float(r[score]) for r in rows]), np.array([metrics[i]["label"] == "normal" for i in ids]),
            np.array([float(metrics[i]["dice"]) for i in ids]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", action="append", required=True, metavar="NAME=VAL,TEST")
    p.add_argument("--target", type=float, default=0.85, help="share of validation normal images to empty")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in a.source:
        name, folders = spec.split("=", 1)
        val, test = (Path(f) for f in folders.split(","))
        for score in SCORES:
            sv, nv, _ = read_split(val, score)
            st, nt, dt = read_split(test, score)
            tau = threshold_for(sv, nv, a.target)
            results.append({"source": name, "score": score, "val_auroc": separation_auroc(sv, nv), "tau": tau,
                            "test_auroc": separation_auroc(st, nt), **apply_rule(st, nt, dt, tau)})
    (out / "table.json").write_text(json.dumps({"target": a.target, "rows": results}, indent=2))
    lines = [f"Rule: lesion-free when the score <= tau, tau the smallest value emptying {100 * a.target:.0f} % of "
             "the validation normal images; fused masks at threshold 0.5, per-image Dice at the original size; "
             "test split once.", "",
             "| source | score | AUROC normal vs lesion (val / test) | tau | test normal empty: before -> after "
             "| test lesion images emptied | test lesion-image Dice: before -> after (pp) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['source']} | {r['score']} | {r['val_auroc']:.3f} / {r['test_auroc']:.3f} | "
                     f"{r['tau']:.3f} | {rule_cells(r)} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
