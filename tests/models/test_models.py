import pytest
import torch
from torch import nn

from lesiondiff.build import build_model, build_sampler
from lesiondiff.config import Config
from lesiondiff.errors import LesiondiffError
from lesiondiff.models import MODELS
from lesiondiff.models.base import Denoiser

FOUR_LEVELS = {"pgdiffseg"}  # designs with a fixed number of down/up units (four)
X0_ONLY = {"refiner"}  # designs whose head predicts x0 only


def small(name: str, **over) -> Config:
    levels = (["model.channel_mult=[1,2,2,2]", "model.attention_levels=[false,false,false,true]"]
              if name in FOUR_LEVELS else ["model.channel_mult=[1,2]", "model.attention_levels=[false,true]"])
    cfg = Config().override([f"model.name={name}", "model.base_channels=8", *levels,
                             *(["diffusion.prediction=x0", "model.options.refine_mult=[1,2]"] if name in X0_ONLY
                               else [])])
    return cfg.override([f"{k}={v}" for k, v in over.items()])


MASK_DENOISERS = [n for n in MODELS.names() if not MODELS.get(n).class_conditional]  # not diffseg


@pytest.mark.parametrize("name", MASK_DENOISERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(name, channels):
    cfg = small(name, **({"diffusion.mode": "feedforward"} if name == "unet" else {}))
    model = build_model(cfg, channels)
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([0, 999]), torch.randn(2, channels, 16, 16))
    head = out.eps if model.prediction == "epsilon" else out.x0
    assert head.shape == (2, 1, 16, 16) and torch.isfinite(head).all()


def test_ensemdiff_split_convolution_equals_concatenation():
    model = build_model(small("ensemdiff"), 3)
    concat = nn.Conv2d(4, 8, 3, padding=1)
    with torch.no_grad():
        concat.weight.copy_(torch.cat([model.mask_in.weight, model.image_in.weight], 1))
        concat.bias.copy_(model.mask_in.bias)
    x, img = torch.randn(2, 1, 16, 16), torch.randn(2, 3, 16, 16)
    assert torch.allclose(model.mask_in(x) + model.encode(img), concat(torch.cat([x, img], 1)), atol=1e-5)


def test_feedforward_mode_puts_the_head_in_x0():
    model = build_model(small("ensemdiff", **{"diffusion.mode": "feedforward"}), 1)
    out = model(torch.randn(1, 1, 16, 16), torch.tensor([999]), torch.randn(1, 1, 16, 16))
    assert out.eps is None and out.x0.shape == (1, 1, 16, 16)


def test_batched_samples_equal_single_runs():
    """Sample k of a batch of S starts from the k-th noise draw; the first equals a one-sample run."""
    cfg = small("ensemdiff")
    model = build_model(cfg, 1).eval()
    img = torch.randn(1, 1, 16, 16)
    sampler = build_sampler(cfg, "ddim")
    batched = sampler(model, img, 4, 5, torch.Generator().manual_seed(3))
    single = sampler(model, img, 1, 5, torch.Generator().manual_seed(3))
    assert batched.shape == (1, 4, 1, 16, 16)
    assert torch.allclose(batched[:, :1], single, atol=1e-4)
    assert not torch.allclose(batched[:, 0], batched[:, 1])


def test_repeat_condition_is_image_major():
    cond = {"a": torch.arange(2).view(2, 1), "b": (torch.arange(2).view(2, 1),)}
    rep = Denoiser.repeat_condition(cond, 3)
    assert rep["a"].flatten().tolist() == [0, 0, 0, 1, 1, 1] and rep["b"][0].shape == (6, 1)


def test_bad_model_options_are_one_line_errors():
    with pytest.raises(LesiondiffError, match="model 'unet'"):
        build_model(small("unet"), 1)  # the U-Net is feed-forward only
    with pytest.raises(LesiondiffError, match="unknown model"):
        build_model(small("nope"), 1)


