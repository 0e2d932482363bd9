"""Grad-CAM along one sampling trajectory: known values on a tiny model built for it, invariants on real
architectures, files and one-line errors of ``lesiondiff analyze gradcam``."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lesiondiff.analysis.gradcam.layers import CamViews, resolve_views
from lesiondiff.analysis.gradcam.run import write_outputs
from lesiondiff.analysis.gradcam.study import gradcam_analysis
from lesiondiff.build import build_model
from lesiondiff.cli import main
from lesiondiff.config import Config
from lesiondiff.data.io import read_image
from lesiondiff.data.manifest import Manifest
from lesiondiff.data.transforms import preprocess_image
from lesiondiff.engine.predict import Predictor, load_run
from lesiondiff.errors import LesiondiffError
from lesiondiff.models import MODELS, Denoiser, DenoiserOutput
from lesiondiff.presets import load_preset
from lesiondiff.render.gradcam_figures import plot_grid

SIZE = 32


class Halves(nn.Module):
    """Returns a tuple: a layer Grad-CAM cannot use."""

    def forward(self, h):
        return h[:, :2], h[:, 2:]


class TwoFlow(Denoiser):
    """A tiny x0 design with a condition flow, a denoising flow, an identity tap, a prior branch with a [B,1]
    logit and a ``cam_layers`` dict. The head and the classifier have positive weights, so every CAM layer below
    feeds its target through non-negative gradients: each Grad-CAM map is then non-zero by construction."""

    prediction = "x0"
    cam_layers = {"condition": ["cond.3"], "denoising": ["den.1"], "psa": [["den.1", "tap"]],
                  "prior": "prior.1", "prior_target": "prior_logit"}

    def __init__(self) -> None:
        super().__init__()
        self.cond = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                                  nn.ReLU())
        self.den = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU())
        self.halves = Halves()
        self.tap = nn.Identity()
        self.twice = nn.Conv2d(4, 4, 1)
        self.unused = nn.ModuleList([nn.Conv2d(1, 1, 1)])
        self.head = nn.Conv2d(8, 1, 1)
        self.prior = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Linear(4, 1)
        with torch.no_grad():
            self.head.weight.abs_()
            self.classifier.weight.abs_()
            self.twice.weight.zero_()
            self.twice.bias.zero_()

    def encode(self, image):
        c = F.interpolate(self.cond(image), scale_factor=2, mode="bilinear")
        return {"c": c, "logit": self.classifier(self.prior(image).mean(dim=(2, 3)))}

    def denoise(self, x_t, t, condition):
        time = (t.float() / 1000)[:, None, None, None].expand_as(x_t)
        d = self.tap(self.den(torch.cat([x_t, time], 1)))
        d = torch.cat(self.halves(d), 1)
        d = d + self.twice(self.twice(d))  # zero weights: the output is d, but `twice` runs twice
        return DenoiserOutput(x0=self.head(torch.cat([d, condition["c"]], 1)), aux={"prior_logit": condition["logit"]})


def two_flow() -> TwoFlow:
    torch.manual_seed(0)
    return TwoFlow().eval()


def cfg_x0() -> Config:
    return Config().override([f"data.size={SIZE}", "diffusion.prediction=x0"])


def disc_image(seed: int = 0) -> torch.Tensor:
    """[1,H,W] in [-1,1]: a bright disc on speckle."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = ((xx - 12) ** 2 + (yy - 18) ** 2 < 49).float()
    noise = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return (0.6 * disc + 0.3 * noise)[None] * 2 - 1


@pytest.fixture(scope="module")
def fake_result():
    model = two_flow()
    return model, gradcam_analysis(model, cfg_x0(), disc_image(), resolve_views(model), steps=5, cam_steps=3, seed=3,
                                   progress=False)


def reference_gradcam(model, layer, x_t, t, image, region) -> np.ndarray:
    """Grad-CAM by hand: ReLU(sum_c mean(dS/dA_c) A_c), bilinear to the input size, divided by its maximum."""
    module = dict(model.named_modules())[layer]
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    out = model(x_t, torch.full((1,), t, dtype=torch.long), image)
    handle.remove()
    score = (torch.sigmoid(out.x0) * region).sum()
    (grad,) = torch.autograd.grad(score, store["a"])
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x_t.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    return cam / cam.max()


