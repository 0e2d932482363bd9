import pytest
import torch
from torch import nn

from lesiondiff.config import Config
from lesiondiff.diffusion.samplers import build_sampler
from lesiondiff.errors import LesiondiffError
from lesiondiff.models import MODELS, build_model
from lesiondiff.models.base import Denoiser


def small(name: str, **over) -> Config:
    cfg = Config().override([f"model.name={name}", "model.base_channels=8", "model.channel_mult=[1,2]",
                             "model.attention_levels=[false,true]"])
    return cfg.override([f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("name", MODELS.names())
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
    sampler = build_sampler("ddim", cfg.diffusion)
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
    whole = build_sampler("ddim", cfg.diffusion, max_batch=6)(model, img, 3, 4, torch.Generator().manual_seed(1))
    parts = build_sampler("ddim", cfg.diffusion, max_batch=2)(model, img, 3, 4, torch.Generator().manual_seed(1))
    assert torch.allclose(whole, parts, atol=1e-4)
