"""lesiondiff ablate: a preset's arms and reference presets on one budget, resumable, with paired differences."""

import csv
import json

import numpy as np
import pytest

from lesiondiff.cli import main
from lesiondiff.errors import LesiondiffError
from lesiondiff.experiments import ablate as abl
from lesiondiff.experiments.runner import sampling
from lesiondiff.presets import load_preset
from tiny_settings import TINY_MODEL

TINY = [*TINY_MODEL,
        "train.val_every=3", "train.log_every=3", "train.batch_size=4", "train.val_steps=2", "data.val_max_images=4"]


@pytest.fixture(scope="module")
def manifest(phantom_manifest):
    return phantom_manifest


def settings(manifest, out, **kw):
    kw = {"size": 32, "max_steps": 3, "samples": 2, "steps": 2, "overrides": TINY, **kw}
    return abl.AblateSettings(preset="palscdiff", manifest=str(manifest), budget_minutes=1.0, out=str(out), **kw)


def test_arms_differ_only_in_their_component(manifest, tmp_path):
    runs = {r["name"]: r for r in abl.plan(settings(manifest, tmp_path, baselines=["unet"]))}
    assert list(runs) == ["baseline", "ibpa", "standard-aug", "pal", "ibpa-pal", "ref-unet"]
    cfg = {n: abl.run_config(r, settings(manifest, tmp_path)) for n, r in runs.items()}
    facts = {n: (c.model.options["branches"], c.curriculum.name, c.data.augment) for n, c in cfg.items()
             if n != "ref-unet"}
    assert facts == {"baseline": (1, "none", []), "ibpa": (2, "none", []), "standard-aug": (1, "none", ["flip", "scale"]),
                     "pal": (1, "palscdiff", []), "ibpa-pal": (2, "palscdiff", [])}
    # everything else is shared, and the user's overrides come last
    shared = {(c.data.size, c.train.seed, c.train.steps, c.train.max_minutes, c.model.base_channels)
              for c in cfg.values()}
    assert shared == {(32, 0, 3, 1.0, 8)}
    assert runs["ref-unet"]["mode"] == "feedforward" and runs["ibpa"]["mode"] == "diffusion"
    s = settings(manifest, tmp_path)
    ablated = load_preset("palscdiff")
    assert sampling(s, ablated, "diffusion") == {"samples": 2, "sampler": "ddim", "steps": 2, "seed": 0,
                                                 "fusion": "majority"}
    assert sampling(s, ablated, "feedforward")["sampler"] == "oneshot"
    assert sampling(settings(manifest, tmp_path, samples=None), ablated, "diffusion")["samples"] == 5  # the preset's
    assert runs["ref-unet"]["sampling"] == sampling(s, ablated, "feedforward")  # baselines: the ablated preset's


def test_pgdiffseg_arms_differ_only_in_their_component(manifest, tmp_path):
    s = settings(manifest, tmp_path)
    s.preset = "pgdiffseg"
    runs = abl.plan(s)
    assert [r["name"] for r in runs] == ["pgdiffseg", "no-prior", "no-psa", "no-sixfold"]
    facts = {r["name"]: (c.model.options["prior"], c.model.options.get("psa", True), c.data.augment)
             for r in runs for c in [abl.run_config(r, s)]}
    assert facts == {"pgdiffseg": (True, True, ["sixfold"]), "no-prior": (False, True, ["sixfold"]),
                     "no-psa": (True, False, ["sixfold"]), "no-sixfold": (True, True, [])}


def test_unknown_arm_and_preset_without_ablation_are_errors(manifest, tmp_path):
    with pytest.raises(LesiondiffError, match="unknown arm 'nope'"):
        abl.plan(settings(manifest, tmp_path, arms=["nope"]))
    with pytest.raises(LesiondiffError, match="has no ablation; ablations exist for: diffseg-weak, palscdiff, pgdiffseg, unisegdiff"):
        abl.load_ablation("ensemdiff")
    assert [r["name"] for r in abl.plan(settings(manifest, tmp_path, arms=["ibpa", "baseline"]))] == \
        ["baseline", "ibpa"]


