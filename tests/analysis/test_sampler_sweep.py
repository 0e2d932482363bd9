"""Sampler sweeps (Dice vs NFE): exact rows, measured NFE, summaries from the repeat rows, resume, protocol
checks, reproducibility, and agreement with predict + evaluate, on a tiny run trained on phantoms."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lesiondiff.analysis import sampler_sweep
from lesiondiff.analysis.sampler_sweep import count_evaluations, fewest_within, summarize_sweep
from lesiondiff.cli import main
from lesiondiff.data.manifest import Manifest, evenly_spaced
from lesiondiff.diffusion.samplers import DDIMSampler
from lesiondiff.engine.evaluate import evaluate
from lesiondiff.engine.predict import Predictor, load_run

SAMPLERS, NFE, REFERENCE, REPEATS, IMAGES = ["ddim", "dpmsolver++", "ddpm"], [2, 3], 6, 2, 3
SETTINGS = [(s, n) for s in SAMPLERS for n in NFE] + [("ddpm", REFERENCE)]
OUTPUTS = ["sweep.csv", "summary.csv", "summary.json", "samplers.md", "dice_vs_nfe.png"]


@pytest.fixture(scope="module")
def run_dir(train_tiny_run, tmp_path_factory):
    """A tiny eps-prediction EnsemDiff (32 px) trained 30 steps on phantoms: about two seconds."""
    return train_tiny_run("ensemdiff", tmp_path_factory.mktemp("run") / "tiny", 30)


def sweep_args(run_dir, manifest, out, samplers=SAMPLERS, nfe=NFE, reference=REFERENCE, repeats=REPEATS,
               images=IMAGES):
    args = ["analyze", "samplers", "--run", str(run_dir), "--manifest", str(manifest), "--split", "test",
            "--samplers", ",".join(samplers), "--nfe", ",".join(map(str, nfe)), "--reference-nfe", str(reference),
            "--repeats", str(repeats), "--device", "cpu", "--out", str(out)]
    return args + (["--max-images", str(images)] if images else [])


@pytest.fixture(scope="module")
def sweep(run_dir, phantom_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    assert main(sweep_args(run_dir, phantom_manifest, out)) == 0
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_has_exactly_the_expected_rows_and_measured_nfe(sweep):
    rows = read_csv(sweep / "sweep.csv")
    assert sorted((r["sampler"], int(r["nfe"]), int(r["repeat"])) for r in rows) == sorted(
        (s, n, r) for s, n in SETTINGS for r in range(REPEATS))
    summary = read_csv(sweep / "summary.csv")
    assert [(r["sampler"], int(r["nfe"])) for r in summary] == SETTINGS  # in the order asked, reference last
    for row in rows + summary:
        assert int(row["measured_nfe"]) == int(row["nfe"])
    assert all(int(r["images"]) == IMAGES for r in rows + summary)


def test_summary_is_mean_and_population_std_of_the_repeat_rows(sweep):
    rows = read_csv(sweep / "sweep.csv")
    for s in read_csv(sweep / "summary.csv"):
        mine = [r for r in rows if (r["sampler"], r["nfe"]) == (s["sampler"], s["nfe"])]
        dice = np.array([float(r["dice"]) for r in mine])
        assert ((dice >= 0) & (dice <= 1)).all()
        assert float(s["dice_mean"]) == pytest.approx(dice.mean(), abs=1e-12)
        assert float(s["dice_std"]) == pytest.approx(dice.std(ddof=0), abs=1e-12) and float(s["dice_std"]) >= 0
        seconds = sum(float(r["seconds"]) for r in mine)
        assert float(s["seconds_per_image"]) == pytest.approx(seconds / IMAGES)
        assert float(s["seconds_per_image_per_sample"]) == pytest.approx(seconds / (IMAGES * REPEATS))
        assert float(s["seconds_per_image"]) > 0


def test_summary_json_markdown_and_figure(sweep, phantom_manifest):
    summary = json.loads((sweep / "summary.json").read_text(encoding="utf-8"))
    p = summary["protocol"]
    test_ids = [r["id"] for r in Manifest.read(phantom_manifest).rows(split="test")]
    assert p["image_ids"] == evenly_spaced(test_ids, IMAGES) and p["images"] == IMAGES
    assert (p["split"], p["threshold"], p["seed"], p["repeats"], p["split_images"]) == ("test", 0.5, 0, 2, 6)
    assert "evenly spaced" in p["image_selection"]
    assert p["averaging"] == "per-image Dice averaged over images, mean ± std over repeats"
    assert summary["reference"]["sampler"] == "ddpm" and summary["reference"]["nfe"] == REFERENCE
    assert summary["nfe_mismatches"] == []
    assert set(summary["fewest_nfe_within_tolerance"]) == {"ddim", "dpmsolver++", "ddpm", "overall"}
    md = (sweep / "samplers.md").read_text(encoding="utf-8")
    assert md.count("\n| ") == 1 + len(SETTINGS)  # the separator and one row per setting
    for name in ["ddim", "dpmsolver++", "ddpm", "overall"]:
        assert any(line.startswith(f"- {name}: ") for line in md.splitlines())
    with Image.open(sweep / "dice_vs_nfe.png") as im:
        im.verify()
    with Image.open(sweep / "dice_vs_nfe.png") as im:
        assert im.format == "PNG" and min(im.size) > 200


def test_rerun_skips_every_setting_and_rewrites_identical_files(sweep, run_dir, phantom_manifest, monkeypatch,
                                                                 capsys):
    before = {name: (sweep / name).read_bytes() for name in OUTPUTS}

    def no_sampling(*args, **kwargs):
        raise AssertionError("a completed setting was sampled again")

    monkeypatch.setattr(sampler_sweep, "run_setting", no_sampling)
    assert main(sweep_args(run_dir, phantom_manifest, sweep)) == 0
    assert "sampled 0 settings" in capsys.readouterr().out
    assert {name: (sweep / name).read_bytes() for name in OUTPUTS} == before


def test_rerun_with_another_protocol_is_a_one_line_error(sweep, run_dir, phantom_manifest, capsys):
    before = (sweep / "sweep.csv").read_bytes()
    assert main(sweep_args(run_dir, phantom_manifest, sweep, repeats=3)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "repeats 2 -> 3" in err and str(sweep) in err
    assert main(sweep_args(run_dir, phantom_manifest, sweep, images=4)) == 2
    assert "images 3 ids -> 4 ids" in capsys.readouterr().err
    assert (sweep / "sweep.csv").read_bytes() == before


def test_fresh_sweep_reproduces_the_rows_whatever_else_is_swept(sweep, run_dir, phantom_manifest, tmp_path):
    """Seeds depend on the seed and the image id only: deterministic DDIM and seeded ancestral DDPM give the
    same Dice in a fresh folder with fewer samplers."""
    assert main(sweep_args(run_dir, phantom_manifest, tmp_path, samplers=["ddpm", "ddim"], reference=0)) == 0
    fresh = {(r["sampler"], r["nfe"], r["repeat"]): r["dice"] for r in read_csv(tmp_path / "sweep.csv")}
    first = {(r["sampler"], r["nfe"], r["repeat"]): r["dice"] for r in read_csv(sweep / "sweep.csv")}
    assert len(fresh) == 2 * len(NFE) * REPEATS
    assert all(first[key] == value for key, value in fresh.items())
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["reference"] is None
    assert "no reference" in (tmp_path / "samplers.md").read_text(encoding="utf-8")


def test_repeat_r_is_sample_r_of_predict_scored_as_evaluate_does(run_dir, phantom_manifest, tmp_path, capsys,
                                                                  monkeypatch):
    pred = Predictor.from_run(run_dir, device="cpu", overrides=["sample.sampler=ddim", "sample.steps=2",
                                                                 f"sample.samples={REPEATS}", "sample.seed=0"])
    rows = Manifest.read(phantom_manifest).rows(split="test")
    pred.run([(r["id"], r["image"]) for r in rows], tmp_path / "pred")
    evaluate(tmp_path / "pred", phantom_manifest, "test")
    metrics = read_csv(tmp_path / "pred" / "metrics.csv")
    # a folder holding another command's summary.json is not overwritten
    assert main(sweep_args(run_dir, phantom_manifest, tmp_path / "pred")) == 2
    assert "not a sampler-sweep summary" in capsys.readouterr().err
    # evaluate reads the samples back from predict's float16 .npz; rounded the same way, the Dice is identical
    resize = sampler_sweep.resize_prob
    monkeypatch.setattr(sampler_sweep, "resize_prob", lambda p, hw: resize(p.astype(np.float16), hw))
    assert main(sweep_args(run_dir, phantom_manifest, tmp_path / "sweep", samplers=["ddim"], nfe=[2], reference=0,
                           images=0)) == 0
    for row in read_csv(tmp_path / "sweep" / "sweep.csv"):
        per_image = [float(m["dice"]) for m in metrics if m["which"] == f"sample_{row['repeat']}"]
        assert len(per_image) == len(rows) == int(row["images"])
        assert float(row["dice"]) == np.mean(per_image)


def test_feedforward_runs_and_bad_options_are_one_line_errors(run_dir, phantom_manifest, tmp_path, capsys):
    ff = tmp_path / "ff"
    ff.mkdir()
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    cfg["diffusion"]["mode"] = "feedforward"
    (ff / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(sweep_args(ff, phantom_manifest, tmp_path / "o1")) == 2
    assert "feed-forward" in capsys.readouterr().err
    for kw, expected in [({"samplers": ["ddim", "nope"]}, "unknown sampler 'nope'"),
                         ({"samplers": ["oneshot"]}, "does not take a number of steps"),
                         ({"nfe": [2, 2000]}, "exceeds the run's 1000 training timesteps"),
                         ({"repeats": 0}, "--repeats >= 1")]:
        assert main(sweep_args(run_dir, phantom_manifest, tmp_path / "o2", **kw)) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err
    assert main([*sweep_args(run_dir, phantom_manifest, tmp_path / "o3"), "--nfe", "5,x"]) == 2
    assert "--nfe" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3"))


def test_count_evaluations_counts_rows_and_restores_the_method(run_dir):
    _, model = load_run(run_dir, device="cpu")
    x, t = torch.zeros(3, 1, 32, 32), torch.full((3,), 10)
    condition = model.encode(torch.zeros(3, 1, 32, 32))
    with count_evaluations(model) as count:
        model.denoise(x, t, condition)
        model.denoise(x[:1], t[:1], model.take_condition(condition, torch.tensor([0])))
    assert (count.calls, count.rows) == (2, 4)
    assert "denoise" not in model.__dict__


def test_a_sampler_making_extra_evaluations_is_measured_and_warned(run_dir, phantom_manifest, tmp_path,
                                                                   monkeypatch):
    """A solver that evaluates the network once more than the steps asked is recorded with its real NFE."""

    class Extra(DDIMSampler):
        def run(self, model, x, condition, steps, generator):
            model.denoise(x, torch.zeros(x.shape[0], dtype=torch.long), condition)
            return super().run(model, x, condition, steps, generator)

    monkeypatch.setattr(sampler_sweep, "build_sampler", lambda cfg, name=None, max_batch=None: Extra(cfg.diffusion, max_batch or 0))
    with pytest.warns(UserWarning, match="ddim at NFE 2 made 3 network evaluations per sample"):
        summary = sampler_sweep.sweep_samplers(run_dir, tmp_path, phantom_manifest, samplers=["ddim"], nfe=[2],
                                               reference_nfe=0, repeats=2, max_images=2, device="cpu",
                                               progress=False)
    assert summary["results"][0]["measured_nfe"] == 3 and summary["nfe_mismatches"] == ["ddim NFE 2: measured 3"]
    assert "NFE measured differs from requested" in (tmp_path / "samplers.md").read_text(encoding="utf-8")


def test_fewest_within_known_values():
    rows = summarize_sweep([
        {"sampler": s, "nfe": n, "measured_nfe": n, "repeat": r, "dice": d, "images": 2, "seconds": 1.0}
        for s, n, r, d in [("ddpm", 1000, 0, 0.80), ("ddpm", 1000, 1, 0.82), ("ddim", 5, 0, 0.70),
                           ("ddim", 5, 1, 0.70), ("ddim", 10, 0, 0.801), ("ddim", 10, 1, 0.80),
                           ("ddim", 20, 0, 0.85), ("ddim", 20, 1, 0.85), ("unipc", 5, 0, 0.5), ("unipc", 5, 1, 0.5)]
    ], order=["ddim", "unipc", "ddpm"])
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("ddim", 5), ("ddim", 10), ("ddim", 20), ("unipc", 5),
                                                        ("ddpm", 1000)]
    ref = rows[-1]
    assert ref["dice_mean"] == pytest.approx(0.81) and ref["dice_std"] == pytest.approx(0.01)
    assert ref["seconds_per_image"] == 1.0 and ref["seconds_per_image_per_sample"] == 0.5
    within = fewest_within(rows, ref, tolerance=1.0)  # at least 0.80
    assert within["ddim"]["nfe"] == 10 and within["unipc"] is None and within["overall"]["nfe"] == 10
    assert "ddpm" not in within  # the reference is not compared with itself
    assert fewest_within(rows, ref, tolerance=0.0)["ddim"]["nfe"] == 20
    assert fewest_within(rows, None, 1.0) == {}
