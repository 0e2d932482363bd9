"""Train, checkpoint, resume, predict and evaluate on phantoms, with tiny models."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lesiondiff.engine.checkpoint import Checkpoint
from lesiondiff.engine.evaluate import evaluate
from lesiondiff.engine.predict import Predictor, collect_inputs
from lesiondiff.engine.train import Trainer
from lesiondiff.errors import LesiondiffError
from lesiondiff.presets import load_preset
from tiny_settings import TINY_MODEL

TINY = [*TINY_MODEL,
        "data.size=32", "train.batch_size=4", "train.val_every=3", "train.log_every=3", "train.val_steps=2",
        "data.val_max_images=4", "sample.steps=2", "sample.samples=3"]


@pytest.fixture(scope="module")
def manifest(phantom_manifest):
    return phantom_manifest


def cfg_for(manifest, preset="ensemdiff", steps=6, extra=()):
    return load_preset(preset).override([f"data.manifest={manifest}", f"train.steps={steps}", *TINY, *extra])


def test_resume_continues_exactly(manifest, tmp_path):
    """3 steps + resume to 6 gives the same weights, EMA and optimizer state as 6 steps straight."""
    Trainer(cfg_for(manifest), tmp_path / "straight", device="cpu").fit()
    Trainer(cfg_for(manifest, steps=3), tmp_path / "split", device="cpu").fit()
    with pytest.raises(LesiondiffError, match="already holds a run"):
        Trainer(cfg_for(manifest), tmp_path / "split", device="cpu")
    summary = Trainer(cfg_for(manifest), tmp_path / "split", device="cpu", resume=True).fit()
    assert summary["step"] == 6
    a = load_file(str(tmp_path / "straight/checkpoints/last.safetensors"))
    b = load_file(str(tmp_path / "split/checkpoints/last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    log = (tmp_path / "split/log.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["3", "6"]


def test_checkpoint_is_safetensors_with_state(manifest, tmp_path):
    Trainer(cfg_for(manifest, steps=3), tmp_path / "run", device="cpu").fit()
    ckpt = Checkpoint(tmp_path / "run/checkpoints/best.safetensors")
    assert ckpt.state["step"] == 3 and ckpt.section("model") and ckpt.section("ema") and ckpt.section("optim")
    assert (tmp_path / "run/config.yaml").is_file()
    assert not list((tmp_path / "run/checkpoints").glob("*.tmp*"))
    with pytest.raises(LesiondiffError, match="checkpoint not found"):
        Checkpoint(tmp_path / "run/checkpoints/nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LesiondiffError, match="bad.safetensors: not a readable safetensors checkpoint"):
        Checkpoint(bad)


def test_incompatible_checkpoint_is_refused(manifest, tmp_path):
    Trainer(cfg_for(manifest, steps=3), tmp_path / "run", device="cpu").fit()
    cfg_path = tmp_path / "run/config.yaml"
    cfg_path.write_text(cfg_path.read_text(encoding="utf-8").replace("base_channels: 8", "base_channels: 16"))
    with pytest.raises(LesiondiffError, match="checkpoint does not match the model in config.yaml"):
        Predictor.from_run(tmp_path / "run", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("preset,fusion", [("ensemdiff", "staple"), ("unet", "mean")])
def test_train_predict_evaluate(manifest, tmp_path, preset, fusion):
    Trainer(cfg_for(manifest, preset, steps=6), tmp_path / "run", device="cpu").fit()
    predictor = Predictor.from_run(tmp_path / "run", device="cpu", overrides=[f"fusion.method={fusion}"])
    items = collect_inputs([], str(manifest), "test")
    predictor.run(items, tmp_path / "pred")
    mask = tmp_path / "pred" / f"{items[0][0]}_mask.png"
    from PIL import Image

    assert Image.open(mask).size == Image.open(items[0][1]).size  # original size (64 px), not the network's 32
    assert Image.open(tmp_path / "pred" / f"{items[0][0]}_maps.png").size == (3 * 64 + 8, 14 + 64 + 18)
    with np.load(tmp_path / "pred" / f"{items[0][0]}_probs.npz") as npz:
        samples = npz["samples"]
        assert samples.shape == (3, 32, 32)
        if preset == "unet":  # a feed-forward U-Net ignores the noise: its samples are identical
            assert np.allclose(samples[0], samples[1], atol=2e-3)
        assert np.allclose(npz["coherence"], samples.astype(np.float32).mean(0), atol=1e-3)
    summary = evaluate(tmp_path / "pred", manifest, "test")
    assert summary["n_images"] == len(items)
    for stats in summary["fused"]["all"].values():
        assert stats["n"] + stats["n_nan"] == len(items)
    d = summary["fused"]["all"]["dice"]
    assert 0 <= d["mean"] <= 1 and summary["fused"]["all"]["iou"]["mean"] <= d["mean"] + 1e-9
    rows = (tmp_path / "pred/metrics.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(items) * (1 + 3)
    assert json.loads((tmp_path / "pred/summary.json").read_text(encoding="utf-8"))["threshold"] == 0.5


def test_a_two_head_model_is_sampled_through_either_head(manifest, tmp_path):
    """palscdiff predicts eps and x0: --prediction picks the head; a one-head design refuses to switch."""
    Trainer(cfg_for(manifest, "palscdiff", steps=3), tmp_path / "pal", device="cpu").fit()
    items = collect_inputs([], str(manifest), "test")[:2]
    via = {}
    for prediction in ("x0", "epsilon"):
        p = Predictor.from_run(tmp_path / "pal", overrides=[f"diffusion.prediction={prediction}"])
        assert p.model.prediction == prediction
        p.run(items, tmp_path / prediction)
        assert json.loads((tmp_path / prediction / "predict.json").read_text(encoding="utf-8"))["prediction"] == prediction
        via[prediction] = p.sample(*items[0][:1], image=np.full((32, 32, 1), 128, np.uint8))
    assert not np.allclose(via["x0"], via["epsilon"])
    Trainer(cfg_for(manifest, steps=1), tmp_path / "ens", device="cpu").fit()
    with pytest.raises(LesiondiffError, match="has one epsilon head; it cannot be sampled through x0"):
        Predictor.from_run(tmp_path / "ens", overrides=["diffusion.prediction=x0"])
