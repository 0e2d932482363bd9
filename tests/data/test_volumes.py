"""3D volumes (nnU-Net NIfTI, DICOM series) cut into 2D slice PNGs at index time (PGDiffSeg's DCE-MRI)."""

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from lesiondiff.cli import main
from lesiondiff.data.io import read_image, read_mask
from lesiondiff.data.layouts import check_records, index_folder
from lesiondiff.errors import LesiondiffError

DEPTH, SIZE, N_PATIENTS = 8, 32, 10
LESION_Z = {i: range(2, 2 + i % 4) for i in range(N_PATIENTS)}  # patient 0, 4 and 8 have no lesion slice


def _volume(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient ``i``: int16 ``[Z,H,W]`` in an arbitrary per-patient range, and its bool box lesion."""
    rng = np.random.default_rng(i)
    vol = (rng.uniform(0, 96, (DEPTH, SIZE, SIZE)) * (0.5 + i / 3) + 7 * i).astype(np.int16)
    mask = np.zeros(vol.shape, bool)
    for z in LESION_Z[i]:
        mask[z, 8 + i : 16 + i, 10:20 + z] = True
    return vol, mask


def _write_nifti(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def _write_dicom_series(folder: Path, vol: np.ndarray, uid: str, prefix: str = "") -> None:
    """One 2D ``.dcm`` per slice sharing a series UID, positioned along z (written in reverse order)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(vol.shape[0]):
        sl = sitk.GetImageFromArray(vol[z])
        tags = {"0008|0060": "MR", "0020|000d": f"{uid}.1", "0020|000e": uid, "0008|0018": f"{uid}.2.{z}",
                "0020|0032": f"0\\0\\{2.0 * z}", "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(z + 1)}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{vol.shape[0] - z:03d}.dcm"))
        writer.Execute(sl)