# ---- the analysis --------------------------------------------------------------------------------------------
def test_default_views_come_from_cam_layers_and_give_full_size_maps(fake_result):
    model, r = fake_result
    assert r.views.groups == {"condition": ["cond.3"], "denoising": ["den.1"]}
    assert r.views.psa == [("den.1", "tap")] and r.views.prior == "prior.1"
    assert set(r.cams) == {"cond.3", "den.1", "tap"}
    for name, maps in r.cams.items():
        assert maps.shape == (3, SIZE, SIZE)
        assert np.isfinite(maps).all() and maps.min() >= 0
        assert np.allclose(maps.reshape(3, -1).max(1), 1.0), name  # each map divided by its own maximum
        assert (r.peaks[name] > 0).all()
    assert np.array_equal(r.cams["den.1"], r.cams["tap"])  # an identity tap sees what its input layer sees
    assert r.target == "x0" and not r.region_empty


def test_maps_equal_a_hand_computed_gradcam(fake_result):
    model, r = fake_result
    image = torch.from_numpy(r.image)[None]
    region = torch.from_numpy(r.region.astype(np.float32))[None, None]
    for j, step in enumerate(r.cam_steps):
        x_t = torch.from_numpy(r.trajectory.x_t[step])[None, None]
        t = int(r.trajectory.timesteps[step])
        for layer in ("cond.3", "den.1"):
            expected = reference_gradcam(model, layer, x_t, t, image, region)
            assert np.allclose(r.cams[layer][j], expected, atol=1e-5), (layer, t)
        with torch.no_grad():
            score = (torch.sigmoid(model(x_t, torch.full((1,), t), image).x0) * region).sum()
        assert r.scores[j] == pytest.approx(float(score), rel=1e-5)


def test_trajectory_has_the_requested_steps_and_columns_run_from_T_to_0(fake_result):
    _, r = fake_result
    traj = r.trajectory
    assert len(traj.timesteps) == 5 and traj.x_t.shape == (5, SIZE, SIZE) and traj.x0_prob.shape == (5, SIZE, SIZE)
    assert traj.timesteps[0] == 999 and np.all(np.diff(traj.timesteps) < 0)
    assert r.cam_steps == [0, 2, 4] and r.cam_timesteps == [int(t) for t in traj.timesteps[[0, 2, 4]]]
    assert traj.x0_prob.min() >= 0 and traj.x0_prob.max() <= 1
    assert r.region.sum() == (traj.final_prob >= 0.5).sum()


def test_prior_view_explains_the_aux_logit(fake_result):
    model, r = fake_result
    image = torch.from_numpy(r.image)[None]
    with torch.no_grad():
        expected_logit = float(model.encode(image)["logit"])
    assert r.prior_logit == pytest.approx(expected_logit, rel=1e-5)
    assert r.prior_cam.shape == (SIZE, SIZE) and r.prior_cam.max() == pytest.approx(1.0) and r.prior_peak > 0
    # the prior layer depends on the image only; its map for the mask target would mix in the whole network
    store = {}
    handle = model.prior[1].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    logit = model(torch.zeros(1, 1, SIZE, SIZE), torch.zeros(1, dtype=torch.long), image).aux["prior_logit"]
    handle.remove()
    (grad,) = torch.autograd.grad(logit.sum(), store["a"])
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    assert np.allclose(r.prior_cam, cam / cam.max(), atol=1e-5)


def test_fixed_seed_reproduces_every_array_and_leaves_the_model_alone():
    model = two_flow()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(steps=4, cam_steps=2, progress=False)
    a = gradcam_analysis(model, cfg_x0(), disc_image(), resolve_views(model), seed=7, **kw)
    b = gradcam_analysis(model, cfg_x0(), disc_image(), resolve_views(model), seed=7, **kw)
    c = gradcam_analysis(model, cfg_x0(), disc_image(), resolve_views(model), seed=8, **kw)
    for name in a.cams:
        assert np.array_equal(a.cams[name], b.cams[name])
    assert np.array_equal(a.prior_cam, b.prior_cam) and np.array_equal(a.trajectory.x_t, b.trajectory.x_t)
    assert not np.array_equal(a.trajectory.x_t, c.trajectory.x_t)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # hooks went on a copy


def test_explicit_timesteps_snap_to_the_trajectory():
    model = two_flow()
    r = gradcam_analysis(model, cfg_x0(), disc_image(), CamViews({"layers": ["den.1"]}), steps=10,
                         cam_timesteps=[0, 990, 480, 500], seed=0, progress=False)
    assert r.cam_timesteps == [999, 499, 99] and list(r.cams) == ["den.1"]