def test_chunked_sampling_equals_one_batch():
    """Chunking the S samples (to fit caches at large sizes) draws the same noise and gives the same masks."""
    cfg = small("ensemdiff")
    model = build_model(cfg, 1).eval()
    img = torch.randn(2, 1, 16, 16)
    whole = build_sampler(cfg, "ddim", max_batch=6)(model, img, 3, 4, torch.Generator().manual_seed(1))
    parts = build_sampler(cfg, "ddim", max_batch=2)(model, img, 3, 4, torch.Generator().manual_seed(1))
    assert torch.allclose(whole, parts, atol=1e-4)


DESIGNS = ["ensemdiff", "segdiff", "medsegdiff", "unet"]


def preset_model(name: str, channels: int, mode: str = "diffusion"):
    from lesiondiff.presets import load_preset

    cfg = load_preset(name)
    if name != "unet":
        cfg = cfg.override([f"diffusion.mode={mode}"])
    return build_model(cfg, channels)


@pytest.mark.parametrize("name", DESIGNS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [64, 96])
def test_preset_architectures_keep_the_mask_shape(name, channels, size):
    model = preset_model(name, channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size), torch.tensor([3, 900]), torch.randn(2, channels, size, size))
    head = out.eps if model.prediction == "epsilon" else out.x0
    assert head.shape == (2, 1, size, size) and torch.isfinite(head).all()


@pytest.mark.parametrize("name", DESIGNS)
@pytest.mark.parametrize("mode", ["diffusion", "feedforward"])
def test_gradient_reaches_every_parameter(name, mode):
    """With the zero initialisations (ResBlock outputs, attention projections) replaced by random weights, one
    backward pass gives every parameter a non-zero gradient: no branch of the design is dead."""
    if name == "unet" and mode == "diffusion":
        pytest.skip("the U-Net is feed-forward only")
    torch.manual_seed(0)
    model = preset_model(name, 3, mode)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = model(torch.randn(2, 1, 64, 64), torch.tensor([10, 700]), torch.randn(2, 3, 64, 64))
    head = out.eps if model.prediction == "epsilon" else out.x0
    head.square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead[:5]}"
    groups = {n.split(".")[0] for n, _ in model.named_parameters()}
    expected = {"ensemdiff": {"time", "mask_in", "image_in", "body"},
                "segdiff": {"time", "mask_in", "body", "image_encoder"},
                "medsegdiff": {"time", "mask_in", "body", "condition_encoder", "dce"},
                "unet": {"image_in", "body"}}[name]
    assert groups == expected


@pytest.mark.parametrize("name", ["segdiff", "medsegdiff"])
def test_encoder_designs_reuse_one_encoding_for_all_samples(name):
    """denoise(x, t, repeat(encode(image))) equals running the whole network on the repeated image."""
    model = preset_model(name, 1).eval()
    img, x = torch.randn(2, 1, 64, 64), torch.randn(6, 1, 64, 64)
    t = torch.full((6,), 400)
    with torch.no_grad():
        once = model.denoise(x, t, model.repeat_condition(model.encode(img), 3)).eps
        full = model(x, t, img.repeat_interleave(3, 0)).eps
    assert torch.allclose(once, full, atol=1e-5)


def test_repeated_condition_keeps_channels_last():
    feat = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert Denoiser.repeat_condition(feat, 3).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("size", [32, 48])
def test_ff_parser_identity_filter_returns_its_input(size):
    from lesiondiff.models.blocks import FFParser

    ffp = FFParser(4, size=32)  # at 48 px the identity map is resampled and must stay the identity
    x = torch.randn(2, 4, size, size)
    assert torch.allclose(ffp(x), x, atol=1e-5)


def test_ff_parser_dc_only_filter_gives_the_channel_mean():
    """Keep only the zero frequency (stored at the centred row ``size // 2``, column 0): the output is each
    channel's spatial mean everywhere."""
    from lesiondiff.models.blocks import FFParser

    ffp = FFParser(3, size=16)
    with torch.no_grad():
        ffp.real.zero_()
        ffp.real[:, 8, 0] = 1.0
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(ffp(x), x.mean((-2, -1), keepdim=True).expand_as(x), atol=1e-5)


def test_medsegdiff_rejects_levels_outside_the_body():
    from lesiondiff.presets import load_preset

    with pytest.raises(LesiondiffError, match="dce_levels"):
        build_model(load_preset("medsegdiff").override(["model.options.dce_levels=[7]"]), 1)