@pytest.fixture
def mri(tmp_path) -> Path:
    """nnU-Net raw folder of N_PATIENTS 32x32x8 NIfTI volumes; labels use value 2 (any > 0 is foreground)."""
    root = tmp_path / "Dataset002_BreastMRI"
    for i in range(N_PATIENTS):
        vol, mask = _volume(i)
        _write_nifti(root / "imagesTr" / f"P{i:02d}_0000.nii.gz", vol)
        _write_nifti(root / "labelsTr" / f"P{i:02d}.nii.gz", mask.astype(np.uint8) * 2)
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_index_all_slices_values_and_patient_split(mri, tmp_path, capsys):
    code, out, _ = run(capsys, "data", "index", mri, "-o", tmp_path / "m.csv")
    assert code == 0, out
    rows = read_rows(tmp_path / "m.csv")
    assert len(rows) == N_PATIENTS * DEPTH
    slices_dir = tmp_path / "m_slices"
    assert f"slices: {N_PATIENTS * DEPTH} from {N_PATIENTS} volumes in {slices_dir}" in out
    assert "ratios 0.7/0.1/0.2" in out
    by_id = {r["id"]: r for r in rows}
    r = by_id["P05_z003"]
    assert r["case"] == r["patient"] == "P05" and r["slice"] == "3" and r["dataset"] == "Dataset002_BreastMRI"
    assert r["volume"] == str(mri / "imagesTr" / "P05_0000.nii.gz")
    assert r["image"] == str(slices_dir / "images" / "P05_z003.png")
    assert r["masks"] == str(slices_dir / "masks" / "P05_z003.png")
    for i in (1, 5, 9):
        vol, mask = _volume(i)
        v = vol.astype(np.float64)
        expected = np.rint((v - v.min()) * 255.0 / (v.max() - v.min()))
        for z in range(DEPTH):
            png = Image.open(slices_dir / "images" / f"P{i:02d}_z{z:03d}.png")
            assert png.mode == "L"
            diff = np.asarray(png, np.float64) - expected[z]
            assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 0.01
            np.testing.assert_array_equal(np.asarray(Image.open(by_id[f"P{i:02d}_z{z:03d}"]["masks"])),
                                          mask[z].astype(np.uint8) * 255)
        # the whole volume, not each slice, spans 0..255
        assert min(int(np.asarray(Image.open(slices_dir / "images" / f"P{i:02d}_z{z:03d}.png")).min())
                   for z in range(DEPTH)) == 0
    # patient-level split: every patient in one split, 7/1/2 patients for 70/10/20
    splits: dict[str, set[str]] = {}
    for row in rows:
        splits.setdefault(row["case"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values()) and len(splits) == N_PATIENTS
    per_split = {s: sum(v == {s} for v in splits.values()) for s in ("train", "val", "test")}
    assert per_split == {"train": 7, "val": 1, "test": 2}
    # downstream readers see plain 2D images
    assert read_image(by_id["P05_z003"]["image"]).shape == (SIZE, SIZE, 1)
    np.testing.assert_array_equal(read_mask(by_id["P05_z003"]["masks"]), _volume(5)[1][3])


def test_lesion_slices_and_stale_files_removed(mri, tmp_path):
    slices_dir = tmp_path / "slices"
    everything = index_folder(mri, slices_dir=slices_dir)
    assert len(everything.records) == N_PATIENTS * DEPTH
    result = index_folder(mri, slices_dir=slices_dir, slices="lesion")
    n_lesion = sum(len(z) for z in LESION_Z.values())
    assert len(result.records) == n_lesion
    assert {(r.case, int(r.extra["slice"])) for r in result.records} == {
        (f"P{i:02d}", z) for i, zs in LESION_Z.items() for z in zs}
    assert all(read_mask(r.masks[0]).any() for r in result.records)
    reasons = {Path(p).name: why for p, why in result.skipped}
    assert set(reasons) == {"P00_0000.nii.gz", "P04_0000.nii.gz", "P08_0000.nii.gz"}
    assert reasons["P04_0000.nii.gz"].startswith("no slice with foreground")
    # the empty slices written by the first run are gone: the folder holds exactly the manifest's files
    kept = sorted(Path(r.image).name for r in result.records)
    assert sorted(p.name for p in (slices_dir / "images").iterdir()) == kept
    assert sorted(p.name for p in (slices_dir / "masks").iterdir()) == kept


def test_reindex_is_idempotent(mri, tmp_path, capsys):
    assert run(capsys, "data", "index", mri, "-o", tmp_path / "m.csv", "--slices-dir", tmp_path / "s")[0] == 0
    first, files = (tmp_path / "m.csv").read_bytes(), tree_digest(tmp_path / "s")
    assert len(files) == 2 * N_PATIENTS * DEPTH
    assert run(capsys, "data", "index", mri, "-o", tmp_path / "m.csv", "--slices-dir", tmp_path / "s",
               "--overwrite")[0] == 0
    assert (tmp_path / "m.csv").read_bytes() == first and tree_digest(tmp_path / "s") == files
    assert not list((tmp_path / "s").rglob("*.tmp*")) and not (tmp_path / "m_slices").exists()


def test_dicom_series_matches_nifti(tmp_path):
    vol, mask = _volume(3)
    root = tmp_path / "Dataset003_Mixed"
    _write_nifti(root / "imagesTr" / "nii_0000.nii.gz", vol)
    _write_dicom_series(root / "imagesTr" / "dcm_0000", vol, "1.2.826.0.1.3680043.2.1125.7")
    for case in ("nii", "dcm"):
        _write_nifti(root / "labelsTr" / f"{case}.nii.gz", mask.astype(np.uint8))
    result = index_folder(root, slices_dir=tmp_path / "s")
    assert not result.skipped and len(result.records) == 2 * DEPTH
    digest = tree_digest(tmp_path / "s")
    for z in range(DEPTH):
        for sub in ("images", "masks"):
            assert digest[f"{sub}/dcm_z{z:03d}.png"] == digest[f"{sub}/nii_z{z:03d}.png"]
    dcm = next(r for r in result.records if r.id == "dcm_z000")
    assert dcm.extra["volume"] == str(root / "imagesTr" / "dcm_0000") and dcm.case == "dcm"
    # without a slices folder nothing is written and the series is skipped with its depth
    with pytest.raises(LesiondiffError, match="no image/mask pairs found .*: DICOM series with 8 slices; give a"):
        index_folder(root, layout="nnunet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset003_Mixed", "s"]


def test_dicom_folders_without_one_series_are_skipped(tmp_path, capfd):
    vol, mask = _volume(1)
    root = tmp_path / "Dataset004_Dicom"
    _write_dicom_series(root / "imagesTr" / "a_0000", vol, "1.2.826.0.1.3680043.2.1125.8")
    _write_dicom_series(root / "imagesTr" / "b_0000", vol, "1.2.826.0.1.3680043.2.1125.9", prefix="x")
    _write_dicom_series(root / "imagesTr" / "b_0000", vol, "1.2.826.0.1.3680043.2.1125.10", prefix="y")
    (root / "imagesTr" / "c_0000").mkdir()
    (root / "imagesTr" / "c_0000" / "notes.txt").write_text("no images here")
    for case in ("a", "b", "c"):
        _write_nifti(root / "labelsTr" / f"{case}.nii.gz", mask.astype(np.uint8))
    capfd.readouterr()
    result = index_folder(root, slices_dir=tmp_path / "s")
    assert capfd.readouterr().err == ""  # ITK's multi-line warning is silenced; the reason says it
    assert {r.case for r in result.records} == {"a"}
    assert sorted(result.skipped) == [
        (str(root / "imagesTr" / "b_0000"), "holds 2 DICOM series; expected one per folder"),
        (str(root / "imagesTr" / "c_0000"), "no DICOM series in the folder"),
    ]


def test_bad_volumes_give_one_line_reasons(mri, tmp_path, capsys):
    _write_nifti(mri / "labelsTr" / "P03.nii.gz", np.zeros((DEPTH - 1, SIZE, SIZE), np.uint8))
    (mri / "imagesTr" / "P06_0000.nii.gz").write_bytes(b"not a nifti file")
    (mri / "labelsTr" / "P07.nii.gz").unlink()
    label = mri / "labelsTr" / "P03.nii.gz"
    code, _, err = run(capsys, "data", "index", mri, "-o", tmp_path / "m.csv")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {label}: label is 32x32x7 but its image")
    assert not (tmp_path / "m.csv").exists()
    code, out, _ = run(capsys, "data", "index", mri, "-o", tmp_path / "m.csv", "--skip-bad")
    assert code == 0
    assert f"  {label}: label is 32x32x7 but its image {mri / 'imagesTr' / 'P03_0000.nii.gz'} is 32x32x8" in out
    assert f"  {mri / 'imagesTr' / 'P06_0000.nii.gz'}: cannot read image header" in out
    assert f"  {mri / 'imagesTr' / 'P07_0000.nii.gz'}: no mask found" in out
    assert {r["case"] for r in read_rows(tmp_path / "m.csv")} == {f"P{i:02d}" for i in (0, 1, 2, 4, 5, 8, 9)}


def test_labels_csv_groups_cases_into_patients(mri, tmp_path):
    rows = "".join(f"P{i:02d},,pat{i // 2}\n" for i in range(N_PATIENTS))
    (mri / "labels.csv").write_text("id,label,case\n" + rows)
    result = index_folder(mri, slices_dir=tmp_path / "s")
    assert {r.case for r in result.records} == {f"pat{i}" for i in range(N_PATIENTS // 2)}
    assert all(r.extra["patient"] == r.case == f"pat{int(r.id[1:3]) // 2}" for r in result.records)


def test_2d_nnunet_unchanged_and_no_slices_folder(tmp_path, capsys):
    root = tmp_path / "Dataset001_Flat"
    img = np.arange(12, dtype=np.int16).reshape(3, 4)
    for case in ("a", "b", "c", "d"):
        _write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", img)
        _write_nifti(root / "labelsTr" / f"{case}.nii.gz", (img > 5).astype(np.uint8))
    code, out, _ = run(capsys, "data", "index", root, "-o", tmp_path / "m.csv")
    assert code == 0 and "ratios 0.7/0.15/0.15" in out and "slices:" not in out
    rows = read_rows(tmp_path / "m.csv")
    assert [r["image"] for r in rows] == [str(root / "imagesTr" / f"{c}_0000.nii.gz") for c in "abcd"]
    assert "volume" not in rows[0] and not (tmp_path / "m_slices").exists()
    good, bad = check_records(index_folder(root).records)
    assert len(good) == 4 and not bad
