"""DiffSeg ("DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference"): the class-conditional
image model, its weakly supervised objective (class_eps) and the class-difference sampler, at tiny sizes."""

import json
import math

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from lesiondiff.build import build_model, build_objective, build_sampler
from lesiondiff.config import Config
from lesiondiff.errors import LesiondiffError
from lesiondiff.methods.diffseg import ClassDifferenceSampler, ClassEps
from lesiondiff.models.diffseg import DiffSeg
from lesiondiff.presets import load_preset

TINY = ["model.name=diffseg", "model.base_channels=8", "model.channel_mult=[1,2]",
        "model.attention_levels=[false,true]", "diffusion.objective=class_eps"]


def tiny_config(*over: str) -> Config:
    return Config().override([*TINY, *over])


def tiny_model(channels: int = 3) -> DiffSeg:
    """A tiny diffseg whose every path is live: the residual blocks' zero-initialised output convolutions
    would hide the class at initialisation, so all weights get a small random perturbation."""
    torch.manual_seed(0)
    model = build_model(tiny_config(), channels).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def spy_on(model: DiffSeg) -> list[tuple[int, list[int], list[int]]]:
    """Record (rows, t, cls) of every ``noise_prediction`` call."""
    calls = []
    predict = model.noise_prediction

    def spy(x_t, t, cls):
        calls.append((x_t.shape[0], t.tolist(), cls.tolist()))
        return predict(x_t, t, cls)

    model.noise_prediction = spy
    return calls


def test_model_predicts_image_noise_under_a_class_and_is_no_mask_denoiser():
    model = tiny_model(3)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([60, 150])
    eps0 = model.noise_prediction(x, t, torch.tensor([0, 0]))
    eps1 = model.noise_prediction(x, t, torch.tensor([1, 1]))
    assert eps0.shape == (2, 3, 16, 16) and torch.isfinite(eps0).all()
    assert not torch.allclose(eps0, eps1)  # the class reaches the output
    assert torch.equal(model.encode(x), x)  # the clean image is what gets noised
    with pytest.raises(LesiondiffError, match="not a mask denoiser"):
        model.denoise(torch.randn(2, 1, 16, 16), t, x)
    with pytest.raises(LesiondiffError, match="model 'diffseg'"):
        build_model(tiny_config("diffusion.mode=feedforward"), 3)
    with pytest.raises(LesiondiffError, match="needs a class-conditional image model"):
        build_sampler(tiny_config(), "class_difference")(build_model(Config().override(TINY[1:4]), 1),
                                                                   torch.randn(1, 1, 16, 16), 2)


def test_difference_is_exactly_zero_when_the_class_embeddings_are_equal():
    model = tiny_model(3)
    with torch.no_grad():
        model.class_embedding.weight[1] = model.class_embedding.weight[0]
    sampler = ClassDifferenceSampler(tiny_config().diffusion)
    d = sampler.difference(model, torch.randn(2, 3, 16, 16), 4, torch.Generator().manual_seed(0))
    assert d.shape == (2, 4, 16, 16) and torch.count_nonzero(d) == 0
    probs = sampler(model, torch.randn(2, 3, 16, 16), 4, 1, torch.Generator().manual_seed(0))
    assert (probs < 0.5).all()  # a constant map is empty, by Otsu as by a fixed threshold


