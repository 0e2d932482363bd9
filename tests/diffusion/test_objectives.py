"""PalScDiff's objective: noise MSE + BCE + the alignment loss between the IBPA branches."""

import pytest
import torch
import torch.nn.functional as F

from lesiondiff.build import build_model, build_objective
from lesiondiff.config import Config, DiffusionConfig
from lesiondiff.errors import LesiondiffError
from lesiondiff.methods.palscdiff import branch_alignment, distillation_bce, symmetric_bernoulli_kl
from lesiondiff.methods.pgdiffseg import prior_losses


def test_alignment_is_zero_for_identical_predictions_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 1, 8, 8, generator=g) * 3
    total, parts = branch_alignment(a, a.clone())
    assert total.item() == pytest.approx(0.0, abs=1e-6) and parts["align_kl"] == 0
    b = a + 0.5 * torch.randn(2, 1, 8, 8, generator=g)
    total, parts = branch_alignment(a, b)
    assert total > 0 and parts["align_kl"] > 0 and parts["align_bce"] > 0
    # symmetric in the two branches, and the weights scale their terms
    assert branch_alignment(b, a)[0].item() == pytest.approx(total.item(), rel=1e-6)
    only_kl, _ = branch_alignment(a, b, w_kl=2.0, w_bce=0.0)
    assert only_kl.item() == pytest.approx(2 * parts["align_kl"].item(), rel=1e-6)


def test_symmetric_kl_matches_the_definition():
    a, b = torch.tensor([0.3, -2.0, 4.0]), torch.tensor([1.0, 0.5, -1.0])
    p, q = torch.sigmoid(a.double()), torch.sigmoid(b.double())
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    kl_rev = q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
    assert torch.allclose(symmetric_bernoulli_kl(a, b).double(), kl + kl_rev, atol=1e-6)
    assert torch.isfinite(symmetric_bernoulli_kl(torch.tensor([200.0]), torch.tensor([-200.0]))).all()


def test_distillation_bce_has_the_gradient_of_bce_and_is_zero_at_agreement():
    a = torch.tensor([0.2, -1.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, -1.0, 0.0], requires_grad=True)
    loss = distillation_bce(a, b)
    assert loss[1].item() == pytest.approx(0.0, abs=1e-7) and (loss[[0, 2]] > 0).all()
    loss.sum().backward()
    a2 = a.detach().clone().requires_grad_(True)
    F.binary_cross_entropy_with_logits(a2, torch.sigmoid(b.detach()), reduction="sum").backward()
    assert torch.allclose(a.grad, a2.grad)
    assert b.grad is None  # the other branch's prediction is a detached target


def tiny_palscdiff(**options):
    over = [f"model.options.{k}={v}" for k, v in options.items()]
    return Config().override(["model.name=palscdiff", "model.base_channels=8", "model.channel_mult=[1,2]",
                              "model.attention_levels=[false,true]", "diffusion.objective=eps_bce_align", *over])


def batch():
    g = torch.Generator().manual_seed(1)
    mask = torch.where(torch.rand(2, 1, 16, 16, generator=g) > 0.5, 1.0, -1.0)
    return ({"image": torch.randn(2, 1, 16, 16, generator=g), "mask": mask}, torch.tensor([10, 900]),
            torch.randn(2, 1, 16, 16, generator=g))


def test_eps_bce_align_is_the_sum_of_its_parts():
    cfg = tiny_palscdiff()
    torch.manual_seed(0)
    model = build_model(cfg, 1).eval()
    objective = build_objective(cfg.diffusion)
    b, t, noise = batch()
    loss = objective(model, b, t, noise)
    p = loss.parts
    assert set(p) == {"mse", "bce", "align_kl", "align_bce"}
    assert loss.total.item() == pytest.approx(sum(v.item() for v in p.values()), rel=1e-5)
    out = model(objective.noisy(b["mask"], noise, t), t, b["image"])
    assert p["mse"].item() == pytest.approx(F.mse_loss(out.eps, noise).item(), rel=1e-5)
    assert p["bce"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(out.x0, (b["mask"] > 0).float()).item(), rel=1e-5)
    # weights from diffusion.objective_options
    heavy = build_objective(cfg.override(["diffusion.objective_options.bce=3", "diffusion.objective_options.align_kl=0",
                                          "diffusion.objective_options.align_bce=0"]).diffusion)
    loss3 = heavy(model, b, t, noise)
    assert loss3.total.item() == pytest.approx(p["mse"].item() + 3 * p["bce"].item(), rel=1e-5)