@pytest.mark.slow
def test_ablation_end_to_end_and_idempotent(manifest, tmp_path, capsys):
    out = tmp_path / "abl"
    cli = ["ablate", "--preset", "palscdiff", "--manifest", str(manifest), "--budget-minutes", "1", "--out", str(out),
           "--arms", "baseline,ibpa-pal", "--baselines", "unet", "--size", "32", "--max-steps", "3", "--samples", "2",
           "--steps", "2", "--device", "cpu", *TINY]
    assert main(cli) == 0
    printed = capsys.readouterr().out
    with (out / "ablation.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["baseline", "ibpa-pal", "ref-unet"]
    assert float(rows["baseline"]["delta_dice_pp"]) == 0 and float(rows["baseline"]["delta_dice_p"]) == 1
    # the delta is the mean of the per-image differences in the two runs' metrics.csv
    dice = {}
    for run in rows:
        with (out / run / "evaluation/metrics.csv").open() as f:
            dice[run] = {r["id"]: float(r["dice"]) for r in csv.DictReader(f) if r["which"] == "fused"}
    ids = sorted(dice["baseline"])
    expect = 100 * np.mean([dice["ibpa-pal"][i] - dice["baseline"][i] for i in ids])
    assert float(rows["ibpa-pal"]["delta_dice_pp"]) == pytest.approx(expect, abs=1e-9)
    assert float(rows["ibpa-pal"]["dice_pct"]) == pytest.approx(100 * np.mean(list(dice["ibpa-pal"].values())))
    assert int(rows["ibpa-pal"]["steps"]) == 3
    # every diffusion run was sampled the same way: 2 samples, ddim 2 steps, majority vote
    for run in ("baseline", "ibpa-pal"):
        meta = json.loads((out / run / "predictions/predict.json").read_text(encoding="utf-8"))
        assert (meta["samples"], meta["sampler"], meta["steps"], meta["fusion"]) == (2, "ddim", 2, "majority")
    assert json.loads((out / "ibpa-pal/train/summary.json").read_text(encoding="utf-8"))["curriculum"]
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert "| Baseline (MedSegDiff) |" in md and "(reference)" in md and "Protocol: split test" in md
    assert md.strip() in printed

    # the same command again: nothing is retrained, re-predicted or re-evaluated
    assert main(cli) == 0
    state = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    for entry in state["runs"].values():
        assert entry["train"]["action"] == "skipped (already trained)"
        assert entry["predictions"].startswith("skipped") and entry["evaluation"].startswith("skipped")


@pytest.mark.slow
def test_unisegdiff_denoising_methods_ablation(manifest, tmp_path):
    """Arms with their own sampling (the paper's Table 4): one-step arms reuse the uniform arm's training, the
    staged arm draws 20 masks in 12 passes fused by STAPLE, the baseline samples its own way; the table gives
    each run's sampling and speed."""
    out = tmp_path / "abl"
    cli = ["ablate", "--preset", "unisegdiff", "--manifest", str(manifest), "--budget-minutes", "1", "--out",
           str(out), "--arms", "uniform-x0,onestep-x0,staged", "--baselines", "unet", "--size", "32",
           "--max-steps", "2", "--steps", "3", "--device", "cpu", *TINY, "train.val_samples=1"]
    assert main(cli) == 0
    assert not (out / "onestep-x0" / "train").exists()
    meta = {run: json.loads((out / run / "predictions/predict.json").read_text(encoding="utf-8"))
            for run in ("uniform-x0", "onestep-x0", "staged", "ref-unet")}
    assert (meta["uniform-x0"]["sampler"], meta["uniform-x0"]["samples"]) == ("ddim", 1)
    assert (meta["onestep-x0"]["sampler"], meta["onestep-x0"]["network_calls"]) == ("oneshot",
                                                                                    {"passes": 1, "evaluations": 1})
    assert (meta["staged"]["sampler"], meta["staged"]["samples"], meta["staged"]["fusion"]) == ("staged", 20, "staple")
    assert meta["staged"]["network_calls"] == {"passes": 12, "evaluations": 41}
    assert meta["ref-unet"]["sampler"] == "oneshot" and meta["ref-unet"]["samples"] == 1
    assert meta["staged"]["speed"]["images_per_s"] > 0 and meta["staged"]["speed"]["device"] == "cpu"
    with (out / "ablation.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["onestep-x0"]["steps"] == rows["uniform-x0"]["steps"]  # the same trained model
    assert float(rows["staged"]["images_per_s"]) == pytest.approx(meta["staged"]["speed"]["images_per_s"])
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert "onestep-x0 reuses the trained model of uniform-x0" in md and "staged, S=20, staple, 12 passes" in md


def test_an_arm_reusing_training_must_match_it(manifest, tmp_path, monkeypatch):
    definition = abl.load_ablation("unisegdiff")
    arm = next(a for a in definition["arms"] if a["name"] == "onestep-eps")
    arm["overrides"] = [*arm["overrides"], "train.lr=0.5"]
    monkeypatch.setattr(abl, "load_ablation", lambda preset: definition)
    s = abl.AblateSettings(preset="unisegdiff", manifest=str(manifest), budget_minutes=1.0, out=str(tmp_path))
    with pytest.raises(LesiondiffError, match="onestep-eps.*train settings differ"):
        abl.plan(s)
    with pytest.raises(LesiondiffError, match="add it to --arms"):
        abl.plan(abl.AblateSettings(preset="unisegdiff", manifest=str(manifest), budget_minutes=1.0,
                                    out=str(tmp_path), arms=["onestep-eps"]))