def test_sampler_binarisation_is_the_thresholded_smoothed_difference():
    model = tiny_model(3)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    cfg = tiny_config().diffusion
    d = ClassDifferenceSampler(cfg).difference(model, image, 10, torch.Generator().manual_seed(5)).double()
    # fixed threshold (Eq. 2 with a given delta): the median, so both sides are populated
    delta = float(d.median())
    fixed = ClassDifferenceSampler(cfg, otsu=0, threshold=delta)(model, image, 10, 1, torch.Generator().manual_seed(5))
    assert fixed.shape == (2, 10, 1, 16, 16) and fixed.min() >= 0 and fixed.max() <= 1
    assert torch.equal(fixed[:, :, 0] >= 0.5, d > delta)
    # per-map Otsu (the default)
    otsu = build_sampler(Config(diffusion=cfg), "class_difference")(model, image, 10, 1, torch.Generator().manual_seed(5))
    expected = np.stack([[m > threshold_otsu(m) for m in row] for row in d.numpy()])
    assert np.array_equal((otsu[:, :, 0] >= 0.5).numpy(), expected) and expected.any() and not expected.all()
    # the probability keeps the order of the difference within each map (DenseCRF's unary)
    p, dd = otsu[0, 3, 0].flatten(), d[0, 3].flatten()
    order = torch.argsort(dd)
    assert (p[order].diff() >= 0).all()
    # the same seed gives the same outputs; the smoothing is the one configured
    again = build_sampler(Config(diffusion=cfg), "class_difference")(model, image, 10, 1, torch.Generator().manual_seed(5))
    assert torch.equal(again, otsu)
    raw = ClassDifferenceSampler(cfg, sigma=0).difference(model, image, 10, torch.Generator().manual_seed(5))
    assert not torch.allclose(raw.double(), d)


def test_sampler_calls_the_network_once_with_both_classes_at_the_papers_timesteps():
    model = tiny_model(1)
    calls = spy_on(model)
    sampler = build_sampler(tiny_config(), "class_difference")
    image = torch.randn(1, 1, 16, 16)
    probs = sampler(model, image, 10, 1, torch.Generator().manual_seed(0))
    assert probs.shape == (1, 10, 1, 16, 16)
    ts = list(range(60, 151, 10))
    assert calls == [(20, ts + ts, [0] * 10 + [1] * 10)]
    assert sampler.network_calls(1, 10) == {"passes": len(calls), "evaluations": sum(c[0] for c in calls)}
    # an explicit max_batch cuts the 2S rows into chunks (still one pass); the outputs do not change
    calls.clear()
    chunked = build_sampler(tiny_config(), "class_difference", max_batch=6)
    again = chunked(model, image, 10, 1, torch.Generator().manual_seed(0))
    assert chunked.network_calls(1, 10) == {"passes": 1, "evaluations": sum(c[0] for c in calls)}
    assert len(calls) == math.ceil(20 / 6)
    assert torch.allclose(again, probs, atol=1e-5)
    # settings come from sample.options (checked against the sampler's keywords); too many outputs for the
    # schedule is a clear error
    cfg = tiny_config("sample.sampler=class_difference", "sample.options={t_first: 100, t_stride: 5}")
    assert build_sampler(cfg).timesteps(3) == [100, 105, 110]
    own = tiny_config("sample.sampler=class_difference", "sample.options.shared_noise=false")
    assert build_sampler(own).samples_note(1) == "one class-difference mask per timestep, t = 60, each from its own noise"
    with pytest.raises(LesiondiffError, match="sample.options.t_frist: not an option of sampler 'class_difference'"):
        build_sampler(tiny_config("sample.sampler=class_difference", "sample.options.t_frist=1"))
    with pytest.raises(LesiondiffError, match="beyond the schedule"):
        build_sampler(tiny_config(), "class_difference").timesteps(95)


def batch_without_masks(lesion: list[bool], channels: int = 3) -> dict:
    b = len(lesion)
    return {"image": torch.rand(b, channels, 16, 16) * 2 - 1, "healthy": torch.rand(b, channels, 16, 16) * 2 - 1,
            "lesion": torch.tensor(lesion)}


