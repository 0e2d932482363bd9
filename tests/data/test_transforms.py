import numpy as np
import pytest
import torch

from lesiondiff.data.transforms import _OPS, Augment, preprocess_image, preprocess_mask, resize_prob
from lesiondiff.errors import LesiondiffError

ALL = list(_OPS)


def test_preprocess_image_range_shape_and_exact_values() -> None:
    image = np.array([[0, 255], [127.5, 51]], dtype=np.float32)[..., None]
    out = preprocess_image(image, size=2, channels=1)
    assert out.shape == (1, 2, 2) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.tensor([[-1.0, 1.0], [0.0, -0.6]]))
    big = preprocess_image(np.random.default_rng(0).uniform(0, 255, (300, 200, 3)), size=64, channels=3)
    assert big.shape == (3, 64, 64) and big.min() >= -1 and big.max() <= 1


def test_grey_to_rgb_repeats() -> None:
    grey = np.random.default_rng(1).uniform(0, 255, (8, 8))
    out = preprocess_image(grey, size=8, channels=3)
    assert out.shape == (3, 8, 8)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert torch.allclose(out[0], torch.from_numpy(grey / 127.5 - 1).float(), atol=1e-6)


def test_rgb_to_grey_is_bt601_luma() -> None:
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0] = [255, 0, 0]
    rgb[0, 1] = [0, 255, 0]
    rgb[1, 0] = [0, 0, 255]
    rgb[1, 1] = [255, 255, 255]
    out = preprocess_image(rgb, size=2, channels=1)
    expected = torch.tensor([[0.299, 0.587], [0.114, 1.0]]) * 2 - 1
    assert torch.allclose(out[0], expected, atol=1e-5)


@pytest.mark.parametrize("shape, channels", [((4, 4, 4), 3), ((4, 4, 2), 1), ((4, 4, 4), 1)])
def test_channel_mismatch_is_an_error(shape: tuple, channels: int) -> None:
    with pytest.raises(LesiondiffError, match="channel"):
        preprocess_image(np.zeros(shape), size=4, channels=channels)


def test_intensity_window() -> None:
    image = np.tile(np.array([0, 30, 132.5, 235, 255], dtype=np.float32), (5, 1))
    out = preprocess_image(image, size=5, channels=1, intensity_window=(30, 235))
    assert torch.allclose(out[0], torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]).expand(5, 5), atol=1e-6)
    with pytest.raises(LesiondiffError, match="window"):
        preprocess_image(image, size=5, channels=1, intensity_window=(100, 100))


def test_preprocess_mask_values_and_area() -> None:
    mask = np.zeros((256, 256), bool)
    mask[64:192, 32:160] = True
    out = preprocess_mask(mask, 64)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    assert (out > 0).float().mean().item() == pytest.approx(mask.mean(), abs=1e-6)
    up = preprocess_mask(mask[::4, ::4], 256)
    assert set(up.unique().tolist()) == {-1.0, 1.0}
    assert (up > 0).float().mean().item() == pytest.approx(mask.mean(), abs=0.01)


def test_preprocess_mask_thin_structure_survives_twofold_shrink() -> None:
    mask = np.zeros((64, 64), bool)
    mask[:, 20] = True  # one-pixel line: covers half of each output pixel
    assert (preprocess_mask(mask, 32) > 0).sum() == 32


def test_resize_prob_shape_and_constant() -> None:
    prob = np.full((2, 3, 16, 24), 0.3, np.float32)
    out = resize_prob(prob, (50, 70))
    assert out.shape == (2, 3, 50, 70) and out.dtype == np.float32
    assert np.allclose(out, 0.3)
    assert resize_prob(prob[0, 0], (8, 12)).shape == (8, 12)
    assert np.allclose(resize_prob(prob[0, 0], (8, 12)), 0.3)


