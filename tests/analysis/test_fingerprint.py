"""Timestep fingerprints and fingerprint timestep sampling: known values and invariants on phantoms."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr

from lesiondiff.analysis.fingerprint import load_masks, model_curves
from lesiondiff.build import build_model, build_timestep_sampler
from lesiondiff.cli import main
from lesiondiff.config import DiffusionConfig
from lesiondiff.data.dataset import SplitData, load_rows
from lesiondiff.data.layouts import index_folder
from lesiondiff.data.manifest import Manifest
from lesiondiff.data.splits import assign_splits
from lesiondiff.data.transforms import gaussian_blur
from lesiondiff.diffusion.recoverability import (
    recoverability_curve,
    recoverability_dice,
    recoverability_slope,
    training_slope,
)
from lesiondiff.diffusion.schedules import alphas_cumprod
from lesiondiff.engine.predict import load_run
from lesiondiff.engine.train import Trainer
from lesiondiff.errors import LesiondiffError
from lesiondiff.methods.analysing import fingerprint_probabilities
from lesiondiff.presets import load_preset
from tiny_settings import TINY_MODEL

TINY = [*TINY_MODEL,
        "data.size=32", "train.batch_size=8", "train.lr=1e-3", "train.val_every=30", "train.log_every=30",
        "train.val_steps=2", "data.val_max_images=4"]
ABAR = alphas_cumprod(DiffusionConfig())
T = len(ABAR)


@pytest.fixture(scope="module")
def manifest(phantom_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "manifest.csv"
    Manifest.from_records(assign_splits(index_folder(phantom_dir).records, seed=0)).write(path)
    return path


@pytest.fixture(scope="module")
def lesion_masks(manifest):
    masks = load_masks(Manifest.read(manifest).rows(), 64)
    return masks[masks.flatten(1).any(1)]


@pytest.fixture(scope="module")
def run_dir(manifest, tmp_path_factory):
    """A tiny eps-prediction EnsemDiff trained 30 steps on phantoms with fingerprint timestep sampling."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = load_preset("ensemdiff").override([f"data.manifest={manifest}", "train.steps=30", *TINY,
                                             "diffusion.timestep_sampling=fingerprint"])
    Trainer(cfg, out, device="cpu").fit()
    return out


def discs(n=6, size=32, empty=1):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = [(xx - 8 - 2 * i) ** 2 + (yy - 16) ** 2 < (4 + i) ** 2 for i in range(n)]
    return torch.stack(masks + [torch.zeros(size, size, dtype=torch.bool)] * empty)


# ---- data-set fingerprint ------------------------------------------------------------------------------------
def test_recoverability_is_one_at_t0_falls_monotonically_to_chance(lesion_masks):
    ts = np.arange(0, T, 10)
    assert np.all(recoverability_dice(lesion_masks, ABAR, [0], sigma=0.0)[:, 0] == 1.0)
    dice = recoverability_dice(lesion_masks, ABAR, ts, sigma=2.0, seed=0)
    curve = dice.mean(0)
    assert np.allclose(curve, recoverability_curve(lesion_masks, ABAR, ts, sigma=2.0, seed=0))
    # with smoothing, t = 0 scores what blurring the clean mask keeps (small phantom lesions at 64 px: ~0.97)
    blurred = gaussian_blur(lesion_masks.float() * 2 - 1, 2.0) > 0
    kept = (2 * (blurred & lesion_masks).flatten(1).sum(1) / (blurred.flatten(1).sum(1) + lesion_masks.flatten(1).sum(1)))
    assert np.allclose(dice[:, 0], kept.double().numpy(), atol=0.01) and curve[0] > 0.95
    assert spearmanr(ts, curve).statistic < -0.9
    # at t = T-1 the sign of x_t is the sign of the smoothed noise: Dice of a random half of the image,
    # G / (HW/2 + G) per mask, far below 0.5
    g = lesion_masks.flatten(1).sum(1).double().numpy()
    chance = g / (lesion_masks[0].numel() / 2 + g)
    assert curve[-1] < 0.5 and abs(curve[-1] - chance.mean()) < 0.05


