"""Reading images and masks of every kind, exactly, and one-line errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from lesiondiff.data.io import (
    image_size,
    num_slices,
    read_image,
    read_mask,
    read_masks,
    split_name,
    write_mask_png,
    write_png,
)
from lesiondiff.errors import LesiondiffError

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
MASK = RNG.random((5, 7)) > 0.5


def _save(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


def _assert_one_line_error(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    return msg


def test_grey_png(tmp_path):
    out = read_image(_save(tmp_path / "g.png", GREY))
    assert out.dtype == np.float32 and out.shape == (5, 7, 1)
    np.testing.assert_array_equal(out[..., 0], GREY)


def test_rgb_with_identical_channels_is_one_channel(tmp_path):
    out = read_image(_save(tmp_path / "g3.png", np.repeat(GREY[..., None], 3, axis=2)))
    assert out.shape == (5, 7, 1)
    np.testing.assert_array_equal(out[..., 0], GREY)


def test_rgb_and_rgba_drop_alpha(tmp_path):
    np.testing.assert_array_equal(read_image(_save(tmp_path / "c.png", RGB)), RGB)
    rgba = np.concatenate([RGB, np.full((5, 7, 1), 7, np.uint8)], axis=2)
    out = read_image(_save(tmp_path / "a.png", rgba))
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, RGB)


def test_16bit_png_divides_by_257(tmp_path):
    values = np.array([[0, 257, 65535], [514, 1000, 32896]], np.uint16)
    path = tmp_path / "i16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    out = read_image(path)
    np.testing.assert_allclose(out[..., 0], values / 257.0, rtol=1e-6)
    assert out[0, 2, 0] == 255.0 and out[0, 1, 0] == 1.0


def test_palette_image_and_mask(tmp_path):
    index = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(index, "P")
    # index 0 is white, so a colour threshold would be wrong: masks use the index
    img.putpalette([255, 255, 255, 10, 20, 30, 0, 0, 0] + [0] * 759)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), index > 0)
    colours = np.array([[255, 255, 255], [10, 20, 30], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), colours[index])


def test_one_bit_and_label_map_masks(tmp_path):
    Image.fromarray(MASK).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), MASK)
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[..., 0], MASK * 255.0)
    # 0/1 label maps (as nnU-Net writes them) must not come back empty
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "l.png", MASK.astype(np.uint8))), MASK)
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "m.png", MASK.astype(np.uint8) * 255)), MASK)


def test_rgba_mask_ignores_alpha(tmp_path):
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 1] = MASK * 255
    rgba[..., 3] = 255 - MASK * 255  # alpha is the inverse: it must not matter
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "a.png", rgba)), MASK)


def test_jpeg_mask_noise_is_thresholded(tmp_path):
    big = np.kron(MASK, np.ones((16, 16), bool))
    noisy = np.clip(big * 255.0 + RNG.normal(0, 25, big.shape), 0, 255).astype(np.uint8)
    path = _save(tmp_path / "m.jpg", np.repeat(noisy[..., None], 3, axis=2), quality=70)
    decoded = np.asarray(Image.open(path).convert("L"))
    assert ((decoded > 0) & (decoded < 255)).mean() > 0.2  # really noisy
    got = read_mask(path)
    assert got.shape == big.shape and (got == big).mean() > 0.99


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:2, :, 0] = 255  # top rows red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "e.jpg"
    Image.fromarray(img).save(path, exif=exif, quality=95)
    out = read_image(path)
    assert out.shape == (40, 20, 3) and image_size(path) == (40, 20)
    assert out[:, -1, 0].mean() > 200 and out[:, 0, 0].mean() < 50  # the red top is now on the right


def test_nifti_2d_and_volume(tmp_path):
    arr = np.array([[0, 50, 100], [100, 50, 0]], np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "x.nii.gz"))
    out = read_image(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(out[..., 0], np.array([[0, 127.5, 255], [255, 127.5, 0]], np.float32))
    assert image_size(tmp_path / "x.nii.gz") == (2, 3) and num_slices(tmp_path / "x.nii.gz") == 1
    np.testing.assert_array_equal(read_mask(tmp_path / "x.nii.gz"), arr > 0)

    vol = np.stack([arr, arr * 2, arr * 0]).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "v.nii"))
    with pytest.raises(LesiondiffError, match="3D volume with 3 slices") as exc:
        read_image(tmp_path / "v.nii")
    _assert_one_line_error(exc, tmp_path / "v.nii")
    # volume-wide scaling: slice 0 peaks at half the volume's maximum
    np.testing.assert_array_equal(read_image(tmp_path / "v.nii", slice_index=0)[..., 0], out[..., 0] / 2)
    assert num_slices(tmp_path / "v.nii") == 3 and image_size(tmp_path / "v.nii") == (2, 3)
    assert not read_mask(tmp_path / "v.nii", slice_index=2).any()


def test_truncated_png(tmp_path):
    good = _save(tmp_path / "good.png", RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    bad = tmp_path / "bad.png"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    for reader in (read_image, read_mask):
        with pytest.raises(LesiondiffError) as exc:
            reader(bad)
        _assert_one_line_error(exc, bad)


def test_not_an_image_and_missing_file(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_text("not a png\nat all")
    for path, reason in ((junk, "unsupported"), (tmp_path / "nope.png", "no such file")):
        for reader in (read_image, read_mask, image_size):
            with pytest.raises(LesiondiffError, match=reason) as exc:
                reader(path)
            _assert_one_line_error(exc, path)
    with pytest.raises(LesiondiffError, match="no such file"):
        read_image(tmp_path / "nope.nii.gz")


def test_read_masks_union_and_size_mismatch(tmp_path):
    a, b = np.zeros((5, 7), bool), np.zeros((5, 7), bool)
    a[0, 0], b[4, 6] = True, True
    write_mask_png(tmp_path / "a.png", a)
    write_mask_png(tmp_path / "b.png", b)
    np.testing.assert_array_equal(read_masks([tmp_path / "a.png", tmp_path / "b.png"], shape=(5, 7)), a | b)
    assert not read_masks([], shape=(2, 3)).any()
    with pytest.raises(LesiondiffError) as exc:
        read_masks([tmp_path / "a.png"], shape=(6, 7))
    assert _assert_one_line_error(exc, tmp_path / "a.png") == f"{tmp_path / 'a.png'}: mask is 7x5 but its image is 7x6"


def test_writers_round_trip(tmp_path):
    write_png(tmp_path / "rgb.png", RGB)
    write_png(tmp_path / "g.png", GREY)
    write_mask_png(tmp_path / "m.png", MASK)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), RGB)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png")[..., 0], GREY)
    written = Image.open(tmp_path / "m.png")
    assert written.mode == "L" and set(np.unique(np.asarray(written))) <= {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), MASK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "m.png", "rgb.png"]  # no temp files left
    with pytest.raises(ValueError):
        write_png(tmp_path / "f.png", GREY.astype(np.float32))


def test_split_name():
    assert split_name("case_0000.nii.gz") == ("case_0000", ".nii.gz")
    assert split_name("benign (1)_mask.PNG") == ("benign (1)_mask", ".png")


def test_multipage_tiff_frames(tmp_path):
    frames = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (10, 20, 30)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    assert num_slices(tmp_path / "m.tif") == 3
    assert read_image(tmp_path / "m.tif")[0, 0, 0] == 10 and read_image(tmp_path / "m.tif", 2)[0, 0, 0] == 30
    with pytest.raises(LesiondiffError, match=r"no slice 3 \(the file has 3\)"):
        read_image(tmp_path / "m.tif", 3)
