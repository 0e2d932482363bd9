"""lesiondiff compare: feed-forward vs diffusion on one budget, resumable, with the Table 1 / Fig. 1 outputs."""

import csv
import json

import pytest
from PIL import Image

from lesiondiff.cli import main
from lesiondiff.engine.checkpoint import Checkpoint
from lesiondiff.engine.phases import train_phase
from lesiondiff.engine.train import Trainer
from lesiondiff.errors import LesiondiffError
from lesiondiff.experiments import compare as cmp
from lesiondiff.experiments.runner import sampling
from lesiondiff.render import compare_figure
from tiny_settings import TINY_MODEL

TINY = ["data.size=32", *TINY_MODEL,
        "train.val_every=5", "train.log_every=5", "train.batch_size=4", "train.val_steps=2", "data.val_max_images=4"]


@pytest.fixture(scope="module")
def manifest(phantom_manifest):
    return phantom_manifest


def settings(manifest, out, **kw):
    kw = {"presets": ["ensemdiff", "unet"], "overrides": TINY, **kw}
    return cmp.CompareSettings(manifest=str(manifest), budget_minutes=1.0, out=str(out), size=32, max_steps=6,
                               samples=2, steps=2, **kw)


def test_skip_reason_and_config_order(manifest, tmp_path):
    assert cmp.skip_reason("unet", "diffusion") and "feed-forward" in cmp.skip_reason("unet", "diffusion")
    assert cmp.skip_reason("unet", "feedforward") is None and cmp.skip_reason("ensemdiff", "diffusion") is None
    s = settings(manifest, tmp_path, seed=3)
    cfg = cmp.run_config("ensemdiff", "feedforward", s)
    assert (cfg.diffusion.mode, cfg.train.seed, cfg.train.steps, cfg.train.max_minutes) == ("feedforward", 3, 6, 1.0)
    assert cfg.model.base_channels == 8  # the user's overrides come last
    assert cmp.run_config("ensemdiff", "diffusion", settings(manifest, tmp_path, overrides=["data.size=48"])) \
        .data.size == 48
    # feed-forward is always sampled one-shot, S times; diffusion uses --sampler/--steps or the preset's own
    assert sampling(s, cfg, "feedforward") == {"samples": 2, "sampler": "oneshot", "steps": 1, "seed": 3,
                                               "fusion": "mean"}
    assert sampling(s, cfg, "diffusion")["sampler"] == "ddim"


def test_figure_ids_evenly_spaced():
    ids = [f"i{k:02d}" for k in range(10)][::-1]
    assert cmp.figure_ids(ids, 3) == ["i00", "i04", "i09"]  # sorted, first and last included (round(4.5) = 4)
    assert cmp.figure_ids(ids, 1) == ["i00"] and cmp.figure_ids(ids, 20) == sorted(ids)
    assert cmp.figure_ids(ids, 0) == []


