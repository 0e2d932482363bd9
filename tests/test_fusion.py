import builtins

import numpy as np
import pytest
import SimpleITK as sitk

from lesiondiff.errors import LesiondiffError
from lesiondiff.fusion import FUSERS, crf_refine, fuse, majority, mean, staple
from lesiondiff.metrics import binary_metrics


def square(shape=(16, 16), top=4, left=4, size=8):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def sitk_staple(masks, iterations):
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetMaximumIterations(iterations)
    return sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]))


def test_registry_names():
    assert FUSERS.names() == ["majority", "mean", "staple"]


def test_mean_and_majority_vote():
    probs = np.array([[[0.9, 0.2]], [[0.5, 0.4]], [[0.1, 0.0]]])  # S=3, H=1, W=2
    np.testing.assert_allclose(mean(probs), [[0.5, 0.2]], rtol=1e-6)
    # binarised at >= 0.5: pixel 0 has votes (1, 1, 0), pixel 1 has none
    np.testing.assert_allclose(majority(probs), [[2 / 3, 0.0]], rtol=1e-6)
    assert mean(probs).dtype == np.float32 and majority(probs).shape == (1, 2)


def test_majority_tie_goes_to_foreground():
    probs = np.array([[[1.0]], [[1.0]], [[0.0]], [[0.0]]])
    vote = majority(probs)
    assert vote[0, 0] == 0.5
    assert fuse(probs, "majority")[0, 0] >= 0.5


def test_staple_matches_simpleitk_and_is_not_the_mean():
    a = square()
    b = a.copy()
    b[2, 2:14] = True  # one rater adds a stray row
    masks = np.stack([a, a, b])
    fused, stats = staple(masks.astype(np.float32), return_stats=True)
    np.testing.assert_allclose(fused, sitk_staple(masks, 20), atol=1e-6)
    np.testing.assert_array_equal(fused >= 0.5, majority(masks) >= 0.5)
    assert not np.allclose(fused, mean(masks))
    assert stats.sensitivity.shape == (3,) and stats.specificity[2] < stats.specificity[0]
    assert 1 <= stats.iterations <= 20


def test_staple_terminates_on_disagreeing_raters():
    rng = np.random.default_rng(0)
    probs = rng.random((5, 32, 32))
    fused, stats = staple(probs, max_iterations=7, return_stats=True)
    assert stats.iterations == 7
    assert np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1


def test_staple_degenerate_inputs():
    a = square().astype(np.float32)
    np.testing.assert_array_equal(staple(np.stack([a, a, a])), a)
    zeros = np.zeros((3, 16, 16))
    out, stats = staple(zeros, return_stats=True)
    assert (out == 0).all() and stats.iterations == 0
    # ITK returns NaN on identical empty raters; this is the case the guard exists for
    assert np.isnan(sitk_staple(zeros.astype(bool), 20)).all()


def _noisy_square_case():
    rng = np.random.default_rng(0)
    truth = square((48, 48), 12, 12, 24)
    image = np.where(truth, 180.0, 60.0) + rng.normal(0, 10, truth.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    prob = np.clip(np.where(truth, 0.65, 0.35) + rng.normal(0, 0.25, truth.shape), 0, 1)
    return truth, image, prob


def test_crf_improves_dice_on_noisy_probability():
    truth, image, prob = _noisy_square_case()
    before = binary_metrics(prob >= 0.5, truth)["dice"]
    refined = crf_refine(prob, image)
    after = binary_metrics(refined >= 0.5, truth)["dice"]
    assert refined.shape == truth.shape and refined.dtype == np.float32
    assert refined.min() >= 0 and refined.max() <= 1
    assert after > before + 0.05 and after > 0.9
    # grey [H,W], [H,W,1] and repeated RGB give the same result; float [0,255] is accepted
    rgb = np.repeat(image[..., None], 3, axis=2)
    np.testing.assert_allclose(crf_refine(prob, image[..., None]), refined)
    np.testing.assert_allclose(crf_refine(prob, rgb), refined)
    np.testing.assert_allclose(crf_refine(prob, image.astype(np.float64)), refined)


def test_fuse_with_crf_and_errors():
    truth, image, prob = _noisy_square_case()
    probs = np.stack([prob, prob])
    np.testing.assert_allclose(fuse(probs, "mean", image=image, crf=True), crf_refine(prob, image), atol=1e-6)
    with pytest.raises(LesiondiffError, match="needs the image"):
        fuse(probs, "mean", crf=True)
    with pytest.raises(LesiondiffError, match="unknown fuser"):
        fuse(probs, "median")
    with pytest.raises(LesiondiffError, match=r"\[0,1\]"):
        fuse(probs * 2, "mean")
    with pytest.raises(LesiondiffError, match="image"):
        crf_refine(prob, image[:10])
    with pytest.raises(LesiondiffError, match=r"\[0,255\]"):
        crf_refine(prob, image / 127.5 - 1.0)


def test_crf_without_pydensecrf_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(LesiondiffError, match="pip install pydensecrf2"):
        crf_refine(np.full((4, 4), 0.5), np.zeros((4, 4), np.uint8))
