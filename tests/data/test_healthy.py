"""Healthy-image synthesis (data/healthy.py), the class-labelled training data built from it (data/dataset.py)
and how it travels through the Trainer's augmentation (engine/train.py, ``Trainer._next_batch``)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lesiondiff.config import Config, DataConfig
from lesiondiff.data.dataset import load_rows
from lesiondiff.data.healthy import METHODS, fill_region, remove_lesion
from lesiondiff.data.io import write_mask_png, write_png
from lesiondiff.data.transforms import Augment
from lesiondiff.engine.train import Trainer
from lesiondiff.errors import LesiondiffError

SKIN, LESION, RIM = 170.0, 60.0, 20.0


def disc(n: int, radius: float, cy: float | None = None, cx: float | None = None) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    cy, cx = (n / 2 if cy is None else cy), (n / 2 if cx is None else cx)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def lesion_image(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 skin (170 +- noise, with a slight left-to-right shading) with a dark lesion (60) whose darker
    rim (20) lies 1-2 px outside the annotated mask, as a tight annotation leaves it."""
    rng = np.random.default_rng(seed)
    mask = disc(n, n / 5)
    img = SKIN + np.linspace(-10, 10, n)[None, :] + rng.normal(0, 4, (n, n))
    img = np.where(disc(n, n / 5 + 2), RIM, img)
    img = np.where(mask, LESION + rng.normal(0, 4, (n, n)), img)
    img = np.repeat(np.clip(img, 0, 255)[..., None], 3, axis=2)
    img[..., 0] += 10  # a little colour, so the channels differ
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("method", METHODS)
def test_remove_lesion_keeps_the_outside_and_fills_the_lesion_with_skin(method):
    img, mask = lesion_image()
    out = remove_lesion(img, mask, method, dilate_px=3)
    region = fill_region(mask, 3)
    assert out.dtype == img.dtype and out.shape == img.shape
    assert region[mask].all() and region.sum() > mask.sum()  # dilated
    np.testing.assert_array_equal(out[~region], img[~region])  # bit for bit
    assert (out[mask] != img[mask]).mean() > 0.9
    # the lesion (60) and its rim (20) are gone: the fill is skin-coloured
    skin_mean = img[~fill_region(mask, 6)].astype(float).mean()
    assert img[mask].mean() < 100 and abs(out[mask].astype(float).mean() - skin_mean) < 10


@pytest.mark.parametrize("method", METHODS)
def test_dilation_keeps_the_rim_from_leaking_into_the_fill(method):
    img, mask = lesion_image()
    tight = remove_lesion(img, mask, method, dilate_px=0)  # the dark rim becomes boundary data
    wide = remove_lesion(img, mask, method, dilate_px=3)
    np.testing.assert_array_equal(tight[~mask], img[~mask])
    assert tight[mask].astype(float).mean() < wide[mask].astype(float).mean() - 40


@pytest.mark.parametrize("method", METHODS)
def test_a_linear_shading_is_filled_exactly(method):
    # u = a x + b y + c solves both Laplace's and the biharmonic equation, so both fills reproduce it inside
    # a region away from the image border
    n = 32
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    img = np.stack([0.02 * xx - 0.01 * yy - 0.3, -0.015 * xx + 0.03 * yy], axis=-1)  # float, in [-1,1]
    mask = disc(n, 6)
    out = remove_lesion(img, mask, method, dilate_px=2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-4)
    # grey [H,W] images too
    np.testing.assert_allclose(remove_lesion(img[..., 0], mask, method), img[..., 0], atol=1e-4)


def test_harmonic_fill_obeys_the_maximum_principle_and_touches_the_border():
    rng = np.random.default_rng(1)
    img = rng.uniform(-0.5, 0.8, (24, 24, 1))
    mask = np.zeros((24, 24), bool)
    mask[:10, :8] = True  # a corner region: the image border is a reflecting boundary there
    out = remove_lesion(img, mask, "harmonic", dilate_px=0)
    ring = fill_region(mask, 1) & ~mask
    assert img[ring].min() - 1e-12 <= out[mask].min() and out[mask].max() <= img[ring].max() + 1e-12


def test_empty_mask_whole_mask_and_bad_input():
    img, _ = lesion_image(16)
    out = remove_lesion(img, np.zeros((16, 16), bool))
    np.testing.assert_array_equal(out, img)
    assert out is not img
    with pytest.raises(LesiondiffError, match="whole image"):
        remove_lesion(img, np.ones((16, 16), bool))
    with pytest.raises(LesiondiffError, match="same size"):
        remove_lesion(img, np.zeros((8, 16), bool))
    with pytest.raises(LesiondiffError, match="unknown lesion-removal method"):
        remove_lesion(img, disc(16, 3), "telea")
    with pytest.raises(LesiondiffError, match="dilate_px"):
        remove_lesion(img, disc(16, 3), dilate_px=-1)


