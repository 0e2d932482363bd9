"""The levers of "train the sampler you run" against the feed-forward ``unet`` on one manifest, at one CPU-time budget
each (docs/results/diffusion_vs_unet.md, section 6):

    python benchmarks/levers_vs_unet.py --manifest busi.csv --minutes 30 --size 128 --out runs/lev_busi \\
        --unet runs/unc_busi/unet data.val_max_images=10000

Runs (each trained with ``--recipe fast``, ``train.clock=process``, one thread, two side by side; finished runs
are skipped, interrupted ones resume; ``--unet`` reuses a trained unet run of the same protocol):
- ``aligned``: MedSegDiff through x0 with Dice + BCE on the x0 estimate (``x0_dice_bce``), trained only on the
  3 timesteps its 3-step DDIM sampler visits (``diffusion.timestep_sampling=aligned``), S = 8;
- ``aligned-recycle``: the same with recycling (``objective_options.recycle`` 0.5);
- ``aligned-recycle-scale``: the same with input scaling (``diffusion.input_scale`` 0.5);
- ``medsegdiff-aligned``: the preset of that configuration (the same settings, trained from its own preset; S = 8
  like the levers, where the preset's own default is 4);
- ``refiner-folds``: the refiner with cross-fitted priors (``model.options.prior_folds`` 2), against the plain
  refiner given with ``--reference``;
- ``--levers`` picks among them. The best of them by validation Dice (each run's best checkpoint's figure) is
  then averaged with the unet (``lesiondiff average``, w chosen on validation).
Then for the unet, every lever, the reference run given with ``--reference`` (e.g. MedSegDiff through x0 of
the uncertainty study) and the average: the test split predicted and evaluated without post-processing, and with
the lesion / no-lesion rule chosen on validation (``lesiondiff postprocess``). Writes ``table.md`` and
``table.json``: lesion-image and overall Dice, normal images predicted empty, ECE, seconds per image (the whole
predict work per image, with the maps), and each run's paired per-image lesion-image Dice difference against the
unet with a 95 % bootstrap interval (10,000 resamples, seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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

BASE = ["diffusion.objective=x0_dice_bce", "diffusion.prediction=x0", "diffusion.timestep_sampling=aligned",
        "sample.sampler=ddim", "sample.steps=3", "sample.samples=8"]
LEVERS = {"aligned": ("medsegdiff", BASE),  # name: (preset, overrides)
          "aligned-recycle": ("medsegdiff", [*BASE, "diffusion.objective_options={recycle: 0.5}"]),
          "aligned-recycle-scale": ("medsegdiff", [*BASE, "diffusion.objective_options={recycle: 0.5}",
                                                   "diffusion.input_scale=0.5"]),
          "medsegdiff-aligned": ("medsegdiff-aligned", ["sample.samples=8"]),  # S = 8 like the levers
          "refiner-folds": ("refiner", ["model.options.prior_folds=2"])}


def best_on_validation(runs: dict[str, Path]) -> str:
    """The lever with the highest best validation Dice (summary.json; the run's own sampler, one sample)."""
    return max(runs, key=lambda n: json.loads((runs[n] / "summary.json").read_text())["best_val_dice"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--unet", default=None, help="a trained unet run of the same protocol (else trained here)")
    p.add_argument("--reference", nargs="*", default=[], metavar="NAME=RUN",
                   help="further trained diffusion runs to set against the unet (e.g. medsegdiff-x0=RUN)")
    p.add_argument("--levers", default=",".join(LEVERS), help="which levers to train and compare")
    p.add_argument("--train-only", action="store_true", help="stop after the trainings")
    a, root = parse(p, minutes=30.0, size=128, threads=2)
    names = [n for n in a.levers.split(",") if n]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever {unknown[0]!r}; known: {', '.join(LEVERS)}")
    jobs = [(LEVERS[n][0], n, LEVERS[n][1]) for n in names]
    if a.unet is None:
        jobs.insert(0, ("unet", "unet", []))
    with ThreadPoolExecutor(2) as pool:
        trained = dict(zip([n for _, n, _ in jobs],
                           pool.map(lambda j: train(j[0], a, root / j[1], a.recipe, j[2]), jobs)))
    if a.train_only:
        return 0
    unet = Path(a.unet) if a.unet else trained.pop("unet")
    levers = {n: trained[n] for n in names}
    best = best_on_validation(levers)
    average = root / f"average-{best}"
    if not done(average / "average.json"):
        sh(["average", "--out", str(average), "--feedforward", str(unet), "--diffusion", str(levers[best]),
            "--manifest", a.manifest, "--split", "val"], root / "average.log", a.threads)
    runs = {"unet": unet, **levers, **{r.split("=", 1)[0]: Path(r.split("=", 1)[1]) for r in a.reference},
            f"unet + {best} (average)": average}
    results, dices = {}, {}
    for name, run in runs.items():
        log = root / f"{name.replace(' ', '_')}.log"
        if not done(run / "postprocess.json"):
            sh(["postprocess", "--run", str(run), "--manifest", a.manifest, "--split", "val"], log, a.threads)
        for tag, pp in (("", ["--no-postprocess"]), (" + decision", [])):
            out = root / "pred" / (name.replace(" ", "_").replace("(", "").replace(")", "")
                                   + ("_decision" if tag else ""))
            summary = predict_eval(run, a, "test", out, pp, log)
            speed = summary["prediction_settings"]["speed"]
            results[name + tag] = {**row(name + tag, summary),
                                   "s_per_image": speed["predict_s"] / max(1, speed["images"])}
            dices[name + tag] = per_image_dice(out)
    lesions = lesion_ids(root / "pred" / "unet")
    paired = {name: paired_difference([dices["unet"][i] for i in lesions], [dices[name][i] for i in lesions])
              for name in runs if name != "unet"}
    weight = json.loads((average / "average.json").read_text())["weight"]
    lines = [f"{a.manifest}, test split, {a.size} px, seed {a.seed}, recipe {a.recipe}, {a.minutes:g} CPU minutes of "
             "training per run (train.clock=process), threshold 0.5, metrics per image at the original size; the "
             f"average: unet + {best} (the lever with the best validation Dice), w = {weight:g} on the unet, chosen "
             "on validation; decision = the lesion / no-lesion rule chosen on the validation split; s / image: the "
             "whole predict work per image with the maps.", "",
             "| run | lesion-image Dice | overall Dice | normal predicted empty | ECE | s / image (S) | decision rule |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        lines.append(f"| {r['run']} | {100 * r['lesion_dice']:.2f} | {100 * r['dice']:.2f} | {empty_cell(r)} | "
                     f"{r['ece']:.4f} | {r['s_per_image']:.3f} ({r['samples']}) | {r['postprocess']} |")
    lines += ["", "| lesion-image Dice minus unet (paired, no decision) | mean (pp) | 95 % bootstrap interval | "
              "better / worse / equal |", "| --- | --- | --- | --- |"]
    for name, d in paired.items():
        lines.append(f"| {name} | {interval_cells(d)} | {d['better']} / {d['worse']} / {d['equal']} |")
    val = {n: json.loads((r / "summary.json").read_text())["best_val_dice"] for n, r in {**levers, "unet": unet}.items()}
    lines.append("\nbest validation Dice (summary.json: EMA weights, the run's own sampler, one sample, 128 px): "
                 + ", ".join(f"{n} {v:.4f}" for n, v in val.items()))
    (root / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "table.json").write_text(json.dumps({"rows": results, "paired": paired, "best": best,
                                                 "weight": weight, "val_dice": val}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