def test_resize_prob_keeps_range_and_is_bilinear() -> None:
    prob = np.random.default_rng(0).random((4, 10, 10)).astype(np.float32)
    out = resize_prob(prob, (37, 23))
    assert out.min() >= prob.min() - 1e-6 and out.max() <= prob.max() + 1e-6
    ramp = np.tile(np.arange(4, dtype=np.float32), (4, 1))  # columns 0,1,2,3
    wide = resize_prob(ramp, (4, 8))[0]
    # align_corners=False: output x maps to input (x + 0.5) / 2 - 0.5, clamped at the borders.
    assert np.allclose(wide, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def _pair(seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((3, size, size), generator=g) * 2 - 1
    mask = -torch.ones((1, size, size))
    mask[:, 8:20, 5:25] = 1
    return image, mask


@pytest.mark.parametrize("name", ALL)
def test_every_augmentation_keeps_ranges(name: str) -> None:
    augment = Augment([name], p=1.0, strength=1.5)
    for seed in range(25):
        image, mask = _pair(seed)
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert set(out_mask.unique().tolist()) <= {-1.0, 1.0}
        assert out_image.min() >= -1 and out_image.max() <= 1
        assert (out_mask > 0).any()  # the lesion is never erased


def test_all_augmentations_together_reproducible() -> None:
    augment = Augment(ALL, p=0.7)
    image, mask = _pair(0)
    a = augment(image, mask, torch.Generator().manual_seed(7))
    b = augment(image, mask, torch.Generator().manual_seed(7))
    c = augment(image, mask, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_generator_state_resumes() -> None:
    augment = Augment(["noise", "flip"], p=1.0)
    image, mask = _pair(0)
    g = torch.Generator().manual_seed(3)
    augment(image, mask, g)
    state = g.get_state()
    expected = augment(image, mask, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(augment(image, mask, g2)[0], expected[0])


@pytest.mark.parametrize("name", ["flip", "rot90", "sixfold", "scale"])
def test_geometric_ops_move_image_and_mask_together(name: str) -> None:
    augment = Augment([name], p=1.0)
    _, mask = _pair(0)
    changed = 0
    for seed in range(10):
        image, out_mask = augment(mask.expand(3, -1, -1).clone(), mask, torch.Generator().manual_seed(seed))
        if name == "scale":  # bilinear vs nearest: they may break ties differently along one edge
            image = torch.where(image > 0, 1.0, -1.0)
            assert (image[0] != out_mask[0]).sum() <= mask.shape[-1]
        else:
            assert torch.equal(image, out_mask.expand(3, -1, -1))
        changed += not torch.equal(out_mask, mask)
    assert changed > 0


def test_p_zero_is_identity() -> None:
    image, mask = _pair(1)
    out = Augment([n for n in ALL if n != "sixfold"], p=0.0)(image, mask, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], image) and torch.equal(out[1], mask)


def test_erosion_shrinks_boundary_only() -> None:
    _, mask = _pair(0)
    out = Augment(["erosion"], p=1.0)(mask.expand(3, -1, -1), mask, torch.Generator().manual_seed(0))[1]
    inside = out > 0
    assert inside.sum() < (mask > 0).sum()
    assert torch.all(mask[inside] > 0)  # never grows
    assert inside[0, 10:18, 7:23].all()  # the core survives


def test_unknown_augmentation() -> None:
    with pytest.raises(LesiondiffError, match="known: flip, rot90"):
        Augment(["flip", "mixup"])


def test_sixfold_draws_the_six_copies_equally_often() -> None:
    image = torch.arange(16.0).reshape(1, 4, 4) / 16 - 0.5  # all eight symmetries of it differ
    mask = torch.where(image > 0, 1.0, -1.0)
    copies = [image, image.flip(-1), image.flip(-2)] + [torch.rot90(image, k, (-2, -1)) for k in (1, 2, 3)]
    counts = [0] * 6
    g = torch.Generator().manual_seed(0)
    augment = Augment(["sixfold"], p=0.0)  # p does not apply: one of the six for every sample
    for _ in range(600):
        out, out_mask = augment(image, mask, g)
        k = next(i for i, c in enumerate(copies) if torch.equal(out, c))
        assert torch.equal(out_mask, torch.where(out > 0, 1.0, -1.0))
        counts[k] += 1
    assert all(70 <= c <= 130 for c in counts), counts  # 100 expected each; binomial sd 9
