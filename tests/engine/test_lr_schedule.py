"""The recipe's learning-rate schedule: warm-up peak and final value on a step budget and on a time budget."""

import csv
import math

import pytest

from lesiondiff.engine.lr_schedule import LRSchedule, training_progress
from lesiondiff.engine.train import Trainer
from lesiondiff.errors import LesiondiffError
from lesiondiff.presets import load_preset
from tiny_settings import TINY_MODEL


def test_cosine_on_a_step_budget_peaks_after_warmup_and_ends_at_the_final_ratio():
    steps, warmup = 100, 10
    s = LRSchedule("cosine", warmup, final_ratio=0.1)
    factors = [s.factor(k, training_progress(k, steps, 0.0, 0.0)) for k in range(steps + 1)]
    assert factors[0] == pytest.approx(1 / warmup)
    assert factors[warmup - 1] == pytest.approx(1.0)  # the warm-up's last step reaches the peak
    assert factors[warmup] == pytest.approx(1.0)  # the cosine starts at the peak
    assert max(factors) == pytest.approx(1.0)
    assert factors[steps] == pytest.approx(0.1)  # progress 1: the bottom
    middle = warmup + (steps - warmup) // 2
    assert factors[middle] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-9)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))  # decreasing after warm-up


def test_cosine_on_a_time_budget_ends_at_the_bottom_whatever_the_step_count():
    """A 10-minute budget on a machine that makes far fewer steps than train.steps: the time ends the run, and
    the cosine reaches its final value when the time does."""
    budget, steps = 10.0, 1_000_000
    s = LRSchedule("cosine", warmup=5)
    seconds_per_step = 3.0  # 200 steps in 10 minutes
    factors = [s.factor(k, training_progress(k, steps, k * seconds_per_step, budget)) for k in range(201)]
    assert factors[4] == pytest.approx(1.0)
    assert s.warmup_progress == pytest.approx(5 * 3.0 / 600)
    assert factors[200] == pytest.approx(0.0, abs=1e-12)
    assert factors[100] == pytest.approx(0.5 * (1 + math.cos(math.pi * (0.5 - 0.025) / 0.975)), abs=1e-9)


def test_constant_schedule_and_bad_settings():
    s = LRSchedule("constant", warmup=4)
    assert [s.factor(k, k / 10) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(LesiondiffError, match="train.schedule"):
        LRSchedule("linear")
    with pytest.raises(LesiondiffError, match="final_lr_ratio"):
        LRSchedule("cosine", final_ratio=2.0)


def test_trainer_logs_the_scheduled_rate(phantom_manifest, tmp_path):
    """A 12-step run with 4 warm-up steps: the logged rate (mean over each logged step) rises, then falls."""
    cfg = load_preset("unet").override([
        f"data.manifest={phantom_manifest}", "train.steps=12", "train.log_every=1", "train.val_every=12",
        "train.lr=1e-3", "train.warmup=4", "train.schedule=cosine", "train.final_lr_ratio=0", "data.size=32",
        *TINY_MODEL,
        "data.val_max_images=4"])
    summary = Trainer(cfg, tmp_path / "run", device="cpu").fit()
    assert summary["recipe"] == "fast" and "cosine" in summary["lr_schedule"]
    with (tmp_path / "run/log.csv").open() as f:
        lr = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lr[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr[4] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lr[4:], lr[5:]))
    assert lr[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (11 / 12 - 4 / 12) / (1 - 4 / 12))), rel=1e-3)
