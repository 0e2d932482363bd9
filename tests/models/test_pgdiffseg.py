"""PGDiffSeg: Slim Dense Block, Parameter-Shared cross-Attention, prior branch, and the whole network."""

import pytest
import torch

from lesiondiff.build import build_model, build_sampler
from lesiondiff.config import Config
from lesiondiff.errors import LesiondiffError
from lesiondiff.models.blocks import pool_to
from lesiondiff.models.pgdiffseg import ParameterSharedAttention, PriorBranch, SlimDenseBlock
from lesiondiff.presets import load_preset


def small(**options) -> Config:
    over = [f"model.options.{k}={v}" for k, v in options.items()]
    return Config().override(["model.name=pgdiffseg", "model.base_channels=8", "model.channel_mult=[1,2,2,2]",
                              "model.attention_levels=[false,false,false,false]", "diffusion.prediction=x0",
                              *over])


def inputs(b=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 1, size, size, generator=g), torch.tensor([0, 500, 999][:b]),
            torch.randn(b, 1, size, size, generator=g))


def test_slim_dense_block_adds_instead_of_concatenating():
    torch.manual_seed(0)
    block = SlimDenseBlock(3, 8, layers=3).eval()
    x = torch.randn(2, 3, 16, 16)
    y = block(x)
    assert y.shape == (2, 8, 16, 16)  # every layer keeps C channels: no growth rate
    # Eq. 1 by hand: each layer gets the sum of all earlier outputs and contributes 0.2 x its transform
    total = block.stem(x)
    outputs = [total]
    for layer in block.layers:
        outputs.append(0.2 * layer(sum(outputs)))
    assert torch.allclose(y, sum(outputs), atol=1e-6)
    # two conv + BatchNorm + LeakyReLU blocks per layer
    kinds = [type(m).__name__ for m in block.layers[0].modules()]
    assert kinds.count("Conv2d") == 2 and kinds.count("BatchNorm2d") == 2 and kinds.count("LeakyReLU") == 2


def test_psa_is_the_identity_at_initialisation_and_shares_query_and_key():
    torch.manual_seed(0)
    psa = ParameterSharedAttention(16, reduction=8, kv_size=4)
    c, d = torch.randn(2, 16, 12, 12), torch.randn(2, 16, 12, 12)
    c2, d2 = psa(c, d)
    assert torch.equal(c2, c) and torch.equal(d2, d)  # gamma = 0
    assert psa.gamma_c.item() == 0 and psa.gamma_d.item() == 0
    # one query and one key projection for both flows (reduced to C/8, at least 4), a value projection each
    assert psa.query.out_channels == 4 and psa.key.out_channels == 4
    assert psa.value_c is not psa.value_d and psa.value_c.out_channels == 16
    names = {n for n, _ in psa.named_parameters()}
    assert not any("query_" in n or "key_" in n for n in names)


def test_psa_exchanges_information_once_gamma_is_set():
    torch.manual_seed(0)
    psa = ParameterSharedAttention(16, reduction=8, kv_size=4)
    with torch.no_grad():
        psa.gamma_c.fill_(1.0)
        psa.gamma_d.fill_(1.0)
    c, d = torch.randn(1, 16, 12, 12), torch.randn(1, 16, 12, 12)
    c2, d2 = psa(c, d)
    assert c2.shape == c.shape and d2.shape == d.shape
    # with cross values the condition output changes when only the denoising features change
    c3, _ = psa(c, d + 1.0)
    assert not torch.allclose(c2, c3)
    # keys and values are pooled to at most kv_size x kv_size: the attended values are piecewise constant
    # over the 3 x 3 pooling cells only through the softmax, so check the pooling itself
    assert pool_to(torch.randn(1, 16, 12, 12), psa.kv_size).shape[-2:] == (4, 4)
    assert pool_to(torch.randn(1, 16, 3, 3), psa.kv_size).shape[-2:] == (3, 3)


def test_prior_branch_reaches_the_bottleneck_size():
    branch = PriorBranch(1, [8, 16, 32, 32])
    feats, logit, mask = branch(torch.randn(2, 1, 64, 64))
    assert feats.shape == (2, 32, 4, 4)  # four stride-2 units: H/16, the bottleneck's width
    assert logit.shape == (2, 1)
    assert mask.shape == (2, 1, 8, 8)  # the penultimate unit, mapped to one channel
    # each unit: two 3x3 conv + BN + ReLU blocks, the first with stride 2
    convs = [m for m in branch.units[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1)] and all(c.kernel_size == (3, 3) for c in convs)


def test_network_outputs_and_prior_in_aux():
    model = build_model(small(), 1).eval()
    x, t, img = inputs()
    out = model(x, t, img)
    assert out.eps.shape == out.x0.shape == (3, 1, 32, 32)
    assert out.aux["prior_logit"].shape == (3, 1) and out.aux["prior_mask"].shape == (3, 1, 4, 4)
    assert model.predicts_both
    # the condition (SDB image features, prior) is computed once per image and reused across steps
    cond = model.encode(img)
    assert set(cond) == {"image", "prior", "prior_logit", "prior_mask"}
    assert torch.allclose(model.denoise(x, t, cond).x0, out.x0, atol=1e-6)


def test_prior_branch_changes_the_bottleneck_and_can_be_removed():
    model = build_model(small(), 1).eval()
    x, t, img = inputs()
    base = model(x, t, img).x0
    with torch.no_grad():
        model.prior.units[-1][-1][0].weight.mul_(3.0)  # change the prior's output features
    assert not torch.allclose(model(x, t, img).x0, base)
    no_prior = build_model(small(prior=False), 1).eval()
    assert no_prior.prior is None and not no_prior(x, t, img).aux
    no_psa = build_model(small(psa=False), 1).eval()
    assert no_psa.psa is None and no_psa(x, t, img).x0.shape == (3, 1, 32, 32)


def test_sizes_and_layouts_are_checked():
    model = build_model(small(), 1).eval()
    with pytest.raises(ValueError, match="divisible by 16"):
        model.encode(torch.randn(1, 1, 24, 24))
    with pytest.raises(LesiondiffError, match="channel_mult"):
        build_model(Config().override(["model.name=pgdiffseg", "model.channel_mult=[1,2]",
                                       "model.attention_levels=[false,false]"]), 1)


def test_cam_layers_name_real_modules():
    model = build_model(small(), 1)
    names = dict(model.named_modules())
    layers = model.cam_layers
    for name in layers["condition"] + layers["denoising"] + [n for pair in layers["psa"] for n in pair]:
        assert name in names
    assert layers["prior"] in names and layers["prior_target"] == "prior_logit"


def test_preset_and_sampler_round_trip():
    cfg = load_preset("pgdiffseg")
    assert cfg.data.intensity_window == [30, 235] and cfg.data.augment == ["sixfold"]
    assert cfg.diffusion.objective == "eps_prior"
    cfg = cfg.override(["model.base_channels=8", "model.channel_mult=[1,2,2,2]"])
    model = build_model(cfg, 1).eval()
    probs = build_sampler(cfg, "ddim")(model, torch.randn(2, 1, 32, 32), num_samples=3, steps=2,
                                                 generator=torch.Generator().manual_seed(0))
    assert probs.shape == (2, 3, 1, 32, 32) and 0 <= probs.min() and probs.max() <= 1
