"""Training that survives: several processes (torch DDP over gloo, through accelerate launch) give a normal run
folder that predict reads and --resume continues; a run killed with SIGKILL at random moments always resumes
from an intact last checkpoint and finishes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lesiondiff.cli import main
from lesiondiff.engine.checkpoint import Checkpoint
from tiny_settings import TINY_MODEL

TINY = [*TINY_MODEL,
        "data.size=32", "train.batch_size=4", "data.val_max_images=4", "train.log_every=5"]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def launch(*args, timeout=300):
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lesiondiff.cli", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)


@pytest.mark.slow
def test_two_process_ddp_training_on_cpu_gives_a_normal_run(phantom_manifest, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--preset", "unet", "--device", "cpu", "--manifest", str(phantom_manifest), "--out", str(run), *TINY]
    done = launch("train", *common, "train.steps=10", "train.val_every=5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"status"') == 1  # the main process reports, once
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 10 and summary["status"] == "finished"
    assert Checkpoint(run / "checkpoints" / "last.safetensors").state["step"] == 10
    resumed = launch("train", "--resume", "--device", "cpu", "--out", str(run), "train.steps=15")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["started_at_step"] == 10 and summary["step"] == 15 and summary["processes"] == 2
    assert main(["predict", "--run", str(run), "--manifest", str(phantom_manifest), "--split", "test",
                 "--out", str(tmp_path / "pred")]) == 0
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) > 1
    # a time budget: the ranks measure their own clocks and still stop at the same step (no hang)
    timed = launch("train", *common[:-len(TINY) - 2], "--out", str(tmp_path / "timed"), *TINY,
                   "train.steps=100000", "train.max_minutes=0.05", "train.val_every=20", timeout=240)
    assert timed.returncode == 0, timed.stderr[-2000:]
    assert json.loads((tmp_path / "timed" / "summary.json").read_text())["status"] == "time budget reached"


def wait_for_a_save(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    """Until ``proc`` has written ``path`` (its modification time moves) or has ended."""
    before = path.stat().st_mtime_ns if path.is_file() else None
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if path.is_file() and path.stat().st_mtime_ns != before:
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_at_random_moments_always_resumes_from_an_intact_checkpoint(phantom_manifest, tmp_path):
    run, steps = tmp_path / "run", 400
    cmd = [sys.executable, "-m", "lesiondiff.cli", "train", "--preset", "unet", "--manifest", str(phantom_manifest),
           "--out", str(run), *TINY, f"train.steps={steps}", "train.val_every=7"]
    rng = random.Random(0)
    kills = 0
    for attempt in range(8):
        resume = ["--resume"] if (run / "checkpoints" / "last.safetensors").is_file() else []
        if resume:
            state = Checkpoint(run / "checkpoints" / "last.safetensors").state  # intact: it loads
            assert 0 < state["step"] <= steps
        proc = subprocess.Popen([*cmd[:4], *resume, *cmd[4:]], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if attempt < 4:
            # a random moment after this process has saved once (start-up takes seconds, and a fixed delay let
            # an idle machine finish all steps before the second kill), while it trains and saves on
            wait_for_a_save(proc, run / "checkpoints" / "last.safetensors")
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        assert proc.wait(timeout=600) in (0, -signal.SIGKILL)
        summary = run / "summary.json"
        if summary.is_file() and json.loads(summary.read_text())["status"] == "finished":
            break
    assert kills >= 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == steps
    best = Checkpoint(run / "checkpoints" / "best.safetensors").state
    assert best["step"] == summary["best_step"] and not list((run / "checkpoints").glob(".*tmp*"))
