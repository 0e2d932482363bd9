"""A tiny unified UniSegDiff run: phantoms and a real dataset in one manifest, one model, scored per dataset."""

import json

import pytest

from lesiondiff.cli import main
from tiny_settings import TINY_MODEL

TINY = [*TINY_MODEL, "data.size=32",
        "train.batch_size=4", "train.val_every=4", "train.log_every=4", "data.val_max_images=4",
        "train.val_samples=2"]


@pytest.mark.slow
def test_unified_unisegdiff_on_phantoms_and_isic(phantom_dir, shared_data, tmp_path, capsys):
    manifest = tmp_path / "unified.csv"
    assert main(["data", "index", str(phantom_dir), str(shared_data / "ISIC2017_512"), "-o", str(manifest),
                 "--seed", "0"]) == 0
    run, pred = tmp_path / "run", tmp_path / "pred"
    assert main(["train", "--preset", "unisegdiff", "--manifest", str(manifest), "--out", str(run),
                 "--device", "cpu", "train.steps=4", *TINY]) == 0
    assert (run / "cfenet" / "checkpoints" / "last.safetensors").is_file()  # the pre-training phase ran
    assert main(["predict", "--run", str(run), "--manifest", str(manifest), "--split", "test", "--out", str(pred),
                 "--device", "cpu"]) == 0
    meta = json.loads((pred / "predict.json").read_text(encoding="utf-8"))
    assert (meta["sampler"], meta["samples"], meta["fusion"]) == ("staged", 20, "staple")
    assert meta["network_calls"] == {"passes": 12, "evaluations": 41}
    assert main(["evaluate", "--pred", str(pred), "--manifest", str(manifest), "--split", "test"]) == 0
    summary = json.loads((pred / "summary.json").read_text(encoding="utf-8"))
    datasets = summary["datasets"]
    assert "isic" in datasets and len(datasets) == 2  # the phantoms take their folder's name
    # every test image is scored once, in exactly one dataset; the overall mean is the image-weighted mean
    n = {d: v["n_images"] for d, v in datasets.items()}
    assert sum(n.values()) == summary["fused"]["all"]["dice"]["n"]
    overall = sum(v["fused"]["dice"]["mean"] * n[d] for d, v in datasets.items()) / sum(n.values())
    assert summary["fused"]["all"]["dice"]["mean"] == pytest.approx(overall, abs=1e-9)
    assert "dataset isic" in capsys.readouterr().out
