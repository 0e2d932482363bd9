"""The command line as a user meets it: one-line errors naming the file, non-zero exits, no tracebacks."""

import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from lesiondiff.cli import main
from tiny_settings import TINY_MODEL


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert str(needle) in err


def generic_folder(root, n=4, size=32):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = (np.random.default_rng(i).random((size, size)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"case{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[8:20, 8:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


def test_index_generic_folder_writes_manifest(tmp_path, capsys):
    root = generic_folder(tmp_path / "d", n=10)
    code, out, _ = run(capsys, "data", "index", root, "-o", tmp_path / "m.csv", "--seed", "1")
    assert code == 0 and (tmp_path / "m.csv").is_file()
    assert "generic" in out and "seed 1" in out


def test_corrupt_image_stops_or_is_skipped(tmp_path, capsys):
    root = generic_folder(tmp_path / "d", n=6)
    bad = root / "images" / "case2.png"
    bad.write_bytes(bad.read_bytes()[:40])
    code, _, err = run(capsys, "data", "index", root, "-o", tmp_path / "m.csv")
    assert_one_line_error(code, err, bad)
    code, out, _ = run(capsys, "data", "index", root, "-o", tmp_path / "m.csv", "--skip-bad")
    assert code == 0 and "case2" in out


def test_mask_size_mismatch_names_the_mask(tmp_path, capsys):
    root = generic_folder(tmp_path / "d", n=4)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "case1.png")
    code, _, err = run(capsys, "data", "index", root, "-o", tmp_path / "m.csv")
    assert_one_line_error(code, err, root / "masks" / "case1.png")


def test_empty_and_unrecognised_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "data", "index", tmp_path / "empty", "-o", tmp_path / "m.csv")
    assert_one_line_error(code, err, tmp_path / "empty", "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("hello")
    code, _, err = run(capsys, "data", "index", tmp_path / "odd", "-o", tmp_path / "m.csv")
    assert_one_line_error(code, err, tmp_path / "odd", "unrecognised layout")


def test_missing_checkpoint_and_run(tmp_path, capsys):
    code, _, err = run(capsys, "predict", "--run", tmp_path / "nope", tmp_path, "--out", tmp_path / "p")
    assert_one_line_error(code, err, tmp_path / "nope")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(__file__, run_dir / "unused.txt")
    from lesiondiff.presets import load_preset

    load_preset("ensemdiff").save(run_dir / "config.yaml")
    code, _, err = run(capsys, "predict", "--run", run_dir, tmp_path, "--out", tmp_path / "p")
    assert_one_line_error(code, err, "last.safetensors", "checkpoint not found")


def test_unknown_config_key(tmp_path, capsys):
    root = generic_folder(tmp_path / "d", n=6)
    run(capsys, "data", "index", root, "-o", tmp_path / "m.csv")
    code, _, err = run(capsys, "train", "--preset", "ensemdiff", "--manifest", tmp_path / "m.csv", "--out",
                       tmp_path / "r", "train.stepz=3")
    assert_one_line_error(code, err, "train.stepz")
    code, _, err = run(capsys, "train", "--preset", "nope", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "unknown preset 'nope'")


def test_missing_manifest_and_resume_without_run(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--preset", "ensemdiff", "--manifest", tmp_path / "none.csv", "--out",
                       tmp_path / "r")
    assert_one_line_error(code, err, tmp_path / "none.csv")
    code, _, err = run(capsys, "train", "--out", tmp_path / "r", "--resume")
    assert_one_line_error(code, err, tmp_path / "r")


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    code, out, _ = run(capsys, "demo", "--out", tmp_path / "demo", "--n", "40", "--minutes", "0.1", "--size", "32",
                       *TINY_MODEL,
                       "sample.steps=2", "sample.samples=2", "train.val_every=5")
    assert code == 0
    assert (tmp_path / "demo/report.html").is_file() and (tmp_path / "demo/figures/examples.png").is_file()
    html = (tmp_path / "demo/report.html").read_text(encoding="utf-8")
    assert "threshold 0.5" in html and "mean +- population std" in html
    assert "fused Dice" in out


def _split_of(path):
    from lesiondiff.data.manifest import Manifest

    return {r["id"]: r for r in Manifest.read(path).rows()}


def test_index_train_only_keeps_the_other_splits(phantom_dir, tmp_path, capsys):
    code, _, _ = run(capsys, "data", "index", phantom_dir, "-o", tmp_path / "plain.csv", "--no-check")
    assert code == 0
    code, out, _ = run(capsys, "data", "index", phantom_dir, "-o", tmp_path / "m.csv", "--no-check",
                       "--train-only", "normal")
    assert code == 0 and "normal in train only" in out
    plain, rows = _split_of(tmp_path / "plain.csv"), _split_of(tmp_path / "m.csv")
    normal = [r for r in rows.values() if r["label"] == "normal"]
    assert normal and all(r["split"] == "train" for r in normal)
    assert any(plain[r["id"]]["split"] != "train" for r in normal)
    assert all(r["split"] == plain[i]["split"] for i, r in rows.items() if r["label"] != "normal")
    code, _, err = run(capsys, "data", "index", phantom_dir, "-o", tmp_path / "x.csv", "--train-only", "Normal")
    assert_one_line_error(code, err, "'Normal'")


def test_difficulty_writes_columns(phantom_dir, tmp_path, capsys):
    path = tmp_path / "m.csv"
    assert run(capsys, "data", "index", phantom_dir, "-o", path, "--no-check")[0] == 0
    before = path.read_text(encoding="utf-8")
    code, out, _ = run(capsys, "data", "difficulty", "--manifest", path, "--out", tmp_path / "d.csv", "--size", 64)
    assert code == 0 and path.read_text(encoding="utf-8") == before  # --out leaves the input alone
    assert "protocol: split train" in out and f"wrote {tmp_path / 'd.csv'}" in out
    header = (tmp_path / "d.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {"difficulty_area", "difficulty_contrast", "difficulty_complexity", "difficulty_boundary_ratio",
            "difficulty_disagreement", "difficulty_score", "difficulty_group"} <= set(header)
    rows = _split_of(tmp_path / "d.csv")
    assert all(r["difficulty_group"] in "0123" for r in rows.values() if r["split"] == "train")
    assert all("difficulty_group" not in r for r in rows.values() if r["split"] != "train")
    # Without --out the manifest is rewritten in place.
    code, out, _ = run(capsys, "data", "difficulty", "--manifest", path, "--size", 64, "--split", "all",
                       "--weights", "disagreement=0")
    assert code == 0 and "disagreement 0" in out
    assert all("difficulty_group" in r for r in _split_of(path).values())


def test_difficulty_errors_name_the_problem(phantom_dir, tmp_path, capsys):
    path = tmp_path / "m.csv"
    run(capsys, "data", "index", phantom_dir, "-o", path, "--no-check", "--ratios", 1, 0, 0)
    code, _, err = run(capsys, "data", "difficulty", "--manifest", path, "--split", "test")
    assert_one_line_error(code, err, path, "no rows in split 'test'")
    code, _, err = run(capsys, "data", "difficulty", "--manifest", path, "--weights", "size=1")
    assert_one_line_error(code, err, "unknown difficulty score 'size'")
    code, _, err = run(capsys, "data", "difficulty", "--manifest", path, "--weights", "area")
    assert_one_line_error(code, err, "NAME=NUMBER")
    code, _, err = run(capsys, "data", "difficulty", "--manifest", tmp_path / "none.csv")
    assert_one_line_error(code, err, tmp_path / "none.csv")


def test_index_several_folders_into_one_manifest(phantom_dir, tmp_path, capsys):
    other = generic_folder(tmp_path / "lesions", n=12)  # ids case0..case11; phantom ids phantom_0000..
    shutil.copy(other / "images" / "case0.png", other / "images" / "phantom_0000.png")  # an id in both folders
    shutil.copy(other / "masks" / "case0.png", other / "masks" / "phantom_0000.png")
    code, out, _ = run(capsys, "data", "index", phantom_dir, other, "-o", tmp_path / "u.csv", "--folds", "2",
                       "--seed", "3", "--train-only", "normal")
    assert code == 0
    rows = _split_of(tmp_path / "u.csv")
    name = phantom_dir.name
    assert len(rows) == 40 + 13 and {r["dataset"] for r in rows.values()} == {name, "lesions"}
    assert f"{name}_phantom_0000" in rows and "lesions_phantom_0000" in rows  # prefixed, so unique
    assert all(i.startswith(f"{r['dataset']}_") and r["case"].startswith(f"{r['dataset']}_") for i, r in rows.items())
    for dataset in (name, "lesions"):
        mine = [r for r in rows.values() if r["dataset"] == dataset]
        assert {r["split"] for r in mine} == {"train", "val", "test"}
        assert {r["fold"] for r in mine if r["split"] != "test" and r["label"] != "normal"} == {0, 1}
    assert all(r["split"] == "train" and r["fold"] == -1 for r in rows.values() if r["label"] == "normal")
    assert "dataset lesions: 13 (no labels; split train " in out and "stratified by dataset and label" in out
    assert f"dataset {name}: 40 records, layout generic, from {phantom_dir}" in out

    # one folder alone: ids, cases and splits exactly as before several folders were possible
    code, out, _ = run(capsys, "data", "index", phantom_dir, "-o", tmp_path / "one.csv", "--seed", "3")
    from lesiondiff.data.layouts import index_folder
    from lesiondiff.data.splits import assign_splits

    expected = {r["id"]: r["split"] for r in assign_splits(index_folder(phantom_dir).records, seed=3)}
    assert {i: r["split"] for i, r in _split_of(tmp_path / "one.csv").items()} == expected
    assert "stratified by label," in out and "dataset " not in out.replace("datasets:", "")

    code, _, err = run(capsys, "data", "index", phantom_dir, phantom_dir, "-o", tmp_path / "x.csv")
    assert_one_line_error(code, err, "given twice")


@pytest.mark.parametrize("argv, message", [
    (["predict", "--run", "r", "--out", "o", "--steps", "-3"], "error: --steps must be >= 1, got -3"),
    (["predict", "--run", "r", "--out", "o", "--steps", "0"], "error: --steps must be >= 1, got 0"),
    (["predict", "--run", "r", "--out", "o", "--samples", "0"], "error: --samples must be in [1, 1024], got 0"),
    (["predict", "--run", "r", "--out", "o", "--samples", "-2"], "error: --samples must be in [1, 1024], got -2"),
    (["predict", "--run", "r", "--out", "o", "--samples", "100000"],
     "error: --samples must be in [1, 1024], got 100000"),
    (["compare", "--presets", "unet", "--manifest", "m", "--budget-minutes", "1", "--out", "o", "--size", "16384"],
     "error: --size must be in [8, 2048], got 16384"),
    (["predict", "--run", "r", "--out", "o", "--threshold", "7"], "error: --threshold must be in (0, 1), got 7"),
    (["predict", "--run", "r", "--out", "o", "--fusion", "foo"], "error: --fusion 'foo': unknown; known: "),
    (["predict", "--run", "r", "--out", "o", "--sampler", "foo"], "error: --sampler 'foo': unknown; known: "),
    (["compare", "--presets", "unet", "--manifest", "m", "--budget-minutes", "0", "--out", "o"],
     "error: --budget-minutes must be > 0, got 0"),
    (["data", "synth", "--n", "0", "--out", "o"], "error: --n must be >= 1, got 0"),
    (["predict", "--run", "r", "--out", "o", "--device", "cuda:99"], "error: --device cuda:99: this machine has"),
    (["train", "--preset", "unet", "--out", "o", "--device", "mps"], "error: --device mps: MPS (Apple GPU) is not"),
    (["train", "--preset", "unet", "--out", "o", "--device", "tpu"], "error: --device 'tpu': expected cpu, cuda,"),
])
def test_bad_numbers_and_names_are_refused_before_anything_loads(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run "r" does not exist: the option is checked first
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_train_with_bad_values_or_size_writes_nothing(phantom_manifest, tmp_path, capsys):
    for override, message in (("train.steps=-5", "train.steps must be >= 1, got -5"),
                              ("train.steps=0", "train.steps must be >= 1, got 0"),
                              ("data.size=7", "data.size must be in [8, 2048], got 7"),
                              ("data.size=16384", "data.size must be in [8, 2048], got 16384"),
                              ("data.size=36", "data.size 36: model 'unet' needs a multiple of 8")):
        assert main(["train", "--preset", "unet", "--manifest", str(phantom_manifest), "--out",
                     str(tmp_path / "run"), override]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
        assert not (tmp_path / "run").exists()


def test_index_refuses_a_folder_and_an_existing_manifest_unless_overwrite(tmp_path, capsys):
    root = generic_folder(tmp_path / "d", n=6)
    (tmp_path / "dir").mkdir()
    code, _, err = run(capsys, "data", "index", root, "-o", tmp_path / "dir")
    assert_one_line_error(code, err, "--output", "is a folder")
    target = tmp_path / "m.csv"
    target.write_text("keep me")
    code, _, err = run(capsys, "data", "index", root, "-o", target)
    assert_one_line_error(code, err, "--output", "exists; add --overwrite")
    assert target.read_text() == "keep me"
    code, _, _ = run(capsys, "data", "index", root, "-o", target, "--overwrite")
    assert code == 0 and target.read_text().startswith("id,")


@pytest.mark.parametrize("argv", [
    ["predict", "--run", "r", "--out", "{out}"],
    ["train", "--preset", "unet", "--manifest", "m.csv", "--out", "{out}"],
    ["evaluate", "--pred", "p", "--manifest", "m.csv", "--out", "{out}"],
    ["report", "--out", "{out}"],
    ["data", "synth", "--out", "{out}"],
])
def test_out_that_is_a_file_or_lies_under_a_file_is_a_one_line_error(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    for out, needle in (("f.txt", "exists and is a file, not a folder"), ("f.txt/sub", "is a file, not a folder")):
        code, _, err = run(capsys, *[a.format(out=out) for a in argv])
        assert_one_line_error(code, err, "--out", needle)
    assert (tmp_path / "f.txt").read_text() == "x"


def test_a_file_system_refusal_mid_command_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import lesiondiff.cli as cli

    def refuse(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "x.png"))

    monkeypatch.setitem(cli.COMMANDS, "report", refuse)
    code, _, err = run(capsys, "report", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "x.png: Permission denied")


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "best or last (default: best)" in text
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    assert "default: 200" in capsys.readouterr().out


def test_maps_png_has_titles_and_colour_bars():
    from lesiondiff.render.maps import BAR_H, TITLE_H, uncertainty_panel

    rng = np.random.default_rng(0)
    maps = {k: rng.random((16, 16)) for k in ("coherence", "ambiguity", "entropy")}
    panel = uncertainty_panel(maps, (40, 120))
    assert panel.shape == (TITLE_H + 40 + BAR_H, 3 * 120 + 8, 3)
    title = panel[:TITLE_H, :120]
    assert (title.min(axis=-1) < 80).sum() > 20  # dark text on white
    from matplotlib import colormaps

    bar = panel[TITLE_H + 40 + 3, :120].astype(int)
    ramp = (colormaps["viridis"](np.linspace(0, 1, 120))[:, :3] * 255).astype(int)
    assert np.abs(bar - ramp).max() <= 1  # the colour bar is the map's colour scale, low to high


def test_a_large_seed_reaches_the_config_exactly(tmp_path, capsys, monkeypatch):
    """--seed 9007199254740993 (2**53 + 1) used to become ...992 on its way through a float."""
    from lesiondiff.config import Config
    from lesiondiff.engine.predict import Predictor
    from lesiondiff.errors import LesiondiffError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Config().save(run_dir / "config.yaml")
    seen = {}

    def fake_from_run(cls, run, checkpoint="best", device=None, overrides=None, postprocess=True):
        seen["seed"] = Config.load(run / "config.yaml").override(overrides).sample.seed
        raise LesiondiffError("stop before loading weights")

    monkeypatch.setattr(Predictor, "from_run", classmethod(fake_from_run))
    code, _, err = run(capsys, "predict", "--run", run_dir, "--out", tmp_path / "o", "--seed", "9007199254740993",
                       tmp_path)
    assert code == 2 and "stop before loading weights" in err
    assert seen["seed"] == 9007199254740993


def test_overrides_after_an_option_are_kept_and_unknown_options_still_refused(tmp_path, capsys):
    from lesiondiff.cli import build_parser, parse

    args = parse(build_parser(), ["train", "--preset", "unet", "--manifest", "m.csv", "data.size=32", "--out",
                                  "runs/x", "train.steps=5"])
    assert args.overrides == ["data.size=32", "train.steps=5"] and args.out == "runs/x"
    args = parse(build_parser(), ["compare", "--presets", "unet", "train.lr=1e-3", "--manifest", "m", "--out", "o", "--budget-minutes", "1",
                                  "train.steps=5", "data.size=64"])
    assert args.overrides == ["train.lr=1e-3", "train.steps=5", "data.size=64"]
    args = parse(build_parser(), ["predict", "--run", "r", "a.png", "--out", "o", "b.png", "sample.steps=3"])
    assert args.inputs == ["a.png", "b.png", "sample.steps=3"]
    # the trailing override is applied: its bad value is the config's one-line error
    code, _, err = run(capsys, "train", "--preset", "unet", "--manifest", "m.csv", "train.steps=5", "--out",
                       tmp_path / "run", "data.size=7")
    assert_one_line_error(code, err, "data.size must be")
    for argv in (["train", "--preset", "unet", "--out", "o", "train.steps=5", "--bogus"],
                 ["train", "--preset", "unet", "train.steps=5", "--out", "o", "stray"],
                 ["evaluate", "--pred", "p", "--manifest", "m", "train.steps=5"],
                 ["predict", "--run", "r", "a.png", "--out", "o", "--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "unrecognized arguments: " in capsys.readouterr().err


def test_an_ascii_terminal_gets_escapes_not_a_traceback(monkeypatch):
    """LC_ALL=C with PYTHONUTF8=0: the streams take only ASCII; a report's '–' or 'ü' is escaped, not fatal."""
    import io

    from lesiondiff.cli import _printable_streams

    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    _printable_streams()
    print("Dice 65.1 % – ünï")
    out.flush()
    assert out.buffer.getvalue() == b"Dice 65.1 % \\u2013 \\xfcn\\xef\n"
    utf8 = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", utf8)
    _printable_streams()
    assert utf8.errors == "strict"  # a UTF-8 stream is left as it is
