"""The models that ship with the package: each loads with --model NAME and reproduces the per-image Dice its
model card records for its check images (four test images of its data set, read from ../shared/data).

Tolerance: 0.01 Dice per image. The card's numbers come from a prediction with two threads; another thread
count or CPU changes the order of floating-point sums, which can flip a few border pixels at the threshold
(seen here: at most 2e-4 Dice)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lesiondiff.cli import main
from lesiondiff.data.manifest import Manifest
from lesiondiff.errors import LesiondiffError
from lesiondiff.shipped import model_bytes, model_card, model_dir, model_names, run_folder

TOLERANCE = 0.01
NAMES = model_names()


def test_models_ship_and_are_listed(capsys):
    assert NAMES, "no shipped models found in lesiondiff/shipped/"
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    for name in NAMES:
        card = model_card(name)
        assert name in listed and f"{100 * card['test']['lesion_dice']:.1f} %" in listed
        size = model_bytes(name)
        assert size < 10e6, f"{name}: {size / 1e6:.1f} MB"
        text = (model_dir(name) / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert "not a medical device" in text and "## Known failure modes" in text
        assert f"{100 * card['test']['lesion_dice']:.2f} %" in text


def test_models_markdown_gives_test_counts_and_is_the_readmes_table(capsys):
    assert main(["models", "--markdown"]) == 0
    table = capsys.readouterr().out.rstrip("\n")
    lines = table.splitlines()
    assert "test images (lesion / lesion-free)" in lines[0] and len(lines) == 2 + len(NAMES)
    for name, line in zip(NAMES, lines[2:]):
        t = model_card(name)["test"]
        assert t["images"] == t["lesion_images"] + t["lesion_free_images"]
        assert f"| `{name}` |" in line and f"| {t['images']} ({t['lesion_images']} / {t['lesion_free_images']}) |" in line
    if "isic" in NAMES:  # a small test split: the table must say so
        assert "| 12 (12 / 0) |" in lines[2 + NAMES.index("isic")]
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not found beside tests/")
    text = readme.read_text(encoding="utf-8")
    marker = "<!-- shipped-models -->\n"
    assert marker in text
    start = text.index(marker) + len(marker)
    assert text[start:text.index("\n\n", start)] == table, "README table out of date: lesiondiff models --markdown"


def test_model_and_run_name_the_same_folder():
    assert run_folder(None, NAMES[0]) == model_dir(NAMES[0])
    with pytest.raises(LesiondiffError, match="unknown model 'nope'; shipped: "):
        run_folder(None, "nope")
    with pytest.raises(LesiondiffError, match="either --run DIR"):
        run_folder("runs/x", NAMES[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_reproduces_its_card(name, shared_data, tmp_path):
    card = model_card(name)
    rows = [{"id": r["id"], "image": str(shared_data / r["image"]),
             "masks": [str(shared_data / m) for m in r["masks"]], "label": r["label"], "split": "test"}
            for r in card["check_rows"]]
    if not all((shared_data / r["image"]).is_file() for r in card["check_rows"]):
        pytest.skip(f"{card['data']['folder']} not found under {shared_data}")
    manifest = tmp_path / "check.csv"
    Manifest(rows).write(manifest)
    out = tmp_path / "pred"
    assert main(["predict", "--model", name, "--manifest", str(manifest), "--split", "test", "--out", str(out)]) == 0
    assert main(["evaluate", "--pred", str(out), "--manifest", str(manifest), "--split", "test"]) == 0
    with (out / "metrics.csv").open(encoding="utf-8") as f:
        got = {r["id"]: float(r["dice"]) for r in csv.DictReader(f) if r["which"] == "fused"}
    assert got.keys() == card["check_dice"].keys()
    for id_, dice in card["check_dice"].items():
        assert got[id_] == pytest.approx(dice, abs=TOLERANCE), id_