def test_empty_prediction_uses_the_whole_image_and_says_so(tmp_path):
    model = two_flow()
    r = gradcam_analysis(model, cfg_x0(), disc_image(), CamViews({"layers": ["den.1"]}), steps=3, cam_steps=2,
                         seed=0, threshold=1.5, progress=False)
    assert r.region_empty and r.region.all()
    summary = write_outputs(tmp_path, r, {"model": "twoflow"})
    assert summary["region_empty"] and "whole image" in summary["region"]
    assert all(e["mass_in_region"] is None for e in summary["cams"]["den.1"])
    assert "whole image" in (tmp_path / "gradcam.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("kwargs, needles", [
    ({"layers": "cond.3,nope"}, ["unknown layer 'nope'", "usable layers include", "den"]),
    ({"layers": "den.9"}, ["unknown layer 'den.9'", "did you mean den.1, den.0"]),
    ({"layers": "unused"}, ["'unused'", "not called", "unused.0"]),
    ({"layers": "twice"}, ["'twice'", "called 2 times"]),
    ({"layers": "halves"}, ["'halves'", "tuple", "[B,C,H,W]"]),
    ({"prior_target": "nope"}, ["'nope'", "prior_logit"]),
])
def test_layers_grad_cam_cannot_use_give_one_line_errors(kwargs, needles):
    model = two_flow()
    views = resolve_views(model, kwargs.get("layers"), prior_target=kwargs.get("prior_target"))
    with pytest.raises(LesiondiffError) as info:
        gradcam_analysis(model, cfg_x0(), disc_image(), views, steps=2, cam_steps=1, progress=False)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_command_line_options_override_the_defaults():
    model = two_flow()
    views = resolve_views(model, "den.1,cond.3", psa_pairs="cond.3:den.1", prior_layer="none")
    assert views.groups == {"layers": ["den.1", "cond.3"]} and views.psa == [("cond.3", "den.1")]
    assert views.prior is None and views.prior_target is None
    assert resolve_views(model, psa_pairs="none").psa == []
    with pytest.raises(LesiondiffError, match="before:after"):
        resolve_views(model, psa_pairs="a:b,c")


# ---- files ---------------------------------------------------------------------------------------------------
def test_outputs_list_exactly_the_requested_layers_and_steps(fake_result, tmp_path):
    _, r = fake_result
    summary = write_outputs(tmp_path, r, {"model": "twoflow", "run": "none", "sampler": "ddim", "steps": 5})
    files = {"gradcam_grid.png", "psa.png", "prior.png", "trajectory.png", "gradcam.json", "gradcam.md"}
    assert set(summary["files"]) == files and all((tmp_path / f).is_file() for f in files)
    saved = json.loads((tmp_path / "gradcam.json").read_text(encoding="utf-8"))
    assert saved["layers"] == {"condition": ["cond.3"], "denoising": ["den.1"]}
    assert list(saved["cams"]) == ["cond.3", "den.1", "tap"] and saved["psa_pairs"] == [["den.1", "tap"]]
    assert saved["cam_timesteps"] == r.cam_timesteps and len(saved["timesteps"]) == 5
    assert all([e["t"] for e in entries] == r.cam_timesteps for entries in saved["cams"].values())
    assert saved["target"]["kind"] == "x0_logits" and saved["prior"]["target"] == "aux['prior_logit']"
    share = saved["cams"]["den.1"][0]["mass_in_region"]
    assert 0 <= share <= 1
    md = (tmp_path / "gradcam.md").read_text(encoding="utf-8")
    assert all(f"t={t}" in md for t in r.cam_timesteps) and "| cond.3 |" in md


def test_grid_has_a_row_per_layer_and_a_column_per_step_plus_the_image(fake_result, tmp_path):
    _, r = fake_result
    _, shape = plot_grid(tmp_path / "full.png", r, "two rows")
    assert shape == (2, 4)
    one = CamViews({"denoising": ["den.1"]})
    _, shape_one = plot_grid(tmp_path / "one.png", dataclasses.replace(r, views=one), "one row")
    assert shape_one == (1, 4)
    full, single = Image.open(tmp_path / "full.png").size, Image.open(tmp_path / "one.png").size
    cell = full[0] / 5  # four image columns and a colour bar
    assert full[1] - single[1] > 0.8 * cell and full[0] == pytest.approx(single[0], rel=0.05)


