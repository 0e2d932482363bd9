"""``lesiondiff evaluate --masks DIR``: any tool's masks scored with lesiondiff's metrics, matched by id."""

import json

import numpy as np
import pytest
from PIL import Image

from lesiondiff.cli import main


def square(top: int, size: int = 32) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[top:top + 12, 8:20] = 255
    return m


@pytest.fixture
def manifest(tmp_path):
    """Four 32 px test images, ground truth a 12 x 12 square at rows 8..19 (case3: no lesion, label normal)."""
    rows = ["id,image,masks,label,case,dataset,split,fold"]
    for i in range(4):
        img, gt = tmp_path / f"img{i}.png", tmp_path / f"gt{i}.png"
        Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)).save(img)
        Image.fromarray(square(8) if i < 3 else np.zeros((32, 32), np.uint8)).save(gt)
        rows.append(f"case{i},{img},{gt},{'normal' if i == 3 else 'benign'},case{i},toy,test,-1")
    path = tmp_path / "m.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_masks_of_another_tool_are_scored_by_id_with_hand_computed_dice(manifest, tmp_path, capsys):
    d = tmp_path / "tool"
    d.mkdir()
    Image.fromarray(square(8)).save(d / "case0.png")  # exact: Dice 1
    Image.fromarray(square(14)).save(d / "case1_mask.png")  # shifted 6 rows: overlap 6 x 12 -> Dice 72/144 = 0.5
    Image.fromarray((square(8) // 255).astype(np.uint8)).save(d / "case2_seg.png")  # a 0/1 label map: Dice 1
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "case3_pred.png")  # empty, other size: resized
    Image.fromarray(square(8)).save(d / "unrelated.png")
    assert main(["evaluate", "--masks", str(d), "--manifest", str(manifest), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "1 files match no test image and are not scored: unrelated.png" in out
    summary = json.loads((d / "lesiondiff-evaluation" / "summary.json").read_text())
    per = {r.split(",")[0]: r for r in (d / "lesiondiff-evaluation" / "metrics.csv").read_text().splitlines()[1:]}
    assert summary["fused"]["all"]["dice"]["mean"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert summary["lesion_images"]["dice"]["mean"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert summary["image_level"]["normal_predicted_empty"] == 1.0 and summary["resized"] == 1
    assert "case1_mask.png" in per["case1"]
    assert "fused / all" in out and "single_sample" not in out and "no rounds, uncertainty or calibration" in out


def test_missing_files_are_listed_and_refused_or_scored_empty(manifest, tmp_path, capsys):
    d = tmp_path / "tool"
    d.mkdir()
    Image.fromarray(square(8)).save(d / "case0.png")
    assert main(["evaluate", "--masks", str(d), "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no mask file for 3 of 4 test images (case1, case2, case3)" in err
    assert main(["evaluate", "--masks", str(d), "--manifest", str(manifest), "--missing", "empty",
                 "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["missing_files"] == ["case1", "case2", "case3"]
    assert summary["fused"]["all"]["dice"]["mean"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert "3 images without a file scored as empty" in summary["protocol"]


def test_soft_masks_are_read_at_a_threshold(manifest, tmp_path, capsys):
    d = tmp_path / "tool"
    d.mkdir()
    for i in range(4):
        soft = np.full((32, 32), 40, np.uint8)  # probability 0.16 everywhere
        if i < 3:
            soft[8:20, 8:20] = 153  # 0.6 inside the lesion
        Image.fromarray(soft).save(d / f"case{i}.png")
    assert main(["evaluate", "--masks", str(d), "--manifest", str(manifest), "--threshold", "0.5"]) == 0
    assert json.loads((d / "lesiondiff-evaluation" / "summary.json").read_text())["fused"]["all"]["dice"]["mean"] == 1.0
    capsys.readouterr()
    assert main(["evaluate", "--masks", str(d), "--manifest", str(manifest), "--threshold", "0.1"]) == 0
    dice = json.loads((d / "lesiondiff-evaluation" / "summary.json").read_text())["lesion_images"]["dice"]["mean"]
    assert dice == pytest.approx(2 * 144 / (144 + 1024))


def _evaluate(d, manifest, *extra) -> int:
    return main(["evaluate", "--masks", str(d), "--manifest", str(manifest), *map(str, extra)])


def _one_line_error(capsys) -> str:
    """The error line, alone on the last line: the progress bar before it (when scoring had begun) has ended
    its own line."""
    err = capsys.readouterr().err
    assert err.endswith("\n") and "Traceback" not in err and err.count("error: ") == 1
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and "\r" not in last
    return last


def _soft(top: int = 8) -> np.ndarray:
    """A soft output saved as 8-bit grey: 200 (0.78) on the lesion square, 100 (0.39) on the 6 x 12 band
    below it, 0 elsewhere."""
    m = np.zeros((32, 32), np.uint8)
    m[top:top + 12, 8:20] = 200
    m[top + 12:top + 18, 8:20] = 100
    return m


def test_soft_masks_without_threshold_are_refused_naming_the_file(manifest, tmp_path, capsys):
    d = tmp_path / "tool"
    d.mkdir()
    for i in range(4):
        Image.fromarray(square(8) if i else _soft()).save(d / f"case{i}.png")
    assert _evaluate(d, manifest) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {d / 'case0.png'}: grey values 0..200 (3 distinct): neither a binary mask")
    assert "give --threshold T to read them as probabilities" in err
    assert not (d / "lesiondiff-evaluation").exists()

    # the same file with --threshold: 0.5 keeps the square (Dice 1), 0.3 adds the band: 2*144 / (216 + 144) = 0.8
    assert _evaluate(d, manifest, "--threshold", "0.5") == 0
    per = {r.split(",")[0]: r.split(",") for r in (d / "lesiondiff-evaluation" / "metrics.csv").read_text().splitlines()}
    assert float(per["case0"][5]) == 1.0
    assert _evaluate(d, manifest, "--threshold", "0.3") == 0
    per = {r.split(",")[0]: r.split(",") for r in (d / "lesiondiff-evaluation" / "metrics.csv").read_text().splitlines()}
    assert per["id"][5] == "dice" and float(per["case0"][5]) == pytest.approx(0.8)


@pytest.mark.parametrize("value", [128, 100, 64])
def test_uniform_grey_masks_are_refused(manifest, tmp_path, capsys, value):
    """A uniform 128 was read as all foreground (> 127), a uniform 100 as a label map (all foreground too)."""
    d = tmp_path / "tool"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32), value, np.uint8)).save(d / f"case{i}.png")
    assert _evaluate(d, manifest) == 2
    assert f"{d / 'case0.png'}: grey value {value} everywhere: neither" in _one_line_error(capsys)


def test_float_probabilities_are_refused(manifest, tmp_path, capsys):
    d = tmp_path / "tool"
    d.mkdir()
    for i in range(4):
        Image.fromarray(square(8).astype(np.float32) / 255 * 0.75 + 0.125).save(d / f"case{i}.tif")  # mode F
    assert _evaluate(d, manifest) == 2
    assert f"{d / 'case0.tif'}: grey values 0.125..0.875 (2 distinct)" in _one_line_error(capsys)


def test_binary_masks_and_label_maps_are_read_without_threshold(manifest, tmp_path, capsys):
    d = tmp_path / "tool"
    d.mkdir()
    Image.fromarray(square(8)).save(d / "case0.png")  # 0/255: Dice 1
    Image.fromarray(square(14) // 255).save(d / "case1.png")  # 0/1, shifted 6 rows: Dice 72/144 = 0.5
    labels = square(8) // 255
    labels[8:14] *= 2  # labels 0, 1, 2 (two lesion classes): foreground > 0, Dice 1
    Image.fromarray(labels).save(d / "case2.png")
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(d / "case3.png")  # 16-bit, all background: Dice 1
    assert set(np.unique(np.asarray(Image.open(d / "case2.png")))) == {0, 1, 2}
    assert _evaluate(d, manifest) == 0
    summary = json.loads((d / "lesiondiff-evaluation" / "summary.json").read_text())
    assert summary["fused"]["all"]["dice"]["mean"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert "0/1, 0/255 or labels 0..31" in summary["protocol"]
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(d / "case3.png")  # all foreground: accepted, Dice 0
    Image.fromarray(square(8).astype(np.uint16) * 257).save(d / "case0.png")  # 16-bit 0/65535: Dice 1
    assert _evaluate(d, manifest) == 0
    summary = json.loads((d / "lesiondiff-evaluation" / "summary.json").read_text())
    assert summary["fused"]["all"]["dice"]["mean"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
