"""The diffusion refiner: equal to its prior at initialisation, two-phase training, sampling from noise or prior."""

import json

import numpy as np
import pytest
import torch

from lesiondiff.build import build_model, build_sampler
from lesiondiff.engine.evaluate import evaluate
from lesiondiff.engine.postprocessing import choose_for_run
from lesiondiff.engine.predict import Predictor, collect_inputs
from lesiondiff.engine.runs import train_run
from lesiondiff.errors import LesiondiffError
from lesiondiff.presets import load_preset

SMALL = ["model.base_channels=8", "model.channel_mult=[1,2,2]", "model.attention_levels=[false,false,true]",
         "model.options.refine_channels=8", "model.options.refine_mult=[1,2]"]


def small_refiner(**sample):
    cfg = load_preset("refiner").override([*SMALL, *(f"sample.{k}={v}" for k, v in sample.items())])
    torch.manual_seed(0)
    model = build_model(cfg, 3).eval()
    for p in model.prior.parameters():  # a prior that is not all zeros, as a trained one
        p.data.normal_(0, 0.2)
    return cfg, model


@pytest.mark.parametrize("start", ["noise", "prior"])
def test_untrained_refiner_samples_equal_the_prior_with_zero_spread(start):
    cfg, model = small_refiner(start=start, start_t=300)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    sampler = build_sampler(cfg, "refine")
    probs = sampler(model, image, 5, 3, torch.Generator().manual_seed(1))
    prior = torch.sigmoid(model.encode(image)["logits"])
    assert probs.shape == (2, 5, 1, 32, 32)
    assert torch.equal(probs >= 0.5, (prior[:, None] >= 0.5).expand_as(probs))  # the same masks
    assert float(probs.std(dim=1).max()) == 0.0  # no spread between the samples
    assert torch.allclose(probs, prior[:, None].expand_as(probs), atol=1e-6)
    assert prior.std() > 0  # the prior is not trivial


def test_refiner_output_is_prior_plus_a_correction_that_training_can_move():
    cfg, model = small_refiner()
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    cond = model.encode(image)
    x_t, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 900])
    out = model.denoise(x_t, t, cond)
    assert torch.equal(out.x0, cond["logits"]) and torch.equal(out.aux["prior"], cond["logits"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("prior.") for n in trainable)
    torch.nn.init.normal_(model.body.out[-1].weight, std=0.1)  # once the last layer moves, x_t matters
    a = model.denoise(x_t, t, cond).x0
    b = model.denoise(-x_t, t, cond).x0
    assert not torch.allclose(a, b)


def test_refiner_options_are_checked():
    with pytest.raises(LesiondiffError, match="refine_mult"):
        build_model(load_preset("refiner").override([*SMALL, "model.options.refine_mult=[1,2,2,2]"]), 1)
    with pytest.raises(LesiondiffError, match="prior_fraction"):
        build_model(load_preset("refiner").override([*SMALL, "model.options.prior_fraction=1.5"]), 1)
    cfg = load_preset("refiner").override(["sample.start=middle"])
    with pytest.raises(LesiondiffError, match="sample.start"):
        build_sampler(cfg, "refine")
    ens = load_preset("ensemdiff").override(["model.base_channels=8", "model.channel_mult=[1,2]",
                                             "model.attention_levels=[false,true]", "sample.start=prior"])
    model = build_model(ens, 1).eval()
    with pytest.raises(LesiondiffError, match="start=prior needs a design with a prior"):
        build_sampler(ens, "refine")(model, torch.zeros(1, 1, 32, 32), 1, 2)


def test_prior_noise_perturbs_the_prior_only_in_training():
    cfg, model = small_refiner()
    noisy = build_model(cfg.override(["model.options.prior_noise=4", "model.options.prior_noise_cells=4"]), 3)
    noisy.load_state_dict(model.state_dict())
    image = torch.rand(3, 3, 32, 32) * 2 - 1
    clean = model.encode(image)["logits"]
    assert torch.equal(noisy.eval().encode(image)["logits"], clean)  # evaluation and sampling: the prior as is
    torch.manual_seed(0)
    delta = noisy.train().encode(image)["logits"] - clean
    assert noisy.prior.training is False  # the prior's own layers stay in eval mode
    assert float(delta.abs().max()) > 0.1
    # a smooth field: neighbouring pixels differ far less than the field's own spread
    assert float((delta[..., 1:, :] - delta[..., :-1, :]).abs().mean()) < 0.2 * float(delta.std())
    assert torch.equal(noisy.train().encode(image)["features"][0], model.encode(image)["features"][0])
    with pytest.raises(LesiondiffError, match="prior_noise"):
        build_model(cfg.override(["model.options.prior_noise=-1"]), 3)


@pytest.mark.slow
def test_tiny_refiner_run_on_phantoms_end_to_end(phantom_manifest, tmp_path):
    """Both phases in one command, the step-0 validation (the prior itself), post-processing chosen on val,
    prediction and evaluation with the image-level figures; then a second refiner that takes the first one's
    prior run instead of training its own."""
    cfg = load_preset("refiner").override([
        f"data.manifest={phantom_manifest}", "train.steps=30", "train.val_every=15", "train.log_every=15",
        "data.size=32", "data.val_max_images=4", "train.warmup=5", "sample.samples=3", *SMALL])
    summary = train_run(cfg, tmp_path / "run", device="cpu")
    assert summary["status"] == "finished" and summary["step"] == 30
    assert summary["pretraining"]["preset"] == "refiner/prior" and summary["pretraining"]["step"] == 18
    log = (tmp_path / "run/log.csv").read_text().splitlines()
    assert log[1].startswith("0,")  # validated before the first step: the refiner then equals its prior
    prior_val = json.loads((tmp_path / "run/prior/summary.json").read_text())
    first_val = float(log[1].split(",")[2])
    assert summary["best_val_dice"] >= first_val
    assert first_val == pytest.approx(prior_val["best_val_dice"], abs=1e-4)  # log.csv: 4 decimals

    rule, scores = choose_for_run(tmp_path / "run", phantom_manifest, "val", device="cpu")
    assert (tmp_path / "run/postprocess.json").is_file()
    assert scores[0]["dice"] >= next(s for s in scores if s["rule"].startswith("none"))["dice"]
    predictor = Predictor.from_run(tmp_path / "run", device="cpu")
    assert predictor.postprocess == rule
    predictor.run(collect_inputs([], str(phantom_manifest), "test"), tmp_path / "pred")
    meta = json.loads((tmp_path / "pred/predict.json").read_text())
    assert meta["postprocess"]["description"] == rule.describe()
    assert meta["network_calls"] == {"passes": 3, "evaluations": 9}
    result = evaluate(tmp_path / "pred", phantom_manifest, "test")
    il = result["image_level"]
    assert il["lesion_images"] + il["empty_images"] == result["n_images"]
    assert result["postprocess"] == rule.describe()

    given = cfg.override([f"model.options.prior_checkpoint={tmp_path / 'run' / 'prior'}", "train.steps=2"])
    summary2 = train_run(given, tmp_path / "run2", device="cpu")
    assert summary2["pretraining"]["action"] == "given" and not (tmp_path / "run2/prior").exists()
    a = np.load(tmp_path / "pred" / f"{collect_inputs([], str(phantom_manifest), 'test')[0][0]}_probs.npz")
    assert a["samples"].shape[0] == 3
