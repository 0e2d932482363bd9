"""The memory check of predict: one image's S samples at the network size against this machine's memory."""

import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lesiondiff.cli import main
from lesiondiff.config import Config
from lesiondiff.engine import memory
from lesiondiff.engine.memory import check_prediction_memory, prediction_bytes
from lesiondiff.engine.predict import Prediction, Predictor
from lesiondiff.errors import LesiondiffError
from lesiondiff.fusion import fuse
from tiny_settings import file_writer

GIB = 2**30


def test_the_estimate_is_s_times_size_squared_times_the_copies():
    assert prediction_bytes(1000, 2048) == 1000 * 2048 * 2048 * 23 == 96_468_992_000  # 89.8 GiB
    assert prediction_bytes(1000, 2048, "masks") == 1000 * 2048 * 2048 * 27
    assert prediction_bytes(5, 128) == 5 * 128 * 128 * 23 == 1_884_160


def test_too_many_samples_for_this_machine_are_refused_with_the_numbers():
    cfg = Config().override(["sample.samples=1000", "data.size=2048"])
    # 24 GiB // (2048 * 2048 * 23 bytes per sample) = 267 samples fit
    with pytest.raises(LesiondiffError, match=r"^--samples 1000 at 2048 px needs about 90 GiB of memory per image "
                       r"\(1000 x 2048 x 2048 probabilities and their working copies, 23 bytes each\); this "
                       r"machine has 24 GiB: give --samples 267 or fewer$"):
        check_prediction_memory(cfg, available=24 * GIB)
    check_prediction_memory(cfg.override(["sample.samples=267"]), available=24 * GIB)
    check_prediction_memory(Config())  # the defaults (5 samples at 128 px) fit any machine


@pytest.mark.parametrize("maps", ["probabilities", "masks"])
def test_the_estimate_does_not_overcount_what_predict_holds(maps):
    """The refusal must be honest: the numpy arrays the Predictor holds for one image (measured by tracemalloc)
    reach the estimate. If this fails after a change to Predictor.write, update BYTES_PER_SAMPLE_PIXEL."""
    s, n = 16, 128
    writer = file_writer(maps=maps)
    sampled = np.random.default_rng(0).random((s, n, n), dtype=np.float32)
    tracemalloc.start()
    try:
        probs = np.repeat(sampled, 1, axis=0)  # Predictor.sample's copy of the sampler's output
        fused = fuse(probs, "mean")
        with tempfile.TemporaryDirectory() as folder:
            Predictor.write(writer, Prediction("x", probs, fused, (n, n), np.zeros((n, n, 1), np.float32)),
                            Path(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= 0.95 * prediction_bytes(s, n, maps)


def test_predict_refuses_before_any_weights_load(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"  # a config and no checkpoint: reaching the weights would be another error
    run.mkdir()
    Config().override(["data.size=2048"]).save(run / "config.yaml")
    (tmp_path / "img.png").write_bytes(b"")
    monkeypatch.setattr(memory, "physical_memory", lambda: 24 * GIB)
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "o"), "--samples", "1000",
                 str(tmp_path / "img.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --samples 1000 at 2048 px needs about 90 GiB") and err.count("\n") == 1
    assert "this machine has 24 GiB" in err and not (tmp_path / "o").exists()
