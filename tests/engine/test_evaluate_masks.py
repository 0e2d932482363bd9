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
