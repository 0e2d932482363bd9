"""One prediction folder written by several processes: an accelerate launch (two CPU processes over gloo) and
--part I/N commands give the same files as one process, byte for byte (predict.json: all but the process count
and timings); a launch killed mid-run resumes with one process, complete and without duplicates; the folder's
lock still refuses unrelated predicts; and each refusal is one error: line that writes nothing."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import lesiondiff.engine.sharding as sharding
from lesiondiff.cli import main
from lesiondiff.engine.outputs import DONE, JOB, LOCK, OutputLock, done_lines, part_lock_name
from lesiondiff.errors import LesiondiffError
from lesiondiff.io_utils import OWNED, OwnedFolder, append_line, fold_records, side_record, side_records

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
# what may differ between predict.json of one process and of several: the process count and the timings
TIMINGS = ("processes", "sampling_s", "images_per_s", "masks_per_s", "predict_s", "scores_s", "wall_s",
           "wall_images_per_s")


@pytest.fixture(scope="module")
def run(train_tiny_run, tmp_path_factory):
    return train_tiny_run("ensemdiff", tmp_path_factory.mktemp("distributed") / "run", 2, "sample.samples=2")


def predict_args(run, manifest, out, split="test", *extra):
    return ["predict", "--run", str(run), "--manifest", str(manifest), "--split", split, "--out", str(out),
            "--steps", "2", *map(str, extra)]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lesiondiff.cli", *args], env=ENV, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout)


def launch_cmd(n, *args):
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lesiondiff.cli", *args]


def launch(n, *args, timeout=300):
    return subprocess.run(launch_cmd(n, *args), env=ENV, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=timeout)


def visible(folder: Path) -> dict[str, bytes]:
    """The folder's files a user sees (not the hidden records), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def everything(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def same_as_one_process(folder: Path, reference: Path) -> dict:
    """Assert ``folder`` holds the files of the one-process ``reference`` byte for byte, predict.json but for
    the process count and timings; returns the two speed records."""
    ours, theirs = visible(folder), visible(reference)
    assert sorted(ours) == sorted(theirs)
    assert [n for n in ours if n != "predict.json" and ours[n] != theirs[n]] == []
    metas = [json.loads(files["predict.json"]) for files in (ours, theirs)]
    speeds = [m.pop("speed") for m in metas]
    assert metas[0] == metas[1]
    assert {k: v for k, v in speeds[0].items() if k not in (*TIMINGS, "parts", "predicted_now")} == \
        {k: v for k, v in speeds[1].items() if k not in (*TIMINGS, "parts", "predicted_now")}
    assert not side_records(folder / DONE) and not side_records(folder / OWNED)  # folded
    ids = [row["id"] for row in done_lines(folder)]
    assert len(ids) == len(set(ids)) == len(ours["predictions.csv"].decode().splitlines()) - 1  # none twice
    return {"ours": speeds[0], "reference": speeds[1]}