def test_one_branch_model_gets_no_alignment_term():
    cfg = tiny_palscdiff(branches=1)
    loss = build_objective(cfg.diffusion)(build_model(cfg, 1), *batch())
    assert set(loss.parts) == {"mse", "bce"}


def test_objective_options_are_checked():
    with pytest.raises(LesiondiffError, match="'gamma' is not an option of objective 'eps_bce_align'"):
        build_objective(DiffusionConfig(objective="eps_bce_align", objective_options={"gamma": 1}))
    with pytest.raises(LesiondiffError, match="not an option of objective 'eps_mse'"):
        build_objective(DiffusionConfig(objective="eps_mse", objective_options={"bce": 1}))
    # feed-forward mode ignores the named objective's options
    build_objective(DiffusionConfig(mode="feedforward", objective="eps_bce_align", objective_options={"bce": 2}))
    with pytest.raises(LesiondiffError, match="needs a design that predicts both"):
        cfg = Config().override(["model.base_channels=8", "model.channel_mult=[1,2]",
                                 "model.attention_levels=[false,true]", "diffusion.objective=eps_bce_align"])
        build_objective(cfg.diffusion)(build_model(cfg, 1), *batch())


def test_prior_losses_on_known_inputs():
    mask = -torch.ones(2, 1, 8, 8)
    mask[0, :, :4, :4] = 1.0  # image 0: a lesion filling the top-left coarse cell; image 1: normal (empty)
    logit = torch.tensor([[0.0], [0.0]])
    coarse = torch.full((2, 1, 2, 2), -1e4)
    coarse[0, 0, 0, 0] = 1e4  # a perfect coarse mask
    parts = prior_losses(logit, coarse, mask)
    assert parts["cls"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)  # p = 0.5
    assert parts["prior_bce"].item() == pytest.approx(0.0, abs=1e-6)
    # soft Dice with smoothing 1: image 0 perfect (0), image 1 empty vs empty (0)
    assert parts["prior_dice"].item() == pytest.approx(0.0, abs=1e-6)
    # the coarse target is the lesion fraction of each cell: half a cell covered gives 0.5
    half = -torch.ones(1, 1, 8, 8)
    half[0, :, :2, :4] = 1.0
    zero_logits = torch.zeros(1, 1, 2, 2)
    bce = prior_losses(torch.tensor([[10.0]]), zero_logits, half)["prior_bce"]
    assert bce.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)  # BCE(0.5, p) = log 2
    # a confident correct classification costs ~0, a confident wrong one a lot
    assert prior_losses(torch.tensor([[20.0], [-20.0]]), coarse, mask)["cls"].item() < 1e-6
    assert prior_losses(torch.tensor([[-20.0], [20.0]]), coarse, mask)["cls"].item() > 19


def tiny_pgdiffseg(*over):
    return Config().override(["model.name=pgdiffseg", "model.base_channels=8", "model.channel_mult=[1,2,2,2]",
                              "diffusion.objective=eps_prior", "diffusion.prediction=x0", *over])


def test_eps_prior_is_the_weighted_sum_of_its_parts():
    cfg = tiny_pgdiffseg()
    torch.manual_seed(0)
    model = build_model(cfg, 1).eval()
    g = torch.Generator().manual_seed(1)
    mask = torch.where(torch.rand(2, 1, 32, 32, generator=g) > 0.5, 1.0, -1.0)
    b = {"image": torch.randn(2, 1, 32, 32, generator=g), "mask": mask}
    t, noise = torch.tensor([10, 900]), torch.randn(2, 1, 32, 32, generator=g)
    loss = build_objective(cfg.diffusion)(model, b, t, noise)
    p = loss.parts
    assert set(p) == {"mse", "bce", "cls", "prior_dice", "prior_bce"}
    assert loss.total.item() == pytest.approx(sum(v.item() for v in p.values()), rel=1e-5)
    weighted = build_objective(tiny_pgdiffseg("diffusion.objective_options.cls=2",
                                              "diffusion.objective_options.bce=0").diffusion)
    loss2 = weighted(model, b, t, noise)
    assert "bce" not in loss2.parts
    assert loss2.total.item() == pytest.approx(
        p["mse"].item() + 2 * p["cls"].item() + p["prior_dice"].item() + p["prior_bce"].item(), rel=1e-5)
    no_prior = tiny_pgdiffseg("model.options.prior=false")
    assert set(build_objective(no_prior.diffusion)(build_model(no_prior, 1), b, t, noise).parts) == {"mse", "bce"}
