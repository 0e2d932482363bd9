"""The uncertainty study (docs/results/uncertainty.md): which source of per-image uncertainty tells which masks to
trust, at equal training CPU time, on one manifest.

    python benchmarks/uncertainty_study.py --manifest busi.csv --minutes 30 --size 128 --out runs/unc_busi \\
        data.val_max_images=10000

Trainings (one thread each, two side by side, ``train.clock=process``; finished runs are skipped, interrupted
ones resume):
- ``unet``: the feed-forward U-Net, --minutes of CPU time; read alone (S = 1, its entropy scores) and with
  test-time flips (``--tta flips``, S = 4);
- ``unet-dropout``: the same U-Net with ``model.dropout`` 0.1, sampled with dropout on (MC dropout, S = 8);
- ``ensemble``: 3 U-Nets with seeds seed, seed+1, seed+2 at --minutes / 3 each, read as one source (S = 3);
- ``medsegdiff-x0``: MedSegDiff trained and sampled through x0 (``x0_hybrid``), S = 8;
- ``refiner``: the refiner preset (prior + correction), S = 8, from noise;
- ``--source NAME=RUN``: any further trained diffusion run (e.g. a newer configuration), predicted with its own
  sampler, S = 8.
``--x0-steps`` sets the DDIM steps of MedSegDiff through x0 (default: the run's own 20); ``--jobs`` how many
trainings run side by side.
Then, for every source (``--threads`` threads, one prediction at a time; the fused masks as sampled, without
a run's lesion / no-lesion rule, ``--no-postprocess``):
1. predict and evaluate the validation split; the score with the lowest validation AURC is the source's score;
2. ``lesiondiff calibrate`` on those validation predictions (target Dice --target, delta --delta; refused, and
   reported as such, when the validation split has fewer than 20 images);
3. predict and evaluate the test split once (the accept / review marks from step 2).
Writes ``table.md``, ``table.json`` and ``risk_coverage.png``: lesion-image and overall Dice, AURC and e-AURC of
each source's score, coverage and realised Dice of the accepted test images, UEO, ECE, seconds per image, and the
paired per-image bootstrap interval of each source's AURC minus that of ``unet + TTA`` (10,000 resamples of the
test images, seed 0; each source ranked by its own score).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_runs import LESIONDIFF, parse, sh, train
from lesiondiff.engine.evaluate import fused_metrics
from lesiondiff.render.selective_figures import compare_risk_coverage
from lesiondiff.selective import aurc, confidence, eaurc, risk_coverage

MEMBERS = 3
DROPOUT = 0.1
REFERENCE = "unet + TTA"


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


def sources(a, root: Path) -> list[tuple[str, Path, list[str]]]:
    """(row name, run folder, predict options) of every source of uncertainty."""
    x0_steps = ["--steps", str(a.x0_steps)] if a.x0_steps else []
    extra = [(name, Path(run), ["--samples", "8"]) for name, run in (s.split("=", 1) for s in a.source)]
    return [("unet", root / "unet", []),
            (REFERENCE, root / "unet", ["--tta", "flips", "--samples", "4"]),
            ("unet + MC dropout", root / "unet-dropout", ["--mc-dropout", "--samples", "8"]),
            (f"ensemble of {MEMBERS} unets", root / "ensemble", []),
            ("medsegdiff-x0", root / "medsegdiff-x0", ["--samples", "8", *x0_steps]),
            ("refiner", root / "refiner", ["--samples", "8"]), *extra]


def train_all(a, root: Path) -> None:
    def one(job):
        preset, run, overrides, minutes = job
        run.parent.mkdir(parents=True, exist_ok=True)
        return train(preset, argparse.Namespace(**{**vars(a), "minutes": minutes}), run, a.recipe, overrides)

    with ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(one, trainings(a, root)))
    if not (root / "ensemble" / "ensemble.json").is_file():
        sh(["ensemble", "--out", str(root / "ensemble"),
            *(str(root / "ensemble" / f"member-{k}") for k in range(MEMBERS))], root / "ensemble.log")


def folder_name(name: str) -> str:
    return name.replace(" + ", "_").replace(" ", "_")


def predict_eval(a, run: Path, extra: list[str], split: str, out: Path, log: Path) -> dict:
    if not (out / "summary.json").is_file():
        sh(["predict", "--run", str(run), "--manifest", a.manifest, "--split", split, "--out", str(out),
            "--seed", str(a.seed), "--no-postprocess", *extra], log, a.threads)
        sh(["evaluate", "--pred", str(out), "--manifest", a.manifest, "--split", split], log, a.threads)
    return json.loads((out / "summary.json").read_text())


def scores_of(pred: Path) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per-image fused Dice and every score, by image id, of an evaluated prediction folder."""
    import csv

    dice = {r["id"]: float(r["dice"]) for r in fused_metrics(pred)}
    with (pred / "predictions.csv").open(encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    names = [n for n in ("agreement", "lesion_fraction", "entropy", "band_entropy") if n in next(iter(rows.values()))]
    return dice, {n: {i: float(r[n]) for i, r in rows.items()} for n in names}


def calibrate(a, run: Path, score: str, val_pred: Path, log: Path) -> dict:
    """``lesiondiff calibrate`` on the validation predictions; a refusal (e.g. too few images) is returned."""
    import subprocess

    record = run / "selective.json"
    cmd = [*LESIONDIFF, "calibrate", "--run", str(run), "--manifest", a.manifest, "--split", "val", "--pred",
           str(val_pred), "--score", score, "--target-dice", str(a.target), "--delta", str(a.delta)]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    with log.open("a") as f:
        f.write("+ " + " ".join(cmd[2:]) + "\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        record.unlink(missing_ok=True)
        return {"refused": done.stderr.strip().removeprefix("error: ")}
    return json.loads(record.read_text())


def bootstrap_aurc(risks_a, conf_a, risks_b, conf_b, n_boot: int = 10_000, seed: int = 0) -> dict:
    """AURC(b) - AURC(a) on the same images, with a percentile bootstrap over images (95 %)."""
    rng = np.random.default_rng(seed)
    n = len(risks_a)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        diffs.append(aurc(risks_b[i], conf_b[i]) - aurc(risks_a[i], conf_a[i]))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"mean": aurc(risks_b, conf_b) - aurc(risks_a, conf_a), "ci_low": float(lo), "ci_high": float(hi),
            "n": n, "n_boot": n_boot, "seed": seed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--target", type=float, default=0.8, help="calibrate's target Dice")
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--train-only", action="store_true", help="stop after the trainings")
    p.add_argument("--jobs", type=int, default=2, help="trainings side by side (one thread each)")
    p.add_argument("--x0-steps", type=int, default=None, help="DDIM steps of MedSegDiff through x0")
    p.add_argument("--source", action="append", default=[], metavar="NAME=RUN",
                   help="a further trained diffusion run to compare (S = 8, its own sampler)")
    a, root = parse(p, minutes=30.0, size=128, threads=2)
    train_all(a, root)
    if a.train_only:
        return 0
    results, ranked = {}, {}
    for name, run, extra in sources(a, root):
        tag, log = folder_name(name), root / f"{folder_name(name)}.log"
        val = predict_eval(a, run, extra, "val", root / "pred" / f"{tag}_val", log)
        score = min(val["failure_detection"]["scores"], key=lambda s: val["failure_detection"]["scores"][s]["aurc"])
        cal = calibrate(a, run, score, root / "pred" / f"{tag}_val", log)
        test_dir = root / "pred" / f"{tag}_test"
        test = predict_eval(a, run, extra, "test", test_dir, log)
        (run / "selective.json").unlink(missing_ok=True)  # the next source of the same run calibrates anew
        dice, scores = scores_of(test_dir)
        ids = sorted(dice)
        risks = np.array([1 - dice[i] for i in ids])
        conf = confidence(score, [scores[score][i] for i in ids])
        ranked[name] = (ids, risks, conf)
        speed = test["prediction_settings"]["speed"]
        results[name] = {
            "source": name, "run": str(run), "predict": " ".join(extra), "score": score,
            "val_aurc": {k: v["aurc"] for k, v in val["failure_detection"]["scores"].items()},
            "lesion_dice": test["lesion_images"]["dice"]["mean"], "dice": test["fused"]["all"]["dice"]["mean"],
            "aurc": aurc(risks, conf), "eaurc": eaurc(risks, conf),
            "test_aurc": {k: v["aurc"] for k, v in test["failure_detection"]["scores"].items()},
            "optimal_aurc": test["failure_detection"]["optimal_aurc"],
            "random_aurc": test["failure_detection"]["random_aurc"],
            "calibration": cal, "selective": test.get("selective"),
            "ueo": test["pixel_uncertainty"]["ueo"], "ueo_tau": test["pixel_uncertainty"]["ueo_tau"],
            "pixel_auroc": test["pixel_uncertainty"]["auroc"],
            "ece": test["calibration"]["ece_per_image"]["mean"],
            "s_per_image": speed["predict_s"] / max(1, speed["images"]),
            "scores_share": speed["scores_s"] / speed["predict_s"] if speed["predict_s"] else None,
            "samples": test["prediction_settings"]["samples"], "n_test": len(ids)}
    ref_ids, ref_r, ref_c = ranked[REFERENCE]
    for name, (ids, r, c) in ranked.items():
        assert ids == ref_ids
        results[name]["aurc_minus_reference"] = bootstrap_aurc(ref_r, ref_c, r, c)
    curves = {f"{n} ({results[n]['score']})": risk_coverage(r, c) for n, (_, r, c) in ranked.items()}
    compare_risk_coverage(curves, root / "risk_coverage.png",
                          f"{Path(a.manifest).stem}, test split: mean Dice of the accepted images")
    write_tables(a, root, results)
    return 0


def cell(x, fmt="{:.2f}", scale=100.0) -> str:
    return "–" if x is None else fmt.format(x * scale)


def write_tables(a, root: Path, results: dict) -> None:
    head = (f"{a.manifest}, test split ({next(iter(results.values()))['n_test']} images), {a.size} px, seed "
            f"{a.seed}, recipe {a.recipe}, {a.minutes:g} CPU minutes of training per source (train.clock=process; "
            f"the ensemble: {MEMBERS} runs of {a.minutes / MEMBERS:g}), threshold 0.5, metrics per image at the "
            f"original size; risk = 1 - fused Dice; each source's score chosen by validation AURC; calibrate at "
            f"target Dice {a.target} with delta {a.delta} on the validation split; seconds per image: the whole "
            f"predict work per image (read, sample, fuse, score, write), {a.threads} thread(s)")
    lines = [head, "", "| source | S | score (chosen on val) | lesion-image Dice | overall Dice | AURC | e-AURC | "
             f"coverage at {a.target} | realised Dice of accepted | UEO | ECE | s / image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        sel, cal = r["selective"], r["calibration"]
        if "refused" in cal:
            coverage, realised = "not calibrated", "–"
        else:
            coverage = f"{100 * sel['coverage']:.1f} %" if sel else "–"
            realised = cell(sel["accepted_mean_dice"]) if sel else "–"
        lines.append(f"| {r['source']} | {r['samples']} | {r['score']} | {cell(r['lesion_dice'])} | {cell(r['dice'])} "
                     f"| {r['aurc']:.4f} | {r['eaurc']:.4f} | {coverage} | {realised} | {r['ueo']:.3f} | "
                     f"{r['ece']:.4f} | {r['s_per_image']:.3f} |")
    lines += ["", f"| AURC minus {REFERENCE} (paired over test images) | mean | 95 % bootstrap interval |",
              "| --- | --- | --- |"]
    for r in results.values():
        d = r["aurc_minus_reference"]
        lines.append(f"| {r['source']} | {d['mean']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] |")
    lines += ["", "| source | AURC on test by score: agreement / lesion fraction / entropy / band entropy | "
              "optimal | random | pixel AUROC | scores' share of predict time |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        by = " / ".join(f"{r['test_aurc'][k]:.4f}" if k in r["test_aurc"] else "–"
                        for k in ("agreement", "lesion_fraction", "entropy", "band_entropy"))
        lines.append(f"| {r['source']} | {by} | {r['optimal_aurc']:.4f} | {r['random_aurc']:.4f} | "
                     f"{r['pixel_auroc']:.4f} | {cell(r['scores_share'], '{:.2f} %')} |")
    refused = {r["source"]: r["calibration"]["refused"] for r in results.values() if "refused" in r["calibration"]}
    if refused:
        lines += ["", "calibrate refused: " + "; ".join(f"{k}: {v}" for k, v in refused.items())]
    (root / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "table.json").write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
