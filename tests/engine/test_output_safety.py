"""Nothing of the user's is ever overwritten: ids that would write outside --out, a folder predicted into itself,
two trainings into one run folder, damaged files on resume, folders that accumulate splits, and folder inputs
whose names only look like masks. Each data-loss case checks a victim file's bytes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lesiondiff.cli import main
from lesiondiff.data.layouts import known_masks
from lesiondiff.engine.outputs import DONE, LOCK, RECORD
from lesiondiff.errors import LesiondiffError
from lesiondiff.io_utils import OWNED, OwnedFolder, inside

VICTIM = b"the user's own file: never to be replaced\n"


@pytest.fixture(scope="module")
def run(train_tiny_run, tmp_path_factory):
    return train_tiny_run("ensemdiff", tmp_path_factory.mktemp("safety") / "run", 2, "sample.samples=2")


def predict(capsys, run, out, *extra):
    code = main(["predict", "--run", str(run), "--out", str(out), "--steps", "2", *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image(path, value=80, size=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size), value, np.uint8)
    arr[4:12, 6:14] = 200
    Image.fromarray(arr).save(path)
    return path


def test_manifest_ids_that_would_escape_the_output_folder_are_refused(run, tmp_path, capsys):
    victim = tmp_path / "victim" / "case_mask.png"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM)
    img = image(tmp_path / "data" / "case.png")
    out = tmp_path / "out" / "x"
    for bad in ("../../victim/case", str(tmp_path / "victim" / "case"), "a\\..\\case", ".."):
        manifest = tmp_path / "m.csv"
        manifest.write_text("id,image,masks,label,case,dataset,split,fold\n"
                            f"ok,{img},,,ok,,test,-1\n\"{bad}\",{img},,,c,,test,-1\n")
        code, _, err = predict(capsys, run, out, "--manifest", manifest, "--split", "test")
        assert code == 2 and err.count("\n") == 1, err
        assert f"{manifest}: line 3: id {bad!r} cannot be a file name" in err
        assert victim.read_bytes() == VICTIM
        assert not out.exists()  # refused before anything was made


def test_inside_refuses_names_and_links_that_leave_the_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    assert inside(folder, "a_mask.png") == folder / "a_mask.png"
    assert inside(folder, "figures/x.png") == folder / "figures" / "x.png"
    for bad in ("../x.png", "/etc/passwd", "a/../../x", "x\0.png", "", "figures/../.."):
        with pytest.raises(LesiondiffError, match="not a safe output name"):
            inside(folder, bad)
    (folder / "link").symlink_to(tmp_path)
    with pytest.raises(LesiondiffError, match="lies outside the output folder"):
        inside(folder, "link/x.png")


def busi_class_folder(root):
    """A BUSI class folder: images with their ground-truth masks beside them (one with two masks)."""
    folder = root / "benign"
    for n in (1, 2, 3):
        image(folder / f"benign ({n}).png", 60 + n)
        (folder / f"benign ({n})_mask.png").write_bytes(VICTIM + bytes([n]))
    (folder / "benign (3)_mask_1.png").write_bytes(VICTIM)
    return folder


def test_predicting_a_busi_folder_into_itself_never_replaces_its_masks(run, tmp_path, capsys):
    folder = busi_class_folder(tmp_path / "busi")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, _, err = predict(capsys, run, folder, folder)
    assert code == 2 and err.count("\n") == 1
    assert "benign (1)_mask.png" in err and "which lesiondiff did not write" in err and "nothing was written" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no file added, none changed
    code, out, _ = predict(capsys, run, folder / "predictions", folder)
    assert code == 0
    assert "3 images; skipped 4 masks beside their image" in out  # the masks are listed, not predicted
    assert sorted(p.name for p in (folder / "predictions").glob("*_mask.png")) == [
        f"benign ({n})_mask.png" for n in (1, 2, 3)]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_files_of_the_output_names_that_lesiondiff_did_not_write_are_refused(run, tmp_path, capsys):
    img = image(tmp_path / "in" / "scan.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_bytes(VICTIM)
    code, _, err = predict(capsys, run, out, img)
    assert code == 2 and "would replace predictions.csv" in err
    assert (out / "predictions.csv").read_bytes() == VICTIM and sorted(os.listdir(out)) == ["predictions.csv"]


def test_evaluate_and_report_never_replace_a_users_file(run, phantom_manifest, tmp_path, capsys):
    pred = tmp_path / "pred"
    assert predict(capsys, run, pred, "--manifest", phantom_manifest, "--split", "test")[0] == 0
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_bytes(VICTIM)
    code = main(["evaluate", "--pred", str(pred), "--manifest", str(phantom_manifest), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "would replace summary.json" in err
    assert (out / "summary.json").read_bytes() == VICTIM and not (out / "metrics.csv").exists()
    assert main(["evaluate", "--pred", str(pred), "--manifest", str(phantom_manifest)]) == 0
    assert main(["evaluate", "--pred", str(pred), "--manifest", str(phantom_manifest)]) == 0  # its own: replaced
    (out / "report.html").write_bytes(VICTIM)
    code = main(["report", "--run", str(run), "--pred", str(pred), "--manifest", str(phantom_manifest), "--out",
                 str(out)])
    assert code == 2 and (out / "report.html").read_bytes() == VICTIM
    assert not (out / "figures").exists()
    capsys.readouterr()


TRAIN = [sys.executable, "-m", "lesiondiff.cli", "train", "--preset", "ensemdiff", "--device", "cpu"]


def test_two_trainings_into_one_folder_the_second_is_refused(phantom_manifest, tmp_path):
    from tiny_settings import TINY_MODEL

    out = tmp_path / "run"
    common = ["--manifest", str(phantom_manifest), "--out", str(out), *TINY_MODEL, "data.size=32",
              "data.val_max_images=2", "train.val_every=1000", "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*TRAIN, *common, "train.steps=100000", "model.base_channels=8"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.csv").is_file() and time.monotonic() < deadline:  # training has begun
            time.sleep(0.2)
        assert (out / LOCK).is_file()
        second = subprocess.run([*TRAIN, *common, "train.steps=5", "model.base_channels=16"], env=env,
                                capture_output=True, text=True, encoding="utf-8", timeout=300)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"another lesiondiff process (PID {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # a clean stop: saves last.safetensors
        first.wait(timeout=120)
    assert "base_channels: 8" in (out / "config.yaml").read_text()  # the first run's, untouched
    steps = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows
    assert not (out / LOCK).exists()
    assert main(["train", "--out", str(out), "--resume", "train.steps=" + str(steps[-1] + 1)]) == 0  # loadable


def test_a_damaged_file_is_predicted_again_on_resume(run, phantom_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((phantom_dir / "images").iterdir())[:6]:
        shutil.copy(src, images / src.name)
    out = tmp_path / "pred"
    assert predict(capsys, run, out, images)[0] == 0
    first = sorted(out.glob("*_probs.npz"))[0]
    good = first.read_bytes()
    first.write_bytes(b"")
    code, text, _ = predict(capsys, run, out, images)
    assert code == 0 and "resuming: 5 of 6 images" in text and "1 finished predictions have a damaged" in text
    assert first.read_bytes() == good  # predicted again, identically (the seed is the image's)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF  # same size: only --verify sees it
    first.write_bytes(bytes(flipped))
    assert "resuming: 6 of 6" in predict(capsys, run, out, images)[1]
    code, text, _ = predict(capsys, run, out, images, "--verify")
    assert code == 0 and "resuming: 5 of 6" in text and first.read_bytes() == good


def test_a_second_split_is_added_and_evaluate_finds_both(run, phantom_manifest, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict(capsys, run, out, "--manifest", phantom_manifest, "--split", "test")[0] == 0
    assert predict(capsys, run, out, "--manifest", phantom_manifest, "--split", "val")[0] == 0
    from lesiondiff.data.manifest import Manifest

    m = Manifest.read(phantom_manifest)
    test_ids, val_ids = [r["id"] for r in m.select("test")], [r["id"] for r in m.select("val")]
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == test_ids + val_ids
    record = json.loads((out / RECORD).read_text())
    assert list(record["inputs"]) == test_ids + val_ids and record["splits"] == ["test", "val"]
    meta = json.loads((out / "predict.json").read_text())
    assert meta["split"] == "val" and meta["splits"] == ["test", "val"] and meta["speed"]["images"] == len(rows)
    for split, ids in (("test", test_ids), ("val", val_ids)):
        assert main(["evaluate", "--pred", str(out), "--manifest", str(phantom_manifest), "--split", split]) == 0
        assert json.loads((out / "summary.json").read_text())["n_images"] == len(ids)
    capsys.readouterr()


def test_overwrite_removes_every_prediction_even_of_ids_a_later_run_dropped(run, phantom_dir, tmp_path, capsys):
    images = sorted((phantom_dir / "images").iterdir())[:3]
    out = tmp_path / "pred"
    assert predict(capsys, run, out, *images)[0] == 0
    assert predict(capsys, run, out, images[0])[0] == 0  # fewer inputs, same settings: the others stay listed
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 3
    (out / "notes.txt").write_bytes(VICTIM)
    assert predict(capsys, run, out, images[0], "--seed", "5", "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("*_mask.png")) == [images[0].stem + "_mask.png"]
    assert (out / "notes.txt").read_bytes() == VICTIM  # not lesiondiff's: kept
    assert len((out / DONE).read_text().splitlines()) == 1


def test_an_id_predicted_before_from_another_file_is_refused(run, tmp_path, capsys):
    a, b = image(tmp_path / "a" / "case.png", 50), image(tmp_path / "b" / "case.png", 90)
    out = tmp_path / "pred"
    assert predict(capsys, run, out, a)[0] == 0
    code, _, err = predict(capsys, run, out, b)
    assert code == 2 and f"'case' was predicted here from {a}, not {b}" in err
    assert predict(capsys, run, out, b, "--overwrite")[0] == 0
    assert json.loads((out / RECORD).read_text())["inputs"] == {"case": str(b)}


def test_folder_inputs_skip_only_known_masks_and_list_what_they_skip(run, tmp_path, capsys):
    folder = tmp_path / "scans"
    image(folder / "scan_mask.png")  # a real image whose name only looks like a mask
    image(folder / "liver.png")
    image(folder / "liver_mask.png")  # the mask of liver.png
    image(folder / "kvasir" / "Kvasir-SEG" / "images" / "p1.jpg".replace(".jpg", ".png"))
    image(folder / "kvasir" / "Kvasir-SEG" / "masks" / "p1.png")
    masks = known_masks(folder)
    assert {p.name for p in masks} == {"liver_mask.png", "p1.png"}
    assert masks[(folder / "kvasir" / "Kvasir-SEG" / "masks" / "p1.png").resolve()] == "kvasir masks"
    code, text, _ = predict(capsys, run, tmp_path / "out", folder)
    assert code == 0
    assert "3 images; skipped 1 kvasir masks (p1.png); 1 masks beside their image" in text
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == [
        "liver_mask.png", "p1_mask.png", "scan_mask_mask.png"]


def test_owned_folder_lists_what_it_wrote_and_refuses_the_rest(tmp_path):
    folder = OwnedFolder(tmp_path)
    folder.write_text("a.txt", "mine")
    assert folder.intact("a.txt") and OwnedFolder(tmp_path).intact("a.txt", verify=True)
    (tmp_path / "a.txt").write_text("damaged")
    assert OwnedFolder(tmp_path).owns("a.txt") and not OwnedFolder(tmp_path).intact("a.txt")
    OwnedFolder(tmp_path).write_text("a.txt", "again")  # lesiondiff's own file, damaged: written again
    (tmp_path / "b.txt").write_bytes(VICTIM)
    with pytest.raises(LesiondiffError, match="would replace b.txt, which lesiondiff did not write"):
        OwnedFolder(tmp_path).write_text("b.txt", "x")
    OwnedFolder(tmp_path).remove(["a.txt", "b.txt"])
    assert not (tmp_path / "a.txt").exists() and (tmp_path / "b.txt").read_bytes() == VICTIM
    (tmp_path / OWNED).write_text((tmp_path / OWNED).read_text() + '{"name": "cut')  # a kill mid-line
    assert OwnedFolder(tmp_path).files == {}


def test_a_kill_between_a_files_rename_and_its_line_leaves_it_lesiondiffs(tmp_path, monkeypatch):
    def killed(self, name, sha=True):
        raise KeyboardInterrupt  # stands for SIGKILL after the rename, before the full line is appended

    monkeypatch.setattr(OwnedFolder, "record", killed)
    with pytest.raises(KeyboardInterrupt):
        OwnedFolder(tmp_path).write_bytes("p_probs.npz", b"half a run")
    monkeypatch.undo()
    assert (tmp_path / "p_probs.npz").read_bytes() == b"half a run"
    again = OwnedFolder(tmp_path)
    assert again.owns("p_probs.npz") and not again.intact("p_probs.npz")  # lesiondiff's, so written again
    again.write_bytes("p_probs.npz", b"whole")
    assert OwnedFolder(tmp_path).intact("p_probs.npz", verify=True)
    lines = [json.loads(x) for x in (tmp_path / OWNED).read_text().splitlines()]
    assert lines == [{"name": "p_probs.npz"}, {"name": "p_probs.npz", "bytes": 5, "sha256": lines[1]["sha256"]}]
    (tmp_path / "user.txt").write_bytes(VICTIM)  # the intent covers only the names lesiondiff writes
    with pytest.raises(LesiondiffError, match="would replace user.txt"):
        again.write_text("user.txt", "x")
    assert (tmp_path / "user.txt").read_bytes() == VICTIM


def test_a_write_that_fails_before_its_file_is_in_place_leaves_the_name_to_the_user(tmp_path):
    def full_disk(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    folder = OwnedFolder(tmp_path)
    with pytest.raises(OSError, match="No space"):
        folder.write("p_probs.npz", full_disk)
    with pytest.raises(RuntimeError), folder.writing(["p_overlay.png", "p_mask.png"]) as paths:
        paths["p_mask.png"].write_bytes(b"one of two")  # the block stops before the overlay is written
        raise RuntimeError("figure failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [OWNED, "p_mask.png"]  # no temporary file is left
    lines = [json.loads(x) for x in (tmp_path / OWNED).read_text().splitlines()]
    kinds = [(e["name"], "withdrawn" if e.get("withdrawn") else "written" if "bytes" in e else "intent")
             for e in lines]
    assert kinds == [("p_probs.npz", "intent"), ("p_probs.npz", "withdrawn"), ("p_overlay.png", "intent"),
                     ("p_mask.png", "intent"), ("p_mask.png", "written"), ("p_overlay.png", "withdrawn")]
    again = OwnedFolder(tmp_path)
    assert set(again.files) == {"p_mask.png"} and again.intact("p_mask.png", verify=True)
    for name in ("p_probs.npz", "p_overlay.png"):  # the user's file of a withdrawn name is refused
        (tmp_path / name).write_bytes(VICTIM)
        with pytest.raises(LesiondiffError, match=f"would replace {name}"):
            again.write_text(name, "x")
        assert (tmp_path / name).read_bytes() == VICTIM


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver", "dpmsolver++", "unipc"])
def test_more_steps_than_the_run_was_trained_with_is_one_line_before_anything_loads(run, tmp_path, capsys, sampler):
    img = image(tmp_path / "in" / "scan.png")
    code, _, err = predict(capsys, run, tmp_path / "out", img, "--sampler", sampler, "--steps", "1001")
    assert code == 2 and err.count("\n") == 1
    assert "--steps 1001: the run was trained with 1000 timesteps" in err and "at most 1000 sampling steps" in err
    assert not (tmp_path / "out").exists()