# ---- real architectures --------------------------------------------------------------------------------------
@pytest.mark.skipif("pgdiffseg" not in MODELS, reason="pgdiffseg is not registered")
def test_pgdiffseg_default_views():
    torch.manual_seed(0)
    cfg = load_preset("pgdiffseg").override(["model.base_channels=8", f"data.size={SIZE}"])
    model = build_model(cfg, 1).eval()
    r = gradcam_analysis(model, cfg, disc_image(), resolve_views(model), steps=3, cam_steps=2, seed=0,
                         progress=False)
    assert r.views.grid_layers == [f"condition_flow.{i}" for i in range(4)] + [f"denoise_flow.{i}" for i in range(4)]
    assert len(r.views.psa) == 8 and r.views.prior == "prior.units.3" and r.views.prior_target == "prior_logit"
    assert len(r.cams) == 16
    for name, maps in r.cams.items():
        assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all() and maps.min() >= 0
        # Grad-CAM's ReLU may leave an untrained layer with no positive evidence: such a map is all zero
        assert np.allclose(maps.reshape(2, -1).max(1), (r.peaks[name] > 0).astype(float)), name
    assert sum((p > 0).all() for p in r.peaks.values()) >= 4
    assert r.prior_cam.shape == (SIZE, SIZE) and np.isfinite(r.prior_logit)


@pytest.fixture(scope="module")
def run_dir(train_tiny_run, tmp_path_factory):
    """A tiny eps-prediction MedSegDiff trained for 2 steps on phantoms."""
    return train_tiny_run("medsegdiff", tmp_path_factory.mktemp("run") / "tiny", 2, "train.batch_size=4",
                          "data.val_max_images=2")


def test_cli_writes_figures_for_an_eps_run(run_dir, phantom_manifest, tmp_path, capsys):
    row = Manifest.read(phantom_manifest).rows(split="test")[0]
    out = tmp_path / "cam"
    code = main(["analyze", "gradcam", "--run", str(run_dir), "--manifest", str(phantom_manifest), "--id", row["id"],
                 "--layers", "body.down.0.0,condition_encoder.levels.0", "--steps", "4", "--cam-steps", "3",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "| body.down.0.0 |" in printed
    saved = json.loads((out / "gradcam.json").read_text(encoding="utf-8"))
    assert saved["layers"] == {"layers": ["body.down.0.0", "condition_encoder.levels.0"]}
    assert len(saved["timesteps"]) == 4 and len(saved["cam_timesteps"]) == 3 and saved["target"]["kind"] == "eps"
    assert saved["id"] == row["id"] and saved["sampler"] == "ddim" and saved["prior"] is None
    assert {"gradcam_grid.png", "trajectory.png"} <= {p.name for p in out.iterdir()}
    assert not (out / "psa.png").exists()
    code = main(["analyze", "gradcam", "--run", str(run_dir), "--list-layers"])
    listing = capsys.readouterr().out
    assert code == 0 and "body.down.0.0" in listing and "(not usable: never called)" in listing


def test_trajectory_is_the_sample_predict_draws(run_dir, phantom_manifest):
    row = Manifest.read(phantom_manifest).rows(split="test")[0]
    predictor = Predictor.from_run(run_dir, overrides=["sample.samples=1", "sample.steps=4", "sample.sampler=ddim"])
    expected = predictor.sample(row["id"], read_image(row["image"]))[0]
    cfg, model = load_run(run_dir)
    x = preprocess_image(read_image(row["image"]), cfg.data.size, cfg.data.channels, cfg.data.intensity_window)
    r = gradcam_analysis(model, cfg, x, CamViews({"layers": ["body.down.0.0"]}), steps=4, cam_steps=1,
                         seed=predictor.image_seed(row["id"]), progress=False)
    assert np.allclose(r.trajectory.final_prob, expected, atol=1e-4)


@pytest.mark.parametrize("extra, needles", [
    (["--layers", "body.nope"], ["unknown layer 'body.nope'"]),
    ([], ["--layers", "cam_layers"]),
    (["--layers", "body.down.0.0", "--cam-timesteps", "9x"], ["--cam-timesteps"]),
])
def test_cli_errors_are_one_line(run_dir, phantom_manifest, tmp_path, capsys, extra, needles):
    row = Manifest.read(phantom_manifest).rows()[0]
    code = main(["analyze", "gradcam", "--run", str(run_dir), "--image", row["image"], "--steps", "2",
                 "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert all(n in err for n in needles), err