def test_unknown_preset_fails_before_training(manifest, tmp_path, capsys):
    code = main(["compare", "--presets", "ensemdiff,nope", "--manifest", str(manifest), "--budget-minutes", "1",
                 "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown preset 'nope'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c" / "ensemdiff-diffusion").exists()


def _cli(manifest, out):
    return ["compare", "--presets", "ensemdiff,unet", "--modes", "diffusion,feedforward", "--manifest",
            str(manifest), "--budget-minutes", "1", "--out", str(out), "--size", "32", "--max-steps", "6",
            "--samples", "2", "--steps", "2", "--figure-images", "2", "--device", "cpu", *TINY]


def _mtimes(out):
    files = [*out.glob("*/train/checkpoints/*.safetensors"), *out.glob("*/predictions/predictions.csv"),
             *out.glob("*/evaluation/summary.json")]
    return {str(f): f.stat().st_mtime_ns for f in files}


@pytest.mark.slow
def test_compare_end_to_end_resumes_and_is_idempotent(manifest, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    # 1. Ctrl-C during the first run's validation at step 5: the Trainer keeps last.safetensors, compare stops
    original = Trainer._validate_and_save

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_validate_and_save", interrupt)
    assert main(_cli(manifest, out)) == 130
    state = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert state["runs"]["ensemdiff-diffusion"]["status"] == "interrupted"
    assert Checkpoint(out / "ensemdiff-diffusion/train/checkpoints/last.safetensors").state["step"] == 5
    assert not (out / "ensemdiff-feedforward").exists()
    monkeypatch.setattr(Trainer, "_validate_and_save", original)
    capsys.readouterr()

    # 2. the same command continues the interrupted run and does the rest
    assert main(_cli(manifest, out)) == 0
    printed = capsys.readouterr().out
    state = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    runs = state["runs"]
    assert runs["ensemdiff-diffusion"]["train"]["action"] == "resumed from step 5"
    assert runs["ensemdiff-diffusion"]["train"]["step"] == 6
    assert runs["ensemdiff-feedforward"]["train"]["action"] == "trained from step 0"
    assert runs["unet-diffusion"]["status"] == "skipped" and "feed-forward" in runs["unet-diffusion"]["reason"]
    assert not (out / "unet-diffusion").exists()
    assert all(runs[n]["status"] == "evaluated" for n in ("ensemdiff-diffusion", "ensemdiff-feedforward",
                                                           "unet-feedforward"))

    def ev(name):
        return json.loads((out / name / "evaluation/summary.json").read_text(encoding="utf-8"))

    for name in ("ensemdiff-diffusion", "ensemdiff-feedforward"):
        assert ev(name)["prediction_settings"]["samples"] == 2
    assert ev("ensemdiff-feedforward")["prediction_settings"]["sampler"] == "oneshot"
    assert ev("ensemdiff-diffusion")["prediction_settings"]["sampler"] == "ddim"

    with (out / "compare.csv").open() as f:
        rows = {r["preset"]: r for r in csv.DictReader(f)}
    e = rows["ensemdiff"]
    d, f = ev("ensemdiff-diffusion"), ev("ensemdiff-feedforward")
    assert float(e["iou_pct_diffusion"]) == pytest.approx(100 * d["fused"]["all"]["iou"]["mean"])
    assert float(e["delta_iou_pct"]) == pytest.approx(
        100 * (d["fused"]["all"]["iou"]["mean"] - f["fused"]["all"]["iou"]["mean"]))
    assert float(e["delta_ece"]) == pytest.approx(
        d["calibration"]["ece_per_image"]["mean"] - f["calibration"]["ece_per_image"]["mean"])
    assert float(e["delta_ece_pooled"]) == pytest.approx(
        d["calibration"]["ece_pooled"] - f["calibration"]["ece_pooled"])
    assert float(e["delta_dice_pct"]) == pytest.approx(
        100 * (d["fused"]["all"]["dice"]["mean"] - f["fused"]["all"]["dice"]["mean"]))
    assert e["steps_ff"] == e["steps_diffusion"] == "6"
    u = rows["unet"]
    assert u["iou_pct_diffusion"] == "" and u["delta_iou_pct"] == "" and u["status_diffusion"].startswith("skipped")
    assert float(u["ece_ff"]) == pytest.approx(ev("unet-feedforward")["calibration"]["ece_per_image"]["mean"])

    md = (out / "compare.md").read_text(encoding="utf-8")
    assert md.startswith("Protocol: split test") and "S = 2 samples" in md and "size 32 px" in md
    assert "ensemdiff-diffusion 6" in md and "threshold 0.5" in md
    assert f"| ensemdiff | {float(e['iou_pct_ff']):.2f} |" in md and f"{float(e['delta_ece']):+.4f}" in md
    assert "| preset | IoU % (FF) | ECE (FF) | IoU % (diffusion) | ECE (diffusion) | ΔIoU (pp) | ΔECE |" in printed

    width, height = compare_figure.figure_inches(2 * 2)  # 2 images x 2 presets, 5 panels each
    size = Image.open(out / "compare.png").size
    assert abs(size[0] - width * compare_figure.FIGURE_DPI) <= 1 and abs(size[1] - height * compare_figure.FIGURE_DPI) <= 1
    assert (out / "ensemdiff-diffusion/evaluation/reliability.png").is_file()

    # 3. again, after losing one training summary: nothing is retrained, re-predicted or re-evaluated
    before, table = _mtimes(out), (out / "compare.csv").read_text(encoding="utf-8")
    assert len(before) == 3 * 2 + 3 + 3  # best + last per run, predictions, evaluations
    (out / "unet-feedforward/train/summary.json").unlink()
    assert main(_cli(manifest, out)) == 0
    assert _mtimes(out) == before
    runs = json.loads((out / "compare.json").read_text(encoding="utf-8"))["runs"]
    assert runs["ensemdiff-diffusion"]["train"]["action"] == "skipped (already trained)"
    assert runs["unet-feedforward"]["train"]["action"] == "resumed from step 6"  # nothing left to do
    assert runs["unet-feedforward"]["predictions"].startswith("skipped")
    assert (out / "unet-feedforward/train/summary.json").is_file()
    assert (out / "compare.csv").read_text(encoding="utf-8") == table


def test_changed_settings_are_refused_not_mixed(manifest, tmp_path):
    """A finished run made with other settings is neither retrained nor mixed into the table."""
    s = settings(manifest, tmp_path / "c", presets=["unet"], modes=["feedforward"])
    run = tmp_path / "c" / "unet-feedforward"
    saved = cmp.run_config("unet", "feedforward", s)
    saved = saved.override(["data.channels=1"])  # as the Trainer resolves it
    saved.save(run / "train" / "config.yaml")
    (run / "train" / "summary.json").write_text(json.dumps({"status": "finished", "step": 6}))
    assert train_phase(cmp.run_config("unet", "feedforward", s), run, "cpu")["action"].startswith("skipped")
    changed = cmp.run_config("unet", "feedforward", settings(manifest, tmp_path / "c", overrides=[*TINY, "data.size=48"]))
    with pytest.raises(LesiondiffError, match="trained with data.size=32, but this experiment asks for 48"):
        train_phase(changed, run, "cpu")