def test_objective_uses_classes_only_and_never_the_mask():
    model = tiny_model(3).train()
    objective = build_objective(tiny_config().diffusion)
    assert isinstance(objective, ClassEps) and objective.noise_like == "image"
    batch = batch_without_masks([True, False, True, True])
    t = torch.tensor([0, 10, 500, 999])
    loss = objective(model, batch, t, torch.randn(4, 3, 16, 16))  # no "mask" key at all
    assert torch.isfinite(loss.total) and loss.total.requires_grad
    loss.total.backward()
    assert model.class_embedding.weight.grad is not None
    nan_masks = {**batch, "mask": torch.full((4, 1, 16, 16), float("nan"))}
    assert torch.isfinite(objective(model, nan_masks, t, torch.randn(4, 3, 16, 16)).total)
    # mask-shaped noise (another caller): image-shaped noise is drawn instead
    assert torch.isfinite(objective(model, batch, t, torch.randn(4, 1, 16, 16)).total)
    with pytest.raises(LesiondiffError, match="data.healthy"):
        objective(model, {"image": batch["image"], "mask": torch.ones(4, 1, 16, 16)}, t, torch.randn(4, 3, 16, 16))


@pytest.mark.parametrize("p_healthy", [0.0, 1.0])
def test_objective_noises_the_chosen_image_under_its_class(p_healthy):
    model = tiny_model(3)
    cfg = tiny_config(f"diffusion.objective_options.p_healthy={p_healthy}").diffusion
    objective = build_objective(cfg)
    seen = {}
    predict = model.noise_prediction

    def spy(x_t, t, cls):
        seen.update(x_t=x_t, cls=cls)
        return predict(x_t, t, cls)

    model.noise_prediction = spy
    batch = batch_without_masks([True, False, True])
    t, noise = torch.tensor([5, 100, 900]), torch.randn(3, 3, 16, 16)
    loss = objective(model, batch, t, noise)
    x0 = batch["healthy"] if p_healthy else batch["image"]
    assert torch.allclose(seen["x_t"], objective.noisy(x0, noise, t))
    assert seen["cls"].tolist() == ([0, 0, 0] if p_healthy else [1, 0, 1])
    assert loss.parts["frac_c1"] == pytest.approx(0.0 if p_healthy else 2 / 3)


def test_objective_training_timestep_range():
    objective = build_objective(tiny_config("diffusion.objective_options.t_min=50",
                                            "diffusion.objective_options.t_max=150").diffusion)
    mapped = objective.training_t(torch.arange(1000))
    assert mapped.min() == 50 and mapped.max() == 149 and torch.bincount(mapped - 50).eq(10).all()
    full = build_objective(tiny_config().diffusion)
    assert torch.equal(full.training_t(torch.arange(1000)), torch.arange(1000))
    with pytest.raises(LesiondiffError, match="t_min and t_max"):
        build_objective(tiny_config("diffusion.objective_options.t_min=200",
                                    "diffusion.objective_options.t_max=100").diffusion)


def test_preset_is_the_papers_setting_without_mask_validation():
    cfg = load_preset("diffseg-weak", "paper")
    assert (cfg.model.name, cfg.diffusion.objective, cfg.sample.sampler, cfg.fusion.method) == (
        "diffseg", "class_eps", "class_difference", "crf_rounds")
    assert (cfg.data.size, cfg.train.lr, cfg.train.batch_size, cfg.sample.samples) == (128, 5e-4, 4, 10)
    assert cfg.data.healthy and cfg.data.val_max_images == 0
    assert build_sampler(cfg).timesteps(10) == list(range(60, 151, 10))


