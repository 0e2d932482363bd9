"""The experiment runner: skip / reuse / refuse / interrupt semantics and the state it writes, with the stages
after training replaced by recorders (no network is trained or sampled here)."""

import csv
import json
from pathlib import Path

import pytest

from lesiondiff.data.manifest import Manifest
from lesiondiff.engine import runs as train_module
from lesiondiff.errors import LesiondiffError
from lesiondiff.experiments import runner
from lesiondiff.experiments.runner import ExperimentSettings, RunSpec, State, run_config, run_plan, sampling
from lesiondiff.presets import load_preset
from tiny_settings import TINY_MODEL


@pytest.fixture
def settings(phantom_manifest, tmp_path):
    return ExperimentSettings(manifest=str(phantom_manifest), budget_minutes=1.0, out=str(tmp_path / "out"),
                              size=32, seed=3, max_steps=6, overrides=TINY_MODEL)


@pytest.fixture
def stages(monkeypatch):
    """Counts trainings and records the folders predicted and evaluated."""
    calls = {"train": 0, "predict": [], "evaluate": []}

    def train_run(cfg, train_dir, device, resume, log):
        calls["train"] += 1
        return {"status": "interrupted", "step": 3, "elapsed_s": 2.0}

    def predict_phase(run, wanted, items, device, train_dir):
        calls["predict"].append((run.name, train_dir, wanted, len(items)))
        return "predicted"

    def evaluate_phase(run, manifest, split):
        calls["evaluate"].append((run.name, split))
        return {"threshold": 0.5}, "evaluated"

    monkeypatch.setattr(train_module, "train_run", train_run)
    monkeypatch.setattr(runner, "predict_phase", predict_phase)
    monkeypatch.setattr(runner, "evaluate_phase", evaluate_phase)
    return calls


def finished_run(s, folder):
    """A run folder whose training finished at step 6 with ``run_config(s, "unet")``."""
    saved = run_config(s, "unet")
    saved = saved.override(["data.channels=1"])  # as the Trainer resolves it
    saved.save(folder / "train" / "config.yaml")
    (folder / "train" / "summary.json").write_text(json.dumps({"status": "finished", "step": 6, "elapsed_s": 60.0}))
    return folder


def spec(s, name, **kw):
    cfg = kw.pop("cfg", run_config(s, "unet"))
    return RunSpec(name, cfg, {"samples": 2}, Path(s.out) / name, "test", {"preset": "unet"}, **kw)


def test_sampling_is_one_rule(settings):
    defaults = load_preset("ensemdiff")
    assert sampling(settings, defaults, "feedforward") == {"samples": defaults.sample.samples, "sampler": "oneshot",
                                                           "steps": 1, "seed": 3, "fusion": defaults.fusion.method}
    settings.samples, settings.sampler, settings.steps = 2, "ddpm", 7
    assert sampling(settings, defaults, "diffusion") == {"samples": 2, "sampler": "ddpm", "steps": 7, "seed": 3,
                                                         "fusion": defaults.fusion.method}


def test_run_config_order(settings):
    cfg = run_config(settings, "ensemdiff", before=["data.size=40", "train.seed=9"], after=["data.size=48"])
    assert (cfg.data.size, cfg.train.seed, cfg.train.steps, cfg.train.max_minutes) == (48, 9, 6, 1.0)
    assert cfg.model.base_channels == 8  # the user's overrides (TINY_MODEL) come after ``before``


def test_finished_run_is_skipped_reused_and_recorded(settings, stages):
    out = Path(settings.out)
    finished_run(settings, out / "a")
    specs = [spec(settings, "a"), spec(settings, "b", cfg=None, skip="no such mode"),
             spec(settings, "c", train_from=out / "a")]
    state, logs = State(out / "x.json", {"runs": {}}), []
    outcome = run_plan(specs, state, settings, log=logs.append)

    assert stages["train"] == 0 and outcome.interrupted is None  # finished: not retrained
    n_test = len(Manifest.read(settings.manifest).rows(split="test"))
    assert stages["predict"] == [("a", out / "a" / "train", {"samples": 2}, n_test),
                                 ("c", out / "a" / "train", {"samples": 2}, n_test)]  # c predicts with a's model
    assert stages["evaluate"] == [("a", "test"), ("c", "test")]
    saved = json.loads((out / "x.json").read_text(encoding="utf-8"))
    a, b, c = (saved["runs"][n] for n in "abc")
    assert a["train"]["action"] == "skipped (already trained)" and a["train"]["step"] == 6
    assert (a["status"], a["predictions"], a["evaluation"]) == ("evaluated", "predicted", "evaluated")
    assert a["evaluation_summary"] == "a/evaluation/summary.json" and a["preset"] == "unet"
    assert b == {"preset": "unet", "status": "skipped", "reason": "no such mode"} and not (out / "b").exists()
    assert c["train"] == "reuses a" and outcome.trained["c"]["step"] == 6
    assert "[2/3] b: skipped: no such mode" in logs and "updated" in saved
    assert outcome.evaluated == {"a": {"threshold": 0.5}, "c": {"threshold": 0.5}}


def test_run_trained_with_another_config_is_refused(settings, stages):
    out = Path(settings.out)
    finished_run(settings, out / "a")
    settings.size = 48
    with pytest.raises(LesiondiffError, match="trained with data.size=32, but this experiment asks for 48"):
        run_plan([spec(settings, "a")], State(out / "x.json", {"runs": {}}), settings, log=lambda m: None)
    assert stages["train"] == 0 and stages["predict"] == []


def test_interrupted_training_stops_the_plan(settings, stages):
    out = Path(settings.out)
    state = State(out / "x.json", {"folds": {}}, table="folds")
    outcome = run_plan([spec(settings, "a", key="0", tag="[fold 1/2]"), spec(settings, "b", key="1")], state,
                       settings, log=lambda m: None)
    assert stages["train"] == 1 and stages["predict"] == []  # b never started
    assert outcome.interrupted["status"] == "interrupted" and "training a at step 3" in outcome.interrupted["text"]
    saved = json.loads((out / "x.json").read_text(encoding="utf-8"))
    assert list(saved["folds"]) == ["0"] and saved["folds"]["0"]["status"] == "interrupted"
    assert saved["folds"]["0"]["train"]["action"] == "trained from step 0"


def test_write_tables(tmp_path):
    runner.write_tables(tmp_path, "t", "text", ("a", "b"), [{"a": 1.5, "b": None, "extra": 0}])
    with (tmp_path / "t.csv").open() as f:
        assert list(csv.reader(f)) == [["a", "b"], ["1.5", ""]]
    assert (tmp_path / "t.md").read_text() == "text\n"
    runner.write_tables(tmp_path, "u", "only markdown")
    assert not (tmp_path / "u.csv").exists() and (tmp_path / "u.md").is_file()
