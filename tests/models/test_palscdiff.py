"""PalScDiff: the two IBPA heads, their fusion, and the one-branch baseline."""

import pytest
import torch

from lesiondiff.build import build_model
from lesiondiff.config import Config
from lesiondiff.errors import LesiondiffError
from lesiondiff.models.palscdiff import IBPAHead, PalScDiff, mean_probability_logit


def small(**options) -> Config:
    over = [f"model.options.{k}={v}" for k, v in options.items()]
    return Config().override(["model.name=palscdiff", "model.base_channels=8", "model.channel_mult=[1,2]",
                              "model.attention_levels=[false,true]", *over])


def inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 1, 16, 16, generator=g), torch.tensor([0, 500, 999][:b]),
            torch.randn(b, 1, 16, 16, generator=g))


def test_heads_share_the_body_but_no_parameters():
    model = build_model(small(), 1).eval()
    a, b = model.heads
    ids_a, ids_b = {id(p) for p in a.parameters()}, {id(p) for p in b.parameters()}
    body = {id(p) for name, p in model.named_parameters() if not name.startswith("heads.")}
    assert ids_a and not ids_a & ids_b and not (ids_a | ids_b) & body
    # the grouped 1x1 conv, the batch norm, the activation and the output conv, as the paper describes
    assert a.mix.kernel_size == (1, 1) and a.mix.groups == 4 and isinstance(a.norm, torch.nn.BatchNorm2d)
    assert a.out.out_channels == 2  # eps and x0 logits
    # changing one head's parameters changes only its own branch
    x, t, img = inputs()
    before = model(x, t, img).aux
    with torch.no_grad():
        a.out.bias.add_(1.0)
    after = model(x, t, img).aux
    assert not torch.allclose(after["x0_branch0"], before["x0_branch0"])
    assert torch.equal(after["x0_branch1"], before["x0_branch1"])
    assert torch.equal(after["eps_branch1"], before["eps_branch1"])


def test_output_is_the_mean_of_the_branches_and_configurable():
    x, t, img = inputs()
    torch.manual_seed(0)
    model = build_model(small(), 1).eval()
    out = model(x, t, img)
    p = (torch.sigmoid(out.aux["x0_branch0"]) + torch.sigmoid(out.aux["x0_branch1"])) / 2
    assert torch.allclose(torch.sigmoid(out.x0), p, atol=1e-6)
    assert torch.allclose(out.eps, (out.aux["eps_branch0"] + out.aux["eps_branch1"]) / 2)
    for fusion, k in (("first", 0), ("second", 1)):
        torch.manual_seed(0)
        one = build_model(small(branch_fusion=fusion), 1).eval()
        o = one(x, t, img)
        assert torch.equal(o.x0, o.aux[f"x0_branch{k}"]) and torch.equal(o.eps, o.aux[f"eps_branch{k}"])
        assert torch.allclose(o.aux["x0_branch0"], out.aux["x0_branch0"])  # same weights, same branches


def test_mean_probability_logit_is_exact_and_finite():
    a, b = torch.tensor([0.0, 2.0, 80.0, -80.0]), torch.tensor([0.0, -1.0, 80.0, 80.0])
    got = mean_probability_logit(a, b)
    expect = torch.logit((torch.sigmoid(a.double()) + torch.sigmoid(b.double())) / 2)
    assert torch.isfinite(got).all()
    assert torch.allclose(got[:2].double(), expect[:2], atol=1e-6)
    assert got[2] == pytest.approx(80.0, abs=1e-3) and got[3] == pytest.approx(0.0, abs=1e-6)


def test_one_branch_baseline_is_medsegdiff_with_two_output_channels():
    model = build_model(small(branches=1), 1)
    assert len(model.heads) == 0 and model.body.out[-1].out_channels == 2
    out = model(*inputs())
    assert out.eps.shape == out.x0.shape == (3, 1, 16, 16) and out.aux == {}
    two = build_model(small(), 1)
    extra = sum(p.numel() for p in two.heads.parameters()) - sum(p.numel() for p in model.body.out.parameters())
    total = sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in model.parameters())
    assert total == extra  # the models differ in their output layers only


def test_both_heads_are_available_to_the_samplers():
    """One trained model can be sampled through eps or x0: diffusion.prediction picks what the sampler uses."""
    x, t, img = inputs()
    for prediction in ("epsilon", "x0"):
        torch.manual_seed(0)
        model = build_model(small().override([f"diffusion.prediction={prediction}"]), 1).eval()
        out = model(x, t, img)
        assert model.prediction == prediction and out.eps is not None and out.x0 is not None


def test_bad_options_are_one_line_errors():
    with pytest.raises(LesiondiffError, match="branches"):
        build_model(small(branches=3), 1)
    with pytest.raises(LesiondiffError, match="branch_fusion"):
        build_model(small(branch_fusion="max"), 1)
    with pytest.raises(LesiondiffError, match="head_norm"):
        build_model(small(head_norm="layer"), 1)


def test_group_norm_heads_do_not_depend_on_the_batch():
    model = build_model(small(head_norm="group"), 1).train()
    x, t, img = inputs()
    full = model(x, t, img).x0
    single = model(x[:1], t[:1], img[:1]).x0
    assert torch.allclose(full[:1], single, atol=1e-5)
    assert isinstance(IBPAHead(8, norm="group").norm, torch.nn.GroupNorm)
    assert isinstance(model, PalScDiff)
