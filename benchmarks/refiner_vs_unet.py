"""The issue-16 target table: the feed-forward ``unet`` against a diffusion run (the ``refiner`` by default) on
one manifest, the same CPU-time budget each, then the lesion / no-lesion post-processing chosen on validation.

    python benchmarks/refiner_vs_unet.py --manifest busi.csv --minutes 30 --size 128 --out runs/target_busi
    python benchmarks/refiner_vs_unet.py --manifest busi.csv --minutes 30 --size 128 --out runs/x0_busi \
        --diffusion medsegdiff --name medsegdiff-x0 --diffusion-set diffusion.objective=x0_hybrid diffusion.prediction=x0

Per run (finished work is skipped when rerun; an interrupted training resumes):
1. ``lesiondiff train --preset P --recipe fast`` with ``train.clock=process``, ``train.max_minutes=--minutes``
   (the refiner's prior phase counts against the same budget), one thread each, both runs side by side;
2. a run with the ``refine`` sampler only (the refiner): its starting point (``sample.start`` noise or prior)
   chosen by validation Dice (``lesiondiff predict`` + ``evaluate`` on the validation split), never on test;
3. ``lesiondiff postprocess`` on the validation split: the lesion / no-lesion rule (``postprocess.json``);
4. the test split predicted twice, without (``--no-postprocess``) and with the rule, and evaluated.
Writes ``table.md`` and ``table.json``: lesion-image Dice and IoU, overall Dice, normal (or lesion-free) images
predicted empty, ECE (per image, mean of the S samples), sampling time per image, and the paired per-image
difference (diffusion run) - unet with its bootstrap interval (10,000 resamples, seed 0).
``--diffusion`` and ``--diffusion-set`` choose the diffusion preset and overrides for its training only;
``--name`` names its folder and rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from bench_runs import (
    done,
    empty_cell,
    interval_cells,
    lesion_ids,
    parse,
    per_image_dice,
    predict_eval,
    row,
    sh,
    train,
)
from lesiondiff.metrics import paired_difference


def choose_start(run: Path, a, log: Path) -> str:
    """The refiner's starting point with the higher validation Dice (fused, per image, no post-processing)."""
    scores = {}
    for start in ("noise", "prior"):
        s = predict_eval(run, a, "val", run / f"val_start_{start}", ["--no-postprocess", "--set", f"sample.start={start}"],
                         log)
        scores[start] = s["fused"]["all"]["dice"]["mean"]
    best = max(scores, key=lambda k: (scores[k], k == "noise"))
    (run / "start_choice.json").write_text(json.dumps({"val_dice": scores, "chosen": best}, indent=2))
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--diffusion", default="refiner", help="the diffusion preset set against the unet")
    p.add_argument("--name", default=None, help="its folder and row name (default: the preset)")
    p.add_argument("--diffusion-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for the diffusion run's training only")
    a, root = parse(p, minutes=30.0, size=128, threads=2)
    diff = a.name or a.diffusion
    with ThreadPoolExecutor(2) as pool:
        unet_run, ref_run = pool.map(lambda job: train(job[0], a, root / job[1], a.recipe, job[2]),
                                     [("unet", "unet", []), (a.diffusion, diff, a.diffusion_set)])
    refine = yaml.safe_load((ref_run / "config.yaml").read_text())["sample"]["sampler"] == "refine"
    start = choose_start(ref_run, a, root / f"{diff}.log") if refine else None
    results, dices = {}, {}
    for name, run, extra in (("unet", unet_run, []),
                             (diff, ref_run, ["--set", f"sample.start={start}"] if refine else [])):
        log = root / f"{name}.log"
        if not done(run / "postprocess.json"):
            # the refiner's validation predictions with the chosen start exist already (choose_start): reuse them
            given = ["--pred", str(run / f"val_start_{start}")] if name == diff and refine else []
            sh(["postprocess", "--run", str(run), "--manifest", a.manifest, "--split", "val", *given, *extra[1:]],
               log, a.threads)
        for tag, pp in (("", ["--no-postprocess"]), (" + decision", [])):
            out = run / ("test" + ("_decision" if tag else ""))
            results[name + tag] = row(name + tag, predict_eval(run, a, "test", out, [*pp, *extra], log))
            dices[name + tag] = per_image_dice(out)
    ids = sorted(dices["unet"])
    diffs = {f"{b} - {u}": paired_difference([dices[u][i] for i in ids], [dices[b][i] for i in ids])
             for u, b in (("unet", diff), ("unet + decision", f"{diff} + decision"))}
    lesions = lesion_ids(unet_run / "test")
    diffs[f"{diff} - unet, lesion images"] = paired_difference([dices["unet"][i] for i in lesions],
                                                               [dices[diff][i] for i in lesions])
    summary = json.loads((ref_run / "summary.json").read_text())
    lines = [f"{a.manifest}, test split, {a.size} px, seed {a.seed}, recipe {a.recipe}, {a.minutes:g} CPU minutes "
             "of training per run (train.clock=process; a refiner's prior phase included), threshold 0.5, "
             f"metrics per image at the original size; {diff}: --preset {a.diffusion} "
             f"{' '.join(a.diffusion_set)}".rstrip() + (f"; refiner start: {start} (chosen on validation)" if refine
                                                       else "") + "; decision = the post-processing chosen on the "
             "validation split.", "",
             "| run | lesion-image Dice | lesion-image IoU | overall Dice | normal predicted empty | ECE | "
             "sampling s/image (S) | decision rule |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        lines.append(f"| {r['run']} | {100 * r['lesion_dice']:.2f} | {100 * r['lesion_iou']:.2f} | "
                     f"{100 * r['dice']:.2f} | {empty_cell(r)} | {r['ece']:.4f} | "
                     f"{r['s_per_image']:.3f} ({r['samples']}) | {r['postprocess']} |")
    lines += ["", "| paired per-image Dice difference | mean (pp) | 95 % bootstrap interval | Wilcoxon p | better / "
              "worse / equal |", "| --- | --- | --- | --- | --- |"]
    for name, d in diffs.items():
        lines.append(f"| {name} | {interval_cells(d)} | {d['p_wilcoxon']:.3g} | {d['better']} / {d['worse']} / "
                     f"{d['equal']} |")
    if refine:
        lines.append(f"\nrefiner training: prior {summary.get('pretraining', {}).get('step')} steps, refiner "
                     f"{summary['step']} steps, best validation step {summary['best_step']} (0 = the prior itself)")
    else:
        lines.append(f"\n{diff} training: {summary['step']} steps, best validation step {summary['best_step']}")
    (root / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "table.json").write_text(json.dumps({"rows": results, "paired": diffs, "start": start}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
