"""api.py: ``lesiondiff.load(...).predict(image)`` gives, in memory, exactly what ``lesiondiff predict``
writes for the same image id (mask, probability, samples, maps, scores), from a file or an array, and writes
nothing; the package imports without torch; the README's example runs as it is written."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lesiondiff
from lesiondiff.cli import main
from lesiondiff.config import Config
from lesiondiff.data.io import read_image, read_mask
from lesiondiff.data.manifest import Manifest
from lesiondiff.data.transforms import resize_prob
from lesiondiff.errors import LesiondiffError
from lesiondiff.metrics import image_dice
from lesiondiff.postprocess import PostProcess, save
from lesiondiff.shipped import model_card

README = Path(__file__).resolve().parents[1] / "README.md"


def written(out: Path, id_: str) -> dict:
    """What ``lesiondiff predict`` wrote for image ``id_`` in ``out``: its mask, npz arrays and csv row."""
    with np.load(out / f"{id_}_probs.npz") as npz:
        arrays = dict(npz)
    with (out / "predictions.csv").open(encoding="utf-8") as f:
        row = next(r for r in csv.DictReader(f) if r["id"] == id_)
    return {"mask": read_mask(out / f"{id_}_mask.png"), **arrays, "row": row}


def assert_same(result: lesiondiff.api.Segmentation, files: dict) -> None:
    assert result.mask.dtype == bool and result.mask.shape == tuple(files["original_size"])
    assert np.array_equal(result.mask, files["mask"])
    assert np.array_equal(result.probability, resize_prob(files["fused"], tuple(files["original_size"])))
    assert np.array_equal(result.samples.astype(np.float16), files["samples"])
    for name in ("coherence", "ambiguity", "entropy"):
        assert np.array_equal(getattr(result, name), files[name]), name
    assert result.scores == {k: float(v) for k, v in files["row"].items()
                             if k in ("agreement", "lesion_fraction", "entropy", "band_entropy") and v != ""}
    assert result.review == (files["row"].get("review") or None)


def test_import_loads_neither_torch_nor_the_engine():
    src = str(Path(lesiondiff.__file__).parents[1])
    code = ("import sys, lesiondiff; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'lesiondiff')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", env=env, check=True)
    assert out.stdout.strip() == "['lesiondiff', 'lesiondiff.errors']"
    assert "load" in dir(lesiondiff) and lesiondiff.load.__module__ == "lesiondiff.api"


@pytest.fixture(scope="module")
def run(train_tiny_run, tmp_path_factory) -> Path:
    """A tiny diffusion run (S = 3, two DDIM steps) with a lesion / no-lesion rule (the largest component)."""
    run = train_tiny_run("ensemdiff", tmp_path_factory.mktemp("api") / "run", 2, "sample.samples=3",
                         "sample.steps=2")
    save(PostProcess(largest_component=True), run / "postprocess.json", "a test", [{"rule": "none"}])
    return run


def test_load_predict_equals_lesiondiff_predict(run, phantom_dir, tmp_path):
    images = sorted((phantom_dir / "images").glob("*.png"))[:2]
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(run), "--out", str(out), *map(str, images)]) == 0
    seg = lesiondiff.load(run)
    assert seg.config.sample.samples == 3 and seg.predictor.postprocess == PostProcess(largest_component=True)
    for path in images:
        result = seg.predict(path)  # the id is the file's stem, as predict's
        assert result.id == path.stem and result.samples.shape == (3, 32, 32)
        assert_same(result, written(out, path.stem))
        # the rule: the largest component of the thresholded probability (this untrained run's has several)
        assert 0 < result.mask.sum() < (result.probability >= 0.5).sum()
        assert not (result.mask & ~(result.probability >= 0.5)).any()
    path, files = images[0], written(out, images[0].stem)
    assert_same(seg.predict(read_image(path), id=path.stem), files)  # the array read_image gives
    assert_same(seg.predict(np.asarray(Image.open(path)), id=path.stem), files)  # uint8 H x W
    rgb = np.repeat(np.asarray(Image.open(path))[..., None], 3, axis=2)
    assert_same(seg.predict(rgb.astype(np.float64), id=path.stem), files)  # grey as three equal channels
    # the id seeds the noise: another id draws other samples, an array's default id is "image"
    other = seg.predict(read_image(path))
    assert other.id == "image" and not np.array_equal(other.samples, seg.predict(path).samples)


def test_load_options_are_predicts_overrides(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    seg = lesiondiff.load(run, samples=4, steps=1, seed=5, tta="flips", threshold=0.4, mc_dropout=False,
                          overrides=["sample.maps=masks"], postprocess=False, device="cpu")
    want = Config.load(run / "config.yaml").override(["sample.samples=4", "sample.steps=1", "sample.seed=5",
                                                      "sample.tta=flips", "sample.threshold=0.4",
                                                      "sample.mc_dropout=false", "sample.maps=masks"])
    assert seg.config == want and seg.predictor.postprocess is None
    result = seg.predict(np.full((40, 24, 3), 90, np.uint8))
    assert result.samples.shape == (4, 32, 32) and result.mask.shape == (40, 24)
    assert set(np.unique(result.coherence)) <= {0, 0.25, 0.5, 0.75, 1}  # maps of the four binarised samples
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written in the run
    assert not any(tmp_path.iterdir())  # nor in the working folder


def test_bad_names_options_and_images_are_one_line_errors(run, tmp_path):
    with pytest.raises(LesiondiffError, match=r"^nope: no such run folder, and not a shipped model \(busi"):
        lesiondiff.load("nope")
    with pytest.raises(LesiondiffError, match="not a run folder"):
        lesiondiff.load(tmp_path)
    with pytest.raises(LesiondiffError, match="unknown option 'samplez'; known: samples, steps"):
        lesiondiff.load(run, samplez=3)
    with pytest.raises(LesiondiffError, match="--steps 5000: the run was trained with 1000 timesteps"):
        lesiondiff.load(run, steps=5000)
    seg = lesiondiff.load(run)
    for image, message in [(np.zeros((8, 8, 2)), "got shape"), (np.full((8, 8), 300.0), "in \\[0, 255\\]"),
                           (np.zeros((8, 8), bool), "of numbers"),
                           (tmp_path / "none.png", "no such image file")]:
        with pytest.raises(LesiondiffError, match=message):
            seg.predict(image)


def shipped_image(shared_data: Path, name: str) -> tuple[dict, Path]:
    card = model_card(name)
    row = card["check_rows"][0]
    if not (shared_data / row["image"]).is_file():
        pytest.skip(f"{card['data']['folder']} not found under {shared_data}")
    return row, shared_data / row["image"]


def test_shipped_busi_on_a_busi_image(shared_data, tmp_path):
    row, path = shipped_image(shared_data, "busi")
    manifest = tmp_path / "check.csv"
    Manifest([{"id": row["id"], "image": str(path), "masks": [str(shared_data / m) for m in row["masks"]],
               "label": row["label"], "split": "test"}]).write(manifest)
    out = tmp_path / "pred"
    assert main(["predict", "--model", "busi", "--manifest", str(manifest), "--split", "test",
                 "--out", str(out)]) == 0
    result = lesiondiff.load("busi").predict(path, id=row["id"])
    assert_same(result, written(out, row["id"]))
    truth = np.logical_or.reduce([read_mask(shared_data / m) for m in row["masks"]])
    card_dice = model_card("busi")["check_dice"][row["id"]]
    assert image_dice(result.mask, truth) == pytest.approx(card_dice, abs=0.01)  # test_shipped's tolerance


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md: no ```python block after <!-- api-example -->"
    return found.group(1)


def test_the_readme_example_runs_and_gives_what_predict_writes(tmp_path):
    namespace: dict = {}
    exec(compile(readme_example(), "README.md (api-example)", "exec"), namespace)
    result = namespace["result"]
    Image.fromarray(namespace["image"]).save(tmp_path / f"{result.id}.png")
    out = tmp_path / "pred"
    assert main(["predict", "--model", "busi", "--out", str(out), str(tmp_path / f"{result.id}.png")]) == 0
    assert_same(result, written(out, result.id))
