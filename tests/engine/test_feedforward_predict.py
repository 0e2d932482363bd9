"""Feed-forward runs: options that do not apply are ignored with a notice, and what predict.json and the
evaluation say about the samples is true."""

import json

import numpy as np
import pytest

from lesiondiff.cli import main
from lesiondiff.engine.evaluate import evaluate
from lesiondiff.render.tables import format_table


@pytest.fixture(scope="module")
def unet_run(train_tiny_run, tmp_path_factory):
    return train_tiny_run("unet", tmp_path_factory.mktemp("ff") / "run", 2)


def test_diffusion_flags_on_a_unet_run_are_ignored_with_a_notice_and_recorded_truly(unet_run, phantom_manifest,
                                                                                   tmp_path, capsys):
    out = tmp_path / "pred"
    code = main(["predict", "--run", str(unet_run), "--manifest", str(phantom_manifest), "--split", "test",
                 "--out", str(out), "--sampler", "ddim", "--steps", "20", "--fusion", "staple", "--samples", "3"])
    text = capsys.readouterr().out
    assert code == 0
    assert "a feed-forward run (one network evaluation per image): --sampler ddim, --steps 20 do not apply" in text
    assert "its 3 samples are identical copies of one prediction (no uncertainty)" in text
    meta = json.loads((out / "predict.json").read_text())
    assert meta["sampler"] == "oneshot" and meta["steps"] == 1 and meta["samples"] == 3
    assert meta["network_calls"] == {"passes": 1, "evaluations": 1}
    assert meta["samples_are"].startswith("identical copies of one prediction")
    first = sorted(out.glob("*_probs.npz"))[0]
    with np.load(first) as npz:
        samples = npz["samples"]
        assert samples.shape[0] == 3 and np.array_equal(samples[0], samples[1]) and np.array_equal(samples[0], samples[2])
        assert float(npz["ambiguity"].max()) == 0.0


def test_one_sample_gives_one_row_per_group_not_four_copies(unet_run, phantom_manifest, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(unet_run), "--manifest", str(phantom_manifest), "--split", "test",
                 "--out", str(out), "--samples", "1"]) == 0
    capsys.readouterr()
    table = format_table(evaluate(out, phantom_manifest, "test"))
    assert "fused / all" in table
    assert "single_sample / all" not in table and "round 1 / all" not in table and "mean_of_samples /" not in table
    assert "S = 1: the one sample is the fused mask" in table


def test_evaluate_scores_the_split_predict_was_given_by_default(unet_run, phantom_manifest, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(unet_run), "--manifest", str(phantom_manifest), "--split", "val",
                 "--out", str(out)]) == 0
    assert json.loads((out / "predict.json").read_text())["split"] == "val"
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--manifest", str(phantom_manifest)]) == 0
    assert "split: val (the split predict was given" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["split"] == "val"


def test_predict_takes_section_key_value_overrides_like_train(unet_run, phantom_manifest, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(unet_run), "--manifest", str(phantom_manifest), "--split", "test",
                 "--out", str(out), "sample.threshold=0.3", "sample.seed=7"]) == 0
    meta = json.loads((out / "predict.json").read_text())
    assert meta["threshold"] == 0.3 and meta["seed"] == 7
    capsys.readouterr()
    assert main(["predict", "--run", str(unet_run), "--out", str(tmp_path / "p2"), "sample.nonsense=1"]) == 2
    assert "unknown config key 'sample.nonsense'" in capsys.readouterr().err
