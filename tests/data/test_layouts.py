"""Layout detection and indexing on the real datasets (skipped when absent) and on small synthetic folders."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from lesiondiff.data.io import write_mask_png, write_png
from lesiondiff.data.layouts import LAYOUTS, check_records, index_folder
from lesiondiff.errors import LesiondiffError


@pytest.mark.parametrize("sub", ["BUSI", "BUSI/Dataset_BUSI_with_GT"])
def test_busi(shared_data, sub):
    result = index_folder(shared_data / sub)
    assert result.layout == "busi" and not result.skipped
    assert result.root == str((shared_data / "BUSI/Dataset_BUSI_with_GT").resolve())
    records = result.records
    assert len(records) == 624
    assert Counter(r.label for r in records) == {"benign": 350, "malignant": 168, "normal": 106}
    folder = shared_data / "BUSI/Dataset_BUSI_with_GT"
    extra_masks = list(folder.glob("*/*_mask_*.png"))
    multi = {re.sub(r"_mask_\d+$", "", p.stem) for p in extra_masks}
    assert {r.id for r in records if len(r.masks) > 1} == multi
    assert sum(len(r.masks) for r in records) == len(list(folder.glob("*/*_mask*.png"))) == 624 + len(extra_masks)
    by_id = {r.id: r for r in records}
    if "benign (195)" in by_id:  # two extra masks, in order
        assert [Path(m).name for m in by_id["benign (195)"].masks] == [
            "benign (195)_mask.png", "benign (195)_mask_1.png", "benign (195)_mask_2.png"]
    assert all(Path(r.image).is_absolute() and r.case == r.id and r.dataset == "busi" for r in records)


@pytest.mark.parametrize("sub", ["Kvasir-SEG_resized256", "Kvasir-SEG_resized256/Kvasir-SEG"])
def test_kvasir(shared_data, sub):
    result = index_folder(shared_data / sub)
    assert result.layout == "kvasir" and len(result.records) == 798 and not result.skipped
    assert all(len(r.masks) == 1 and Path(r.masks[0]).name == Path(r.image).name for r in result.records)


@pytest.mark.parametrize("sub, n", [("ISIC2017", 9), ("ISIC2017_512", 78)])
def test_isic(shared_data, sub, n):
    result = index_folder(shared_data / sub)
    assert result.layout == "isic" and len(result.records) == n and not result.skipped
    r = result.records[0]
    assert re.fullmatch(r"ISIC_\d{7}", r.id) and r.masks[0].endswith(f"{r.id}_segmentation.png")
    assert {r.extra["source_split"] for r in result.records} == {"validation"}


@pytest.mark.parametrize("sub", ["DRIVE", "DRIVE/DRIVE"])
def test_drive(shared_data, sub):
    result = index_folder(shared_data / sub)
    assert result.layout == "drive" and len(result.records) == 40 and not result.skipped
    assert Counter(r.extra["source_split"] for r in result.records) == {"training": 20, "test": 20}
    assert all(Path(r.extra["fov"]).is_file() and r.label == "" for r in result.records)
    assert sum("manual2" in r.extra for r in result.records) == 20
    first = result.records[0]
    assert first.id == "01_test" and Path(first.masks[0]).name == "01_manual1.gif"


def test_parent_of_several_datasets_is_an_error(shared_data):
    with pytest.raises(LesiondiffError, match="several datasets"):
        index_folder(shared_data)


def test_check_records_on_real_data(shared_data):
    records = index_folder(shared_data / "DRIVE").records[:4]
    good, skipped = check_records(records)
    assert good == records and skipped == []


# --- synthetic folders --------------------------------------------------------------------------------


def _pair(folder: Path, name: str, size=(8, 10), mask_name: str | None = None):
    img = np.full((*size, 3), 100, np.uint8)
    mask = np.zeros(size, bool)
    mask[2:4, 3:6] = True
    write_png(folder / "images" / f"{name}.png", img)
    write_mask_png(folder / "masks" / f"{mask_name or name}.png", mask)


def test_generic_with_suffixes_labels_and_orphans(tmp_path):
    _pair(tmp_path, "a")
    _pair(tmp_path, "b", mask_name="b_mask")
    _pair(tmp_path, "c", mask_name="c_segmentation")
    write_mask_png(tmp_path / "masks" / "c_mask_1.png", np.ones((8, 10), bool))
    write_png(tmp_path / "images" / "lonely.png", np.zeros((8, 10), np.uint8))
    write_mask_png(tmp_path / "masks" / "orphan.png", np.zeros((8, 10), bool))
    (tmp_path / "labels.csv").write_text("id,label,case\na,benign,p1\nb,malignant,p1\n")
    result = index_folder(tmp_path)
    assert result.layout == "generic" and result.root == str(tmp_path.resolve())
    by_id = {r.id: r for r in result.records}
    assert sorted(by_id) == ["a", "b", "c"]
    assert [Path(m).name for m in by_id["c"].masks] == ["c_mask_1.png", "c_segmentation.png"]
    assert (by_id["a"].label, by_id["b"].label, by_id["c"].label) == ("benign", "malignant", "")
    assert (by_id["a"].case, by_id["b"].case, by_id["c"].case) == ("p1", "p1", "c")
    assert by_id["a"].dataset == tmp_path.name
    assert sorted((Path(p).name, why) for p, why in result.skipped) == [
        ("lonely.png", "no mask found"), ("orphan.png", "no image")]


def test_generic_found_one_level_down_and_bad_labels_csv(tmp_path):
    _pair(tmp_path / "set", "a")
    assert index_folder(tmp_path).root == str((tmp_path / "set").resolve())
    (tmp_path / "set" / "labels.csv").write_text("name,klass\na,x\n")
    with pytest.raises(LesiondiffError, match=r"labels\.csv: needs columns id,label"):
        index_folder(tmp_path)


def test_nnunet(tmp_path):
    root = tmp_path / "Dataset001_Test"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img = np.arange(12, dtype=np.int16).reshape(3, 4)
    for case in ("case_001", "case_002"):
        sitk.WriteImage(sitk.GetImageFromArray(img), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray((img > 5).astype(np.uint8)), str(root / "labelsTr" / f"{case}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(img), str(root / "imagesTr" / "case_001_0001.nii.gz"))
    vol = np.zeros((4, 3, 4), np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(root / "imagesTr" / "case_003_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(vol.astype(np.uint8)), str(root / "labelsTr" / "case_003.nii.gz"))
    result = index_folder(tmp_path)
    assert result.layout == "nnunet" and [r.id for r in result.records] == ["case_001", "case_002"]
    assert result.records[0].dataset == "Dataset001_Test"
    reasons = {Path(p).name: why for p, why in result.skipped}
    assert reasons["case_001_0001.nii.gz"].startswith("extra channel")
    assert reasons["case_003_0000.nii.gz"].startswith("3D volume with 4 slices")
    good, bad = check_records(result.records)
    assert len(good) == 2 and not bad


def test_explicit_layout_mismatch_and_unknown(tmp_path):
    _pair(tmp_path, "a")
    assert index_folder(tmp_path, "generic").layout == "generic"
    with pytest.raises(LesiondiffError, match="does not look like a busi dataset"):
        index_folder(tmp_path, "busi")
    with pytest.raises(LesiondiffError, match="unknown layout 'nope'"):
        index_folder(tmp_path, "nope")
    assert LAYOUTS.names() == ["busi", "drive", "generic", "isic", "kvasir", "nnunet"]


def test_missing_empty_and_unrecognised_folders(tmp_path):
    with pytest.raises(LesiondiffError, match="no such folder$"):
        index_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LesiondiffError, match=r"empty folder$") as exc:
        index_folder(tmp_path / "empty")
    assert str(exc.value) == f"{tmp_path / 'empty'}: empty folder"
    (tmp_path / "odd" / "pictures").mkdir(parents=True)
    (tmp_path / "odd" / "pictures" / "x.png").write_bytes(b"")
    with pytest.raises(LesiondiffError, match="unrecognised layout; expected one of: busi, isic") as exc:
        index_folder(tmp_path / "odd")
    assert "\n" not in str(exc.value)


def test_images_without_any_mask_is_an_error(tmp_path):
    write_png(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "masks").mkdir()
    with pytest.raises(LesiondiffError, match=r"no image/mask pairs found \(1 files skipped; first: .*a\.png: no mask"):
        index_folder(tmp_path)


def test_check_records_skip_and_raise(tmp_path):
    for name in ("good", "corrupt", "wrong_size"):
        _pair(tmp_path, name)
    data = (tmp_path / "images" / "corrupt.png").read_bytes()
    (tmp_path / "images" / "corrupt.png").write_bytes(data[: len(data) // 2])
    write_mask_png(tmp_path / "masks" / "wrong_size.png", np.zeros((9, 10), bool))
    records = index_folder(tmp_path).records
    assert [r.id for r in records] == ["corrupt", "good", "wrong_size"]  # indexing does not decode

    good, skipped = check_records(records, on_error="skip")
    assert [r.id for r in good] == ["good"]
    assert [Path(p).relative_to(tmp_path).as_posix() for p, _ in skipped] == ["images/corrupt.png", "masks/wrong_size.png"]
    assert skipped[1][1] == "mask is 10x9 but its image is 10x8"

    with pytest.raises(LesiondiffError) as exc:
        check_records(records, on_error="raise")
    assert str(exc.value).startswith(str(tmp_path / "images" / "corrupt.png")) and "\n" not in str(exc.value)


def test_busi_like_folder_with_rgba_and_empty_masks(tmp_path):
    root = tmp_path / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 3), ("normal", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(np.full((6, 5, 3), 9, np.uint8)).save(root / cls / f"{cls} ({i}).png")
            m = np.zeros((6, 5, 4), np.uint8)
            m[..., 3] = 255
            if cls == "benign":
                m[1:3, 1:3, :3] = 255
            Image.fromarray(m).save(root / cls / f"{cls} ({i})_mask.png")
    Image.fromarray(np.zeros((6, 5), np.uint8)).convert("1").save(root / "benign" / "benign (2)_mask_1.png")
    result = index_folder(tmp_path)
    assert Counter(r.label for r in result.records) == {"benign": 3, "normal": 2}
    good, skipped = check_records(result.records)
    assert len(good) == 5 and not skipped


def test_isic_like_folder_with_part3_labels(tmp_path):
    root = tmp_path / "isic"
    for i, split in ((1, "Training"), (2, "Training"), (3, "Test_v2")):
        write_png(root / f"ISIC-2017_{split}_Data" / f"ISIC_000000{i}.png", np.zeros((4, 4), np.uint8))
        write_png(root / f"ISIC-2017_{split}_Data" / f"ISIC_000000{i}_superpixels.png", np.zeros((4, 4), np.uint8))
        write_mask_png(root / f"ISIC-2017_{split}_Part1_GroundTruth" / f"ISIC_000000{i}_segmentation.png",
                       np.ones((4, 4), bool))
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text(
        "image_id,melanoma,seborrheic_keratosis\nISIC_0000001,1.0,0.0\nISIC_0000002,0.0,0.0\n")
    result = index_folder(tmp_path)
    assert result.layout == "isic" and not result.skipped
    got = [(r.id, r.label, r.extra["source_split"]) for r in result.records]
    assert got == [("ISIC_0000001", "melanoma", "training"), ("ISIC_0000002", "nevus", "training"),
                   ("ISIC_0000003", "", "test")]