def test_flip_point_counting_equals_thresholding_blurred_x_t():
    masks = discs()
    ts = [0, 200, 450, 600, 800, 999]
    fast = recoverability_dice(masks, ABAR, ts, sigma=1.5, seed=3)
    gen = torch.Generator().manual_seed(3)
    eps = torch.stack([torch.randn(32, 32, generator=gen) for _ in masks])
    x0 = masks.double() * 2 - 1
    for k, t in enumerate(ts):
        x_t = ABAR[t].double().sqrt() * x0 + (1 - ABAR[t].double()).sqrt() * eps.double()
        pred = gaussian_blur(x_t, 1.5) > 0
        inter, total = (pred & masks).flatten(1).sum(1), pred.flatten(1).sum(1) + masks.flatten(1).sum(1)
        direct = torch.where(total == 0, 1.0, 2 * inter / total.clamp_min(1).double()).numpy()
        assert np.abs(direct - fast[:, k]).max() <= 0.01, t


def test_empty_masks_and_per_image_noise():
    masks = discs(n=3, empty=2)
    dice = recoverability_dice(masks, ABAR, [0, T - 1], sigma=2.0, seed=0)
    assert np.all(dice[3:, 0] == 1.0)  # empty vs empty
    assert np.all(dice[3:, 1] == 0.0)  # pure noise predicts lesion somewhere
    assert np.array_equal(recoverability_dice(masks[:2], ABAR, [0, 500, 900]),
                          recoverability_dice(masks, ABAR, [0, 500, 900])[:2])  # noise of image i fixed
    assert recoverability_curve(masks[3:], ABAR, [0])[0] == 1.0
    with pytest.raises(LesiondiffError, match="timesteps must lie in"):
        recoverability_dice(masks, ABAR, [T])
    with pytest.raises(LesiondiffError, match="does not fit 32x32 masks"):
        recoverability_dice(masks, ABAR, [0], sigma=20)


def test_slope_is_the_smoothed_negative_derivative():
    ts = np.arange(0, T, 10)
    assert np.allclose(recoverability_slope(1 - ts / 2000, ts, window=50), 1 / 2000)
    step = 1 / (1 + np.exp((ts - 600) / 20))
    slope = recoverability_slope(step, ts, window=50)
    assert abs(ts[np.argmax(slope)] - 600) <= 10 and slope.min() > -1e-12
    assert np.isclose(slope.sum() * 10, 1, atol=0.02)  # integrates to the total drop