@pytest.mark.slow
def test_a_two_process_launch_writes_the_files_of_one_process(run, phantom_manifest, tmp_path):
    one = cli(*predict_args(run, phantom_manifest, tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = launch(2, *predict_args(run, phantom_manifest, tmp_path / "two"), "--device", "cpu")
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote 6 predictions") == 1 and "with 2 processes" in two.stdout  # rank 0 reports
    speeds = same_as_one_process(tmp_path / "two", tmp_path / "one")
    assert speeds["ours"]["processes"] == 2 and speeds["reference"]["processes"] == 1
    assert speeds["ours"]["predicted_now"] == 6 and speeds["ours"]["wall_s"] > 0
    assert not (tmp_path / "two" / LOCK).exists()
    # evaluate reads the folder as any other
    assert main(["evaluate", "--pred", str(tmp_path / "two"), "--manifest", str(phantom_manifest)]) == 0
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["n_images"] == 6


@pytest.mark.slow
def test_a_launch_into_a_folder_another_predict_writes_is_refused_once(run, phantom_manifest, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with OutputLock(out, "predict"):  # an unrelated predict (this test's process) writes there
        done = launch(2, *predict_args(run, phantom_manifest, out), "--device", "cpu")
    assert done.returncode != 0
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"another lesiondiff process (PID {os.getpid()}" in errors[0]  # rank 0's alone
    assert everything(out) == {}


def rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "lesiondiff.cli" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
def test_a_launch_with_a_killed_process_resumes_with_one_process(run, phantom_manifest, tmp_path):
    out, reference = tmp_path / "killed", tmp_path / "reference"
    ref = cli(*predict_args(run, phantom_manifest, reference, "train"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    launcher = subprocess.Popen(launch_cmd(2, *predict_args(run, phantom_manifest, out, "train"), "--device", "cpu"),
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rank1 = side_record(out / DONE, "rank1")
    try:
        deadline = time.monotonic() + 240
        while launcher.poll() is None and time.monotonic() < deadline:
            if rank1.is_file() and rank1.read_text().count("\n") >= 1:
                pid = rank_pid(launcher, 1)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)  # rank 1 dies mid-run; torchrun stops rank 0
                    break
            time.sleep(0.02)
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    finished = len(done_lines(out))
    assert not (out / "predictions.csv").exists() and 1 <= finished < 28
    again = cli(*predict_args(run, phantom_manifest, out, "train"))  # one process, no launcher
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming: {finished} of 28 images" in again.stdout
    speeds = same_as_one_process(out, reference)
    assert speeds["ours"]["predicted_now"] == 28 - finished and speeds["ours"]["processes"] == 1


def predict(capsys, *argv):
    code = main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_parts_as_separate_commands_then_the_merge(run, phantom_manifest, tmp_path, capsys, monkeypatch):
    reference = tmp_path / "one"
    assert predict(capsys, *predict_args(run, phantom_manifest, reference))[0] == 0

    # parts 1/2 and 2/2, the last to finish merges
    out = tmp_path / "parts"
    code, text, _ = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "1/2")
    assert code == 0 and "part 1/2: wrote 3 predictions" in text and "waiting for part 2/2" in text
    assert not (out / "predictions.csv").exists() and (out / JOB).is_file()
    code, text, _ = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "2/2")
    assert code == 0 and "merged the parts (6 images in predictions.csv)" in text
    speeds = same_as_one_process(out, reference)
    assert speeds["ours"]["processes"] == 2 and sorted(speeds["ours"]["parts"]) == ["1", "2"]
    assert not (out / JOB).exists() and not list(out.glob(".lesiondiff-part-*"))
    code, _, err = predict(capsys, "predict", "--merge", out)  # merged already
    assert code == 2 and err.count("\n") == 1 and "no predict --part job to merge here" in err

    # the other order, and the last part stopped after its images, before it merged: predict --merge does it
    out = tmp_path / "merge"
    assert predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "2/2")[0] == 0

    def killed(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sharding, "_merge", killed)
        assert predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "1/2")[0] == 130
    assert not (out / "predictions.csv").exists() and not (out / LOCK).exists()
    code, text, _ = predict(capsys, "predict", "--merge", out)
    assert code == 0 and "wrote predictions.csv and predict.json of 6 images" in text
    same_as_one_process(out, reference)
    assert main(["evaluate", "--pred", str(out), "--manifest", str(phantom_manifest)]) == 0
    capsys.readouterr()


def test_each_refusal_is_one_error_line_and_writes_nothing(run, phantom_manifest, tmp_path, capsys):
    out = tmp_path / "parts"
    for bad in ("3/2", "0/2", "1/0", "2", "a/b"):  # refused before the run loads
        code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", bad)
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: --part {bad}: "), err
        assert not out.exists()
    assert "there is no part 3 of 2; parts are numbered 1 to 2" in predict(
        capsys, *predict_args(run, phantom_manifest, out), "--part", "3/2")[2]

    assert predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "1/2")[0] == 0
    before = everything(out)
    # a merge with parts missing
    code, _, err = predict(capsys, "predict", "--merge", out)
    assert code == 2 and err.count("\n") == 1
    assert "cannot merge: part 2/2 not finished (3 of 6 images not predicted)" in err and "nothing was written" in err
    assert everything(out) == before
    # a part made with other settings
    code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "2/2", "--threshold", "0.3")
    assert code == 2 and err.count("\n") == 1
    assert "holds predictions made with other settings (sample.threshold 0.5 -> 0.3)" in err
    assert everything(out) == before
    # a part of another split into parts, or over other inputs
    code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out, "val"), "--part", "2/2")
    assert code == 2 and err.count("\n") == 1 and "holds an unmerged predict --part job" in err
    code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "2/3")
    assert code == 2 and "unmerged predict --part job of 2 parts" in err
    assert everything(out) == before
    # --merge takes nothing else
    code, _, err = predict(capsys, "predict", "--merge", out, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "--merge OUT takes the folder alone" in err
    assert everything(out) == before


def hold_part_lock(out: Path, index: int, count: int, pid: int) -> Path:
    lock = out / part_lock_name(index, count)
    lock.write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "command": f"predict --part {index}/{count}"}))
    return lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_admits_the_parts_of_one_job_and_refuses_other_predicts(run, phantom_manifest, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    lock = hold_part_lock(out, 1, 2, os.getpid())  # part 1/2 runs (this test's process stands in for it)
    code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out))  # an unrelated predict
    assert code == 2 and err.count("\n") == 1 and "part 1/2 of a predict --part job" in err
    code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "1/3")
    assert code == 2 and "a split into 2 parts" in err
    code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "1/2")  # the same part twice
    assert code == 2 and f"another lesiondiff process (PID {os.getpid()}" in err
    assert everything(out) == {lock.name: lock.read_bytes()}
    code, text, _ = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "2/2")  # its partner
    assert code == 0 and "waiting for part 1/2" in text
    assert not (out / "predictions.csv").exists()
    lock.unlink()
    code, _, err = predict(capsys, "predict", "--merge", out)
    assert code == 2 and "part 1/2 not finished" in err

    # a part's lock left by a process that is gone is removed with a notice
    hold_part_lock(out, 1, 2, dead_pid())
    code, text, _ = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "1/2")
    assert code == 0 and "removing the lock of part 1/2" in text and "merged the parts" in text
    # while a predict that is not a part writes, a part is refused
    with OutputLock(out, "predict"):
        code, _, err = predict(capsys, *predict_args(run, phantom_manifest, out), "--part", "1/2")
    assert code == 2 and err.count("\n") == 1 and f"another lesiondiff process (PID {os.getpid()}" in err


