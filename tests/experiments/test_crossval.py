"""lesiondiff cv: k-fold cross-validation per dataset (UniSegDiff Table 3 form), resumable."""

import csv
import json

import numpy as np
import pytest

from lesiondiff.cli import main
from lesiondiff.config import Config
from lesiondiff.data.manifest import Manifest
from lesiondiff.experiments import crossval as cv
from tiny_settings import TINY_MODEL

TINY = [*TINY_MODEL,
        "train.val_every=3", "train.log_every=3", "train.batch_size=4", "train.val_steps=2", "data.val_max_images=4"]


@pytest.fixture(scope="module")
def unified(phantom_dir, tmp_path_factory):
    """The session's phantoms and a second, smaller phantom set (32 px), indexed together with 2 folds."""
    from lesiondiff.data.synthetic import generate

    root = tmp_path_factory.mktemp("unified")
    generate(root / "small", n=12, size=32, seed=1)
    path = root / "unified.csv"
    assert main(["data", "index", str(phantom_dir), str(root / "small"), "-o", str(path), "--folds", "2",
                 "--no-check"]) == 0
    return path


def test_over_folds_is_mean_and_sample_std():
    assert cv.over_folds([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n_folds": 3, "per_fold": [1.0, 2.0, 3.0]}
    assert cv.over_folds([4.0])["std"] is None  # one fold: no spread


def test_fold_config_and_errors(unified, phantom_manifest, tmp_path, capsys):
    s = cv.CVSettings(preset="unet", manifest=str(unified), budget_minutes=1.0, out=str(tmp_path), size=32,
                      overrides=["data.fold=7", *TINY])
    cfg = cv.run_config(s, 1)
    assert (cfg.data.fold, cfg.data.size, cfg.model.base_channels) == (1, 32, 8)  # the fold is cv's to set
    assert cv.fold_numbers(Manifest.read(unified), None, "m") == [0, 1]
    assert cv.fold_numbers(Manifest.read(unified), 1, "m") == [0]
    code = main(["cv", "--preset", "unet", "--manifest", str(phantom_manifest), "--budget-minutes", "1",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no folds" in err and "--folds K" in err
    code = main(["cv", "--preset", "unet", "--manifest", str(unified), "--budget-minutes", "1", "--folds", "3",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "has 2 folds" in capsys.readouterr().err


def _fused(path):
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r["which"] == "fused"]


def _mtimes(out):
    files = [*out.glob("*/train/checkpoints/*.safetensors"), *out.glob("*/predictions/predictions.csv"),
             *out.glob("*/evaluation/summary.json")]
    return {str(f): f.stat().st_mtime_ns for f in files}


@pytest.mark.slow
def test_cv_end_to_end_aggregates_the_folds_and_is_idempotent(unified, tmp_path, capsys):
    out = tmp_path / "cv"
    cli = ["cv", "--preset", "ensemdiff", "--manifest", str(unified), "--budget-minutes", "1", "--out", str(out),
           "--size", "32", "--max-steps", "3", "--samples", "2", "--steps", "2", "--device", "cpu", *TINY]
    assert main(cli) == 0
    printed = capsys.readouterr().out
    state = json.loads((out / "cv.json").read_text(encoding="utf-8"))
    manifest = Manifest.read(unified)
    datasets = sorted({r["dataset"] for r in manifest.rows()})
    test_ids = {r["id"] for r in manifest.rows(split="test")}
    dice = {"overall": [], **{d: [] for d in datasets}}
    for k in (0, 1):
        run = out / f"fold-{k}"
        assert Config.load(run / "train/config.yaml").data.fold == k
        summary = json.loads((run / "evaluation/summary.json").read_text(encoding="utf-8"))
        fold_ids = {r["id"] for r in manifest.select(f"fold:{k}")}
        rows = _fused(run / "evaluation/metrics.csv")
        assert summary["split"] == f"fold:{k}" and {r["id"] for r in rows} == fold_ids
        assert not fold_ids & test_ids
        dice["overall"].append(100 * summary["fused"]["all"]["dice"]["mean"])
        for d in datasets:  # per dataset: the mean of that dataset's rows of metrics.csv
            dice[d].append(100 * np.mean([float(r["dice"]) for r in rows if r["dataset"] == d]))
            assert state["folds"][str(k)]["figures"]["datasets"][d]["dice_pct"] == pytest.approx(dice[d][-1])
    agg = state["aggregate"]
    for name, values in dice.items():
        stats = agg["overall"]["dice_pct"] if name == "overall" else agg["datasets"][name]["dice_pct"]
        assert stats["mean"] == pytest.approx(np.mean(values)) and stats["n_folds"] == 2
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert agg["overall"]["iou_pct"]["per_fold"] == pytest.approx(
        [100 * json.loads((out / f"fold-{k}/evaluation/summary.json").read_text())["fused"]["all"]["iou"]["mean"]
         for k in (0, 1)])
    md = (out / "cv.md").read_text(encoding="utf-8")
    assert md.strip() in printed
    header = next(x for x in md.splitlines() if x.startswith("| preset |"))
    assert header == ("| preset | " + " | ".join(f"{d} {m}" for d in datasets for m in ("mDice %", "mIoU %"))
                      + " | overall mDice % | overall mIoU % |")
    row = next(x for x in md.splitlines() if x.startswith("| ensemdiff |"))
    o = agg["overall"]["dice_pct"]
    assert f"{o['mean']:.2f} ± {o['std']:.2f}" in row
    assert "2-fold cross-validation" in md and f"the {len(test_ids)} test-split rows are held out" in md
    assert "ddim 2 steps" in md and "sample std (ddof = 1)" in md and "device cpu" in md

    before = _mtimes(out)
    assert main(cli) == 0  # the same command again: nothing is redone
    state = json.loads((out / "cv.json").read_text(encoding="utf-8"))
    for entry in state["folds"].values():
        assert entry["train"]["action"] == "skipped (already trained)"
        assert entry["predictions"].startswith("skipped") and entry["evaluation"].startswith("skipped")
    assert _mtimes(out) == before and state["aggregate"] == agg

    # the manifest indexed again with other folds: the folder's models saw other rows, so it is refused
    moved = tmp_path / "moved.csv"
    Manifest([{**r, "fold": 1 - r["fold"] if r["fold"] >= 0 else -1} for r in manifest.rows()]).write(moved)
    cli[cli.index(str(unified))] = str(moved)
    assert main(cli) == 2 and "made from other folds" in capsys.readouterr().err