def _tiny_rows(tmp_path, n: int = 40) -> list[dict]:
    """Two images: "les" with a lesion, "nor" (a normal image) with an empty mask."""
    img, mask = lesion_image(n)
    rows = []
    for id_, m in (("les", mask), ("nor", np.zeros_like(mask))):
        write_png(tmp_path / f"{id_}.png", img)
        write_mask_png(tmp_path / f"{id_}_mask.png", m)
        rows.append({"id": id_, "image": str(tmp_path / f"{id_}.png"), "masks": str(tmp_path / f"{id_}_mask.png"),
                     "label": "benign" if m.any() else "normal", "split": "train"})
    return rows


def test_load_rows_builds_healthy_images_and_lesion_flags(tmp_path):
    rows = _tiny_rows(tmp_path)
    plain = load_rows(rows, DataConfig(size=32))
    assert plain.healthy is None and plain.lesion.tolist() == [True, False]
    assert "healthy" not in plain.batch(torch.tensor([0, 1])) and plain.batch(torch.tensor([1]))["lesion"].tolist() == [False]

    data = load_rows(rows, DataConfig(size=32, healthy="harmonic"))
    assert data.healthy.shape == data.images.shape == (2, 3, 32, 32) and data.healthy.dtype == torch.float16
    torch.testing.assert_close(data.images, plain.images)
    les = (data.masks[0, 0] > 0).numpy()
    region = torch.from_numpy(fill_region(les, 3))
    # the healthy image is the model-size image with the lesion removed (filled before the float16 rounding) ...
    expected = remove_lesion(data.images[0].float().permute(1, 2, 0).numpy(), les, "harmonic")
    torch.testing.assert_close(data.healthy[0].float(), torch.from_numpy(expected).permute(2, 0, 1),
                               atol=2e-3, rtol=0)
    assert torch.equal(data.healthy[0][:, ~region], data.images[0][:, ~region])
    assert data.healthy[0][:, les].float().mean() > data.images[0][:, les].float().mean() + 0.5  # brighter: skin
    assert torch.equal(data.healthy[1], data.images[1])  # ... and the normal image itself
    batch = data.batch(torch.tensor([1, 0]))
    assert set(batch) == {"image", "mask", "lesion", "healthy"} and batch["lesion"].tolist() == [False, True]
    assert batch["healthy"].dtype == torch.float32 and torch.equal(batch["healthy"][1], data.healthy[0].float())
    with pytest.raises(LesiondiffError, match="data.healthy"):
        load_rows(rows, DataConfig(size=32, healthy="inpaint-please"))
    write_mask_png(tmp_path / "les_mask.png", np.ones((40, 40), bool))  # a lesion with no skin around it
    with pytest.raises(LesiondiffError, match=r"les\.png: remove_lesion: .*whole image"):
        load_rows(rows, DataConfig(size=32, healthy="harmonic"))


def _fake_trainer(data, augment) -> SimpleNamespace:
    """What ``Trainer._next_batch`` reads from ``self``: one process, a fixed order, no curriculum, no cross-fitting folds."""
    cfg = Config().override([f"train.batch_size={len(data)}"])
    return SimpleNamespace(accelerator=SimpleNamespace(num_processes=1, process_index=0), cfg=cfg,
                           perm=torch.arange(len(data)), pos=0, train_data=data, augment=augment, curriculum=None,
                           gen=torch.Generator().manual_seed(3), device="cpu", level=0, row_fold=None)


def test_next_batch_keeps_healthy_and_lesion_and_augments_healthy_like_the_image(tmp_path):
    data = load_rows(_tiny_rows(tmp_path), DataConfig(size=32, healthy="biharmonic"))
    plain = Trainer._next_batch(_fake_trainer(data, None))
    assert set(plain) == {"image", "mask", "lesion", "healthy"}
    torch.testing.assert_close(plain["healthy"], data.healthy.float())

    seen = set()
    for seed in range(6):
        fake = _fake_trainer(data, Augment(["flip", "rot90"], p=0.5))
        fake.gen.manual_seed(seed)
        batch = Trainer._next_batch(fake)
        assert set(batch) == {"image", "mask", "lesion", "healthy"} and batch["lesion"].tolist() == [True, False]
        assert batch["healthy"].shape == batch["image"].shape == (2, 3, 32, 32)
        # same flips and rotations: the healthy image differs from its image only inside the (augmented)
        # lesion's fill region, and the normal image's healthy copy is the image itself
        region = torch.from_numpy(fill_region((batch["mask"][0, 0] > 0).numpy(), 3))
        assert torch.equal(batch["healthy"][0][:, ~region], batch["image"][0][:, ~region])
        assert (batch["healthy"][0][:, region] != batch["image"][0][:, region]).any()
        assert torch.equal(batch["healthy"][1], batch["image"][1])
        seen.add(tuple(batch["image"][0].flatten()[:64].tolist()))
    assert len(seen) > 1  # the augmentation did act