# ---- timestep samplers ---------------------------------------------------------------------------------------
def test_uniform_sampler_is_the_old_randint_draw():
    sampler = build_timestep_sampler(DiffusionConfig())
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for b in (1, 8, 13):
        assert torch.equal(sampler(b, g1), torch.randint(0, T, (b,), generator=g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    assert torch.allclose(sampler.probs, torch.full((T,), 1 / T, dtype=torch.float64))


def test_fingerprint_probabilities_follow_the_slope_with_a_uniform_floor():
    t = np.arange(T)
    slope = np.exp(-0.5 * ((t - 500) / 60) ** 2) - 0.01  # slightly negative in the tails
    p = fingerprint_probabilities(slope, mix=0.1)
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    assert p.min() >= 0.1 / T - 1e-15 and torch.isclose(p[0], torch.tensor(0.1 / T, dtype=torch.float64))
    assert int(p.argmax()) == 500 and p[500] > 10 * p[100]
    assert torch.allclose(fingerprint_probabilities(np.zeros(T)), torch.full((T,), 1 / T, dtype=torch.float64))
    assert torch.allclose(fingerprint_probabilities(slope, mix=1.0), torch.full((T,), 1 / T, dtype=torch.float64))
    with pytest.raises(LesiondiffError, match="timestep_uniform_mix"):
        fingerprint_probabilities(slope, mix=1.5)

    cfg = DiffusionConfig(timestep_sampling="fingerprint")
    draws = build_timestep_sampler(cfg, slope)(20000, torch.Generator().manual_seed(0))
    assert draws.min() >= 0 and draws.max() < T
    assert abs(draws.double().mean() - float((p * torch.arange(T)).sum())) < 5
    assert ((draws > 380) & (draws < 620)).double().mean() > 0.8
    with pytest.raises(LesiondiffError, match="unknown timestep sampling 'nope'"):
        build_timestep_sampler(DiffusionConfig(timestep_sampling="nope"))
    with pytest.raises(LesiondiffError, match="feed-forward"):
        build_timestep_sampler(DiffusionConfig(mode="feedforward", timestep_sampling="fingerprint"), slope)


def test_trainer_writes_fingerprint_weights_and_recomputes_them_on_resume(run_dir, capsys):
    cfg, _ = load_run(run_dir, device="cpu")
    rows = list(csv.DictReader((run_dir / "timestep_weights.csv").open()))
    p = np.array([float(r["p"]) for r in rows])
    assert [int(r["t"]) for r in rows] == list(range(T))
    assert abs(p.sum() - 1) < 1e-6 and p.min() >= 0.1 / T * (1 - 1e-6)
    train = load_rows(Manifest.read(cfg.data.manifest).rows(split="train"), cfg.data, cfg.data.channels)
    expected = fingerprint_probabilities(training_slope(train.masks, cfg.diffusion, seed=cfg.train.seed), 0.1)
    assert np.allclose(p, expected.numpy(), rtol=1e-6)
    assert 300 < int(np.argmax(p)) < 800  # where phantom masks lose their shape under the linear schedule

    before = (run_dir / "timestep_weights.csv").read_text(encoding="utf-8")
    summary = Trainer(cfg, run_dir, device="cpu", resume=True).fit()  # already at its last step: no training
    assert summary["step"] == 30 and (run_dir / "timestep_weights.csv").read_text(encoding="utf-8") == before
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("ensemdiff (ensemdiff, diffusion): ") and line.endswith(
        "parameters, device cpu, timesteps fingerprint")


def test_fingerprint_sampling_resumes_exactly(manifest, tmp_path):
    """3 steps + resume to 6 with fingerprint timesteps gives the weights of 6 steps straight."""
    def cfg(steps):
        return load_preset("ensemdiff").override([f"data.manifest={manifest}", *TINY, "train.batch_size=4",
                                                  "train.val_every=3", "train.log_every=3", f"train.steps={steps}",
                                                  "diffusion.timestep_sampling=fingerprint"])

    Trainer(cfg(6), tmp_path / "straight", device="cpu").fit()
    Trainer(cfg(3), tmp_path / "split", device="cpu").fit()
    Trainer(cfg(6), tmp_path / "split", device="cpu", resume=True).fit()
    a = load_file(str(tmp_path / "straight/checkpoints/last.safetensors"))
    b = load_file(str(tmp_path / "split/checkpoints/last.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


# ---- model curves --------------------------------------------------------------------------------------------
def test_model_curves_of_a_trained_eps_model(run_dir, manifest):
    cfg, model = load_run(run_dir, device="cpu")
    data = load_rows(Manifest.read(manifest).rows(split="test"), cfg.data, cfg.data.channels)
    curves = model_curves(model, cfg, data, "tiny", every=50, seed=0, batch_size=8, grad_batches=1, progress=False)
    ts, v = curves.timesteps, curves.values
    assert list(ts) == list(range(0, T, 50)) and set(v) == {"mask_error_conditioned", "mask_error_unconditioned",
                                                           "loss_eps", "loss_x0", "grad_norm"}
    assert all(np.isfinite(c).all() for c in v.values()) and (v["grad_norm"] > 0).all()
    for name in ("mask_error_unconditioned", "mask_error_conditioned"):
        assert v[name][-10:].mean() > v[name][:10].mean() and spearmanr(ts, v[name]).statistic > 0.8
        assert v[name][0] < 0.01 and v[name].max() <= 4  # clipped to [-1,1]: squared error at most 4
    abar = ABAR[ts].double().numpy()
    # eps model: x0_hat - x0 = -sqrt((1 - abar) / abar) (eps_hat - eps), so the two losses differ by that factor
    assert np.allclose(v["loss_x0"], (1 - abar) / abar * v["loss_eps"], rtol=1e-3)
    assert curves.n_images == {**{k: len(data) for k in v}, "grad_norm": len(data)}


def test_feedforward_runs_have_no_timestep_curves():
    cfg = load_preset("unet").override(TINY)
    model = build_model(cfg, 1)
    data = SplitData(torch.zeros(2, 1, 32, 32), -torch.ones(2, 1, 32, 32), [{}, {}])
    with pytest.raises(LesiondiffError, match="feed-forward run has no timesteps"):
        model_curves(model, cfg, data, "unet")


# ---- command line --------------------------------------------------------------------------------------------
def test_cli_writes_curves_plots_and_settings(run_dir, manifest, tmp_path, capsys):
    out = tmp_path / "fp"
    code = main(["analyze", "fingerprint", "--run", str(run_dir), "--manifest", str(manifest), "--manifest",
                 str(manifest), "--name", "a", "--name", "b", "--every", "100", "--size", "32", "--grad-batches", "1",
                 "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "R<0.9 at t" in printed and "wrote fingerprint.csv" in printed
    rows = list(csv.DictReader((out / "fingerprint.csv").open()))
    assert set(rows[0]) == {"source", "curve", "t", "value", "n_images"}
    pairs = {(r["source"], r["curve"]) for r in rows}
    model = {"mask_error_conditioned", "mask_error_unconditioned", "loss_eps", "loss_x0", "grad_norm"}
    data = {"recoverability", "recoverability_slope"}
    assert pairs == {("tiny", c) for c in model} | {(s, c) for s in "ab" for c in data}
    assert sorted({int(r["t"]) for r in rows}) == list(range(0, T, 100))
    by = {s: [float(r["value"]) for r in rows if r["source"] == s and r["curve"] == "recoverability"] for s in "ab"}
    assert by["a"] == by["b"] and by["a"][0] > 0.9  # the same manifest and seed give the same fingerprint
    for name in ("mask_error.png", "loss_per_timestep.png", "grad_norm.png", "dataset_fingerprint.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    info = json.loads((out / "fingerprint.json").read_text(encoding="utf-8"))
    assert info["settings"]["every"] == 100 and info["runs"][0]["prediction"] == "epsilon"
    assert [d["source"] for d in info["datasets"]] == ["a", "b"] and not list(out.glob("*.tmp*"))


@pytest.mark.parametrize("argv,needle", [
    (["--run", "nope"], "no such run directory"),
    (["--manifest", "MANIFEST", "--split", "nope"], "unknown split 'nope'"),
    ([], "needs --manifest or --run"),
    (["--manifest", "MANIFEST", "--name", "a", "--name", "b"], "one name per manifest"),
])
def test_cli_errors_are_one_line(manifest, tmp_path, capsys, argv, needle):
    argv = [str(manifest) if a == "MANIFEST" else str(tmp_path / a) if a == "nope" and argv[0] == "--run" else a
            for a in argv]
    code = main(["analyze", "fingerprint", *argv, "--out", str(tmp_path / "fp")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_max_images_takes_rows_evenly_spaced_over_the_split(manifest):
    from lesiondiff.data.manifest import split_rows

    rows = Manifest.read(manifest).rows(split="train")
    _, picked = split_rows(manifest, "train", 4)
    ids = [r["id"] for r in picked]
    assert len(set(ids)) == 4 and ids[0] == rows[0]["id"] and ids[-1] == rows[-1]["id"]
    assert [r["id"] for r in split_rows(manifest, "train", 10**6)[1]] == [r["id"] for r in rows]


def test_runs_of_a_comparison_are_named_by_their_combination(tmp_path):
    from lesiondiff.analysis.fingerprint import _run_label

    assert _run_label(tmp_path / "segdiff-diffusion" / "train") == "segdiff-diffusion"
    assert _run_label(tmp_path / "my_run") == "my_run"
