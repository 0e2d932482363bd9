"""lesiondiff ablate: a preset's arms and reference presets on one budget, resumable, with paired differences."""

import csv
import json

import numpy as np
import pytest

from lesiondiff.cli import main
from lesiondiff.engine import ablate as abl
from lesiondiff.errors import LesiondiffError

TINY = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_levels=[false,true]",
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
    facts = {n: (c.model.options["branches"], c.curriculum.enabled, c.data.augment) for n, c in cfg.items()
             if n != "ref-unet"}
    assert facts == {"baseline": (1, False, []), "ibpa": (2, False, []), "standard-aug": (1, False, ["flip", "scale"]),
                     "pal": (1, True, []), "ibpa-pal": (2, True, [])}
    # everything else is shared, and the user's overrides come last
    shared = {(c.data.size, c.train.seed, c.train.steps, c.train.max_minutes, c.model.base_channels)
              for c in cfg.values()}
    assert shared == {(32, 0, 3, 1.0, 8)}
    assert runs["ref-unet"]["mode"] == "feedforward" and runs["ibpa"]["mode"] == "diffusion"
    s = settings(manifest, tmp_path)
    assert abl.sampling(s, "diffusion") == {"samples": 2, "sampler": "ddim", "steps": 2, "seed": 0,
                                            "fusion": "majority"}
    assert abl.sampling(s, "feedforward")["sampler"] == "oneshot"
    assert abl.sampling(settings(manifest, tmp_path, samples=None), "diffusion")["samples"] == 5  # the preset's


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
    with pytest.raises(LesiondiffError, match="has no ablation; ablations exist for: palscdiff, pgdiffseg"):
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
