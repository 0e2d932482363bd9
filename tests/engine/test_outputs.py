"""Output folders hold one run's predictions: a lock against concurrent writers, a settings record that refuses
mixing, resume of an interrupted predict, and inputs that never include predict's own outputs."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from lesiondiff.cli import main
from lesiondiff.engine.outputs import DONE, LOCK, RECORD, OutputLock
from lesiondiff.engine.predict import Predictor
from lesiondiff.errors import LesiondiffError


@pytest.fixture(scope="module")
def run(train_tiny_run, tmp_path_factory):
    return train_tiny_run("ensemdiff", tmp_path_factory.mktemp("outputs") / "run", 2, "sample.samples=2")


@pytest.fixture
def images(phantom_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for src in sorted((phantom_dir / "images").iterdir())[:4]:
        shutil.copy(src, folder / src.name)
    return folder


def predict(capsys, run, out, *extra, inputs=()):
    code = main(["predict", "--run", str(run), *map(str, inputs), "--out", str(out), "--steps", "2", *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_second_predict_with_other_settings_is_refused_unless_overwrite(run, images, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict(capsys, run, out, inputs=[images])[0] == 0
    first = (out / "predictions.csv").read_text()
    code, _, err = predict(capsys, run, out, "--threshold", "0.3", inputs=[images])
    assert code == 2 and err.count("\n") == 1
    assert "holds predictions made with other settings (sample.threshold 0.5 -> 0.3)" in err
    assert (out / "predictions.csv").read_text() == first  # nothing touched
    assert json.loads((out / "predict.json").read_text())["threshold"] == 0.5
    code, out_text, _ = predict(capsys, run, out, "--threshold", "0.3", "--overwrite", inputs=[images])
    assert code == 0 and "removed the predictions made with other settings (sample.threshold" in out_text
    assert json.loads((out / "predict.json").read_text())["threshold"] == 0.3
    assert json.loads((out / RECORD).read_text())["settings"]["sample.threshold"] == 0.3


def test_fewer_inputs_after_overwrite_leave_no_stale_files(run, images, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict(capsys, run, out, inputs=[images])[0] == 0
    one = sorted(images.iterdir())[0]
    assert predict(capsys, run, out, "--seed", "3", "--overwrite", inputs=[one])[0] == 0
    assert sorted(p.name for p in out.glob("*_mask.png")) == [one.stem + "_mask.png"]


def test_an_interrupted_predict_resumes_and_skips_finished_images(run, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pred"
    calls = []
    real = Predictor.predict

    def interrupt_after_two(self, id_, path):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(id_)
        return real(self, id_, path)

    monkeypatch.setattr(Predictor, "predict", interrupt_after_two)
    code, _, err = predict(capsys, run, out, inputs=[images])
    assert code == 130 and not (out / "predictions.csv").exists() and not (out / LOCK).exists()
    assert len((out / DONE).read_text().splitlines()) == 2
    with (out / DONE).open("a") as f:
        f.write('{"id": "cut by a ki')  # a line cut by a kill is ignored
    done_first = list(calls)
    calls.clear()
    monkeypatch.setattr(Predictor, "predict", lambda self, id_, path: calls.append(id_) or real(self, id_, path))
    code, text, _ = predict(capsys, run, out, inputs=[images])
    assert code == 0 and "resuming: 2 of 4 images" in text
    assert sorted(calls) == sorted({p.stem for p in images.iterdir()} - set(done_first))
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    meta = json.loads((out / "predict.json").read_text())
    assert meta["speed"]["images"] == 4 and meta["speed"]["sampling_s"] > 0


def test_predict_into_its_input_folder_twice_never_takes_its_outputs_as_inputs(run, images, capsys):
    for _ in range(2):
        assert predict(capsys, run, images, inputs=[images])[0] == 0
    names = sorted(p.name for p in images.iterdir())
    assert len([n for n in names if n.endswith("_mask.png")]) == 4
    assert not any("_mask_mask" in n or "_overlay_" in n or "_maps_" in n for n in names)
    assert len((images / "predictions.csv").read_text().splitlines()) == 1 + 4


HOLDER = """
import sys, time
from pathlib import Path
from lesiondiff.engine.outputs import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_concurrent_writer_is_refused_and_a_dead_ones_lock_is_taken_over(run, images, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = predict(capsys, run, out, inputs=[images])
        assert code == 2 and err.count("\n") == 1
        assert f"another lesiondiff process (PID {holder.pid}" in err
        assert not (out / "predictions.csv").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / LOCK).exists()  # a killed holder leaves its lock behind
    code, text, _ = predict(capsys, run, out, inputs=[images])
    assert code == 0 and f"taking over the lock of PID {holder.pid}, which is no longer running" in text
    assert not (out / LOCK).exists() and len((out / "predictions.csv").read_text().splitlines()) == 5


def test_two_predicts_started_together_never_mix_their_outputs(run, images, tmp_path):
    """Two processes, other seeds, one folder: one writes, the other is refused (the lock or the record)."""
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "lesiondiff.cli", "predict", "--run", str(run), str(images), "--out", str(out),
           "--steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*cmd, "--seed", str(seed)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace") for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another lesiondiff process" in refused or "other settings" in refused
    seed = json.loads((out / "predict.json").read_text())["seed"]
    assert json.loads((out / RECORD).read_text())["settings"]["sample.seed"] == seed
    assert len((out / "predictions.csv").read_text().splitlines()) == 5


def test_lock_is_released_on_error_and_unreadable_lock_counts_as_stale(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputLock(tmp_path):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK).exists()
    (tmp_path / LOCK).write_text("{trunc")
    notes = []
    with OutputLock(tmp_path, log=notes.append):
        pass
    assert notes and "taking over" in notes[0]
    with OutputLock(tmp_path):
        with pytest.raises(LesiondiffError, match=f"PID {os.getpid()}"):
            with OutputLock(tmp_path):
                pass