def test_a_brief_holder_is_waited_for_and_a_long_one_refused(tmp_path):
    held, release = threading.Event(), threading.Event()

    def hold(brief: bool):
        with OutputLock(tmp_path, "predict --merge", brief=brief):
            held.set()
            release.wait(10)

    for brief in (True, False):
        held.clear()
        release.clear()
        holder = threading.Thread(target=hold, args=(brief,))
        holder.start()
        held.wait(10)
        threading.Timer(0.5, release.set).start()
        start = time.monotonic()
        if brief:
            with OutputLock(tmp_path, "predict --part 1/2", wait_s=10):
                assert time.monotonic() - start >= 0.4
        else:
            with pytest.raises(LesiondiffError, match="another lesiondiff process"):
                with OutputLock(tmp_path, "predict --part 1/2", wait_s=10):
                    pass
            assert time.monotonic() - start < 0.4
        holder.join()
    assert not (tmp_path / LOCK).exists()


def test_writers_records_are_read_together_and_folded_into_one(tmp_path):
    done = tmp_path / DONE
    append_line(done, json.dumps({"id": "a"}))
    append_line(side_record(done, "rank1"), json.dumps({"id": "b"}))
    with side_record(done, "rank2").open("a") as f:
        f.write('{"id": "cut by a ki')  # a kill while appending
    append_line(side_record(done, "rank2"), json.dumps({"id": "c"}))  # ends the cut line first
    assert [r["id"] for r in done_lines(tmp_path)] == ["a", "b", "c"]
    (tmp_path / "x.txt").write_text("x")
    OwnedFolder(tmp_path, writer="part2of2").record("x.txt")
    assert OwnedFolder(tmp_path).owns("x.txt") and not (tmp_path / OWNED).exists()
    for record in (done, tmp_path / OWNED):
        fold_records(record)
    assert not side_records(done) and not side_records(tmp_path / OWNED)
    assert [r["id"] for r in done_lines(tmp_path)] == ["a", "b", "c"] and OwnedFolder(tmp_path).owns("x.txt")
    with pytest.raises(LesiondiffError):
        side_record(done, "../x")