def test_diffseg_weak_end_to_end_on_phantoms(train_tiny_run, phantom_manifest, tmp_path, monkeypatch):
    """2 training steps on RGB-converted phantoms (lesion and normal images), then prediction of test images."""
    from lesiondiff.engine.predict import Predictor, collect_inputs

    shapes = []
    call = ClassEps.__call__

    def record(self, model, batch, t, noise):
        shapes.append(tuple(noise.shape))
        return call(self, model, batch, t, noise)

    monkeypatch.setattr(ClassEps, "__call__", record)
    run = train_tiny_run("diffseg-weak", tmp_path / "run", 2, "data.val_max_images=0", "data.channels=3",
                         "train.batch_size=4")
    # the Trainer draws image-shaped noise for class_eps (3 channels; the mask has 1)
    assert shapes == [(4, 3, 32, 32)] * 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_images"] == 0 and summary["best_step"] == summary["step"] == 2  # best = last
    assert (run / "checkpoints" / "best.safetensors").is_file()
    items = collect_inputs([], str(phantom_manifest), "test")[:2]
    predictor = Predictor.from_run(run, device="cpu")
    rows = predictor.run(items, tmp_path / "pred")
    assert len(rows) == 2 and all((tmp_path / "pred" / r["mask"]).is_file() for r in rows)
    with np.load(tmp_path / "pred" / rows[0]["probs"]) as npz:
        assert npz["samples"].shape == (10, 32, 32)
        # sample.maps=masks: coherence is the fraction of the ten binarised outputs (Eq. 3), ambiguity their
        # variance (Eq. 4), c (1 - c) for 0/1 outputs (samples are stored as float16: allow a rare flip at 0.5)
        votes = (npz["samples"].astype(np.float32) >= 0.5).mean(0)
        assert np.mean(np.abs(npz["coherence"] - votes) > 1e-6) < 0.01
        assert np.allclose(npz["ambiguity"], npz["coherence"] * (1 - npz["coherence"]), atol=1e-6)
        assert set(np.round(np.unique(npz["coherence"]) * 10, 4)) <= set(range(11))
    meta = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert meta["network_calls"] == {"passes": 1, "evaluations": 20} and meta["fusion"] == "crf_rounds"
    assert meta["maps"] == "masks"
    with pytest.raises(LesiondiffError, match="sample.maps must be one of probabilities, masks"):
        Predictor.from_run(run, device="cpu", overrides=["sample.maps=votes"])
    # the tables say that output k is the k-th timestep, not an independent draw
    assert meta["samples_are"] == ("one class-difference mask per timestep, t = 60, 70, ..., 150 in order, each "
                                   "from one shared noise image")


def test_full_resolution_isic_image_is_segmented_at_network_size_and_written_back_full_size(
        train_tiny_run, shared_data, tmp_path):
    """The largest ISIC 2017 image (4288 x 2848) goes through the network at 32 px and comes back at full size:
    the mask PNG has the original size and the stored outputs stay at network size (no full-size arrays kept)."""
    from PIL import Image

    from lesiondiff.engine.evaluate import evaluate
    from lesiondiff.engine.predict import Predictor

    image = shared_data / "ISIC2017/ISIC-2017_Validation_Data/ISIC_0014217.jpg"
    truth = shared_data / "ISIC2017/ISIC-2017_Validation_Part1_GroundTruth/ISIC_0014217_segmentation.png"
    if not image.is_file():
        pytest.skip(f"{image} not found")
    run = train_tiny_run("diffseg-weak", tmp_path / "run", 1, "data.val_max_images=0", "data.channels=3",
                         "train.batch_size=2")
    row = Predictor.from_run(run, device="cpu").run([("ISIC_0014217", str(image))], tmp_path / "pred")[0]
    assert Image.open(tmp_path / "pred" / row["mask"]).size == (4288, 2848)
    assert max(Image.open(tmp_path / "pred" / row["overlay"]).size) == 1024  # the overlay is capped, not full size
    with np.load(tmp_path / "pred" / row["probs"]) as npz:
        assert npz["samples"].shape == (10, 32, 32) and npz["original_size"].tolist() == [2848, 4288]
    manifest = tmp_path / "one.csv"
    manifest.write_text("id,image,masks,label,case,dataset,split,fold\n"
                        f"ISIC_0014217,{image},{truth},,ISIC_0014217,isic,test,-1\n")
    summary = evaluate(tmp_path / "pred", manifest, split="test")
    assert summary["n_images"] == 1
    dice = summary["fused"]["all"]["dice"]["mean"]
    assert 0.0 <= dice <= 1.0 and math.isfinite(summary["uncertainty"]["ged"]["mean"])
