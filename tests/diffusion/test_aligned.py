"""Training the sampler you run: the aligned timestep sampler draws only the sampler's K timesteps, recycling's
input comes from the model under no_grad and carries no gradient, input scaling scales the forward process and
the samplers undo it, and the U-Net + diffusion average reproduces either side at weight 1 and 0."""

import json

import numpy as np
import pytest
import torch

from lesiondiff.build import build_objective, build_sampler, build_timestep_sampler, visited_timesteps
from lesiondiff.cli import main
from lesiondiff.config import Config
from lesiondiff.errors import LesiondiffError
from lesiondiff.models.base import Denoiser, DenoiserOutput


def cfg(*overrides: str) -> Config:
    return Config().override(["diffusion.prediction=x0", "diffusion.objective=x0_dice_bce", "sample.sampler=ddim",
                              "sample.steps=3", "diffusion.timestep_sampling=aligned", *overrides])


def test_the_aligned_sampler_draws_only_the_samplers_timesteps():
    c = cfg()
    visited = visited_timesteps(c)
    assert visited == [999, 666, 332]  # trailing DDIM spacing over T = 1000
    sampler = build_timestep_sampler(c.diffusion, None, visited)
    t = sampler(4000, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(visited)
    counts = np.bincount(t.numpy(), minlength=1000)[visited]
    assert np.all(np.abs(counts / 4000 - 1 / 3) < 0.03)
    assert sampler.probs.sum().item() == pytest.approx(1.0) and (sampler.probs > 0).sum() == 3
    refine = cfg("sample.sampler=refine", "model.name=refiner")
    assert visited_timesteps(refine) == build_sampler(refine).timesteps(3)
    with pytest.raises(LesiondiffError, match="at most 5"):
        build_timestep_sampler(c.diffusion, None, visited_timesteps(cfg("sample.steps=10")))


class Recorder(Denoiser):
    """An x0 network that records whether gradients were on and what x_t it saw."""

    prediction = "x0"

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.calls = []

    def encode(self, image):
        return image

    def denoise(self, x_t, t, condition):
        self.calls.append((torch.is_grad_enabled(), x_t.detach().clone(), t.clone(), x_t.requires_grad))
        return DenoiserOutput(x0=self.w * condition[:, :1] + 0 * x_t)


def test_recycling_starts_from_the_models_own_detached_estimate():
    c = cfg("diffusion.objective_options={recycle: 1.0}")
    objective = build_objective(c.diffusion, visited_timesteps(c))
    model = Recorder()
    batch = {"image": torch.randn(3, 1, 8, 8), "mask": torch.ones(3, 1, 8, 8)}
    t = torch.tensor([999, 666, 332])
    noise = torch.randn(3, 1, 8, 8)
    torch.manual_seed(0)
    loss = objective(model, batch, t, noise)
    (recycle_grad, earlier, t_prev, _), (main_grad, x_t, t_main, x_t_grad) = model.calls
    assert recycle_grad is False and main_grad is True  # the estimate under no_grad, the loss with gradients
    assert t_prev.tolist() == [999, 666]  # images at 666 and 332 recycle from the step before theirs
    assert t_main.tolist() == [999, 666, 332] and not x_t_grad
    estimate = torch.tanh(2.0 * batch["image"][1:, :1] / 2)  # the Recorder's x0 estimate, in diffusion space
    abar = objective.scheduler.alphas_cumprod[t[1:]].view(-1, 1, 1, 1)
    assert torch.allclose(x_t[1:], abar.sqrt() * estimate + (1 - abar).sqrt() * noise[1:], atol=1e-6)
    abar0 = objective.scheduler.alphas_cumprod[999]
    assert torch.allclose(x_t[0], abar0.sqrt() * batch["mask"][0] + (1 - abar0).sqrt() * noise[0], atol=1e-6)
    loss.total.backward()
    assert model.w.grad is not None  # the loss trains the network through the main pass only
    with pytest.raises(LesiondiffError, match="needs the sampler's timesteps"):
        build_objective(c.diffusion, None)


def test_input_scaling_scales_the_forward_process_and_is_undone_by_the_sampler():
    c = cfg("diffusion.input_scale=0.5")
    objective = build_objective(c.diffusion, visited_timesteps(c))
    mask, noise = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    abar = objective.scheduler.alphas_cumprod[500]
    assert torch.allclose(objective.noisy(mask, noise, torch.tensor([500])), 0.5 * abar.sqrt() * mask)

    class Certain(Recorder):
        def denoise(self, x_t, t, condition):
            return DenoiserOutput(x0=torch.full_like(x_t, 30.0))  # x0 = +1 for sure

    for name in ("ddim", "dpmsolver++", "unipc", "refine"):
        sampler = build_sampler(c.override([f"sample.sampler={name}"]))
        probs = sampler(Certain(), torch.zeros(1, 1, 8, 8), 2, 3, torch.Generator().manual_seed(0))
        assert torch.allclose(probs, torch.ones_like(probs), atol=1e-3), name  # mapped back to probability 1
    with pytest.raises(LesiondiffError, match="does not work with diffusion.input_scale"):
        build_sampler(c.override(["sample.sampler=staged"]))


@pytest.fixture(scope="module")
def pair(train_tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("average")
    unet = train_tiny_run("unet", root / "unet", 3)
    diffusion = train_tiny_run("ensemdiff", root / "diff", 3, "diffusion.objective=x0_dice_bce",
                               "diffusion.prediction=x0", "diffusion.timestep_sampling=aligned", "sample.steps=3",
                               "sample.samples=2")
    return unet, diffusion


def fused(folder):
    preds = {}
    for f in sorted(folder.glob("*_probs.npz")):
        with np.load(f) as z:
            preds[f.name] = z["fused"]
    return preds


def test_the_average_reproduces_either_side_at_weight_1_and_0(pair, phantom_manifest, tmp_path, capsys):
    unet, diffusion = pair
    base = ["--manifest", str(phantom_manifest), "--split", "test"]
    for name, run in (("unet", unet), ("diff", diffusion)):
        assert main(["predict", "--run", str(run), *base, "--out", str(tmp_path / name)]) == 0
    for weight, side in ((1.0, "unet"), (0.0, "diff")):
        folder = tmp_path / f"avg{weight:g}"
        assert main(["average", "--out", str(folder), "--feedforward", str(unet), "--diffusion", str(diffusion),
                     "--weight", str(weight)]) == 0
        assert main(["predict", "--run", str(folder), *base, "--out", str(tmp_path / f"p{weight:g}")]) == 0
        got, want = fused(tmp_path / f"p{weight:g}"), fused(tmp_path / side)
        assert got.keys() == want.keys() and all(np.allclose(got[k], want[k], atol=1e-6) for k in got)
        meta = json.loads((tmp_path / f"p{weight:g}" / "predict.json").read_text())
        with (tmp_path / f"p{weight:g}" / "predictions.csv").open() as f, (tmp_path / "diff" / "predictions.csv").open() as g:
            assert [r.split(",")[6:] for r in f.read().splitlines()[1:]] == [r.split(",")[6:] for r in
                                                                            g.read().splitlines()[1:]]  # scores: the draws'
        assert meta["samples"] == 2
    assert main(["average", "--out", str(tmp_path / "chosen"), "--feedforward", str(unet), "--diffusion",
                 str(diffusion), "--manifest", str(phantom_manifest), "--split", "train"]) == 0
    record = json.loads((tmp_path / "chosen" / "average.json").read_text())
    scores = record["chosen"]["scores"]
    assert [s["weight"] for s in scores] == [round(0.1 * k, 1) for k in range(11)]
    assert record["weight"] == max(scores, key=lambda s: (round(s["dice"], 12), s["weight"]))["weight"]
    assert "aligned_timesteps" in json.loads((diffusion / "summary.json").read_text())
    capsys.readouterr()
    assert main(["predict", "--run", str(diffusion), *base, "--steps", "5", "--out", str(tmp_path / "p5")]) == 0
    assert "trained only on the timesteps [999, 666, 332]" in capsys.readouterr().out


def test_the_medsegdiff_aligned_preset_is_the_measured_configuration():
    """The preset holds what benchmarks/levers_vs_unet.py trained as aligned-recycle-scale over medsegdiff, with the
    number of samples chosen afterwards on validation (4 against 8: docs/results/diffusion_vs_unet.md, 6.7)."""
    import sys
    from pathlib import Path

    from lesiondiff.presets import load_preset

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from levers_vs_unet import LEVERS

    preset, overrides = LEVERS["aligned-recycle-scale"]
    assert "sample.samples=8" in overrides
    measured = load_preset(preset).override([*overrides, "sample.samples=4"])
    preset = load_preset("medsegdiff-aligned")
    assert preset.sample.samples == 4
    for section in ("model", "diffusion", "train", "sample", "fusion", "data"):
        assert getattr(preset, section) == getattr(measured, section), section
