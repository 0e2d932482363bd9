import builtins
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from lesiondiff.build import build_fusion
from lesiondiff.config import Config, FusionConfig
from lesiondiff.data.io import read_image, write_png
from lesiondiff.data.transforms import resize_prob
from lesiondiff.engine.predict import Predictor
from lesiondiff.errors import LesiondiffError
from lesiondiff.fusion import (
    FUSERS,
    binarize,
    crf_kernels,
    crf_refine,
    crf_rounds,
    densecrf,
    fuse,
    majority,
    mean,
    staple,
)
from lesiondiff.metrics import binary_metrics


def square(shape=(16, 16), top=4, left=4, size=8):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def sitk_staple(masks, iterations):
    """SimpleITK's STAPLE: (probability [H,W] float64, sensitivity [S], specificity [S], elapsed iterations)."""
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetMaximumIterations(iterations)
    out = f.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks])
    return (sitk.GetArrayFromImage(out), np.array(f.GetSensitivity()), np.array(f.GetSpecificity()),
            f.GetElapsedIterations())


def reference_staple(masks, iterations, sens0=0.9, spec0=0.9, prior=0.5):
    """Warfield's EM written out per Eq. 2-3 with plain products (no logs, no clamping): E, then M and E
    ``iterations`` times. Returns (W [H,W], sensitivity [S], specificity [S])."""
    d = masks.reshape(len(masks), -1)

    def e_step(sens, spec):
        a = prior * np.prod(np.where(d, sens[:, None], 1 - sens[:, None]), axis=0)
        b = (1 - prior) * np.prod(np.where(d, 1 - spec[:, None], spec[:, None]), axis=0)
        return a / (a + b)

    sens, spec = np.full(len(d), sens0), np.full(len(d), spec0)
    w = e_step(sens, spec)
    for _ in range(iterations):
        sens = (d * w).sum(1) / w.sum()
        spec = (~d * (1 - w)).sum(1) / (1 - w).sum()
        w = e_step(sens, spec)
    return w.reshape(masks.shape[1:]), sens, spec


def noisy_raters(seed, n, shape=(40, 50), flip=(0.02, 0.3)):
    """``n`` copies of a rectangle, each with its own fraction of flipped pixels drawn from ``flip``."""
    rng = np.random.default_rng(seed)
    truth = square(shape, 10, 12, 20)
    return np.stack([truth ^ (rng.random(shape) < rng.uniform(*flip)) for _ in range(n)])


def disc(shape=(64, 64), radius=20):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 <= radius**2


def test_registry_names():
    assert FUSERS.names() == ["crf_rounds", "densecrf", "majority", "mean", "staple"]


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


def test_staple_defaults_are_unisegdiffs():
    # UniSegDiff (Eqs. 2-3): alpha_j = 0.9, beta_j = 0.1, prior 0.5, 20 EM iterations; the config agrees
    params = inspect.signature(staple).parameters
    defaults = {k: params[k].default for k in ("max_iterations", "sensitivity", "specificity", "prior")}
    assert defaults == {"max_iterations": 20, "sensitivity": 0.9, "specificity": 0.9, "prior": 0.5}
    assert params["tolerance"].default == 0.0 and params["init"].default == "rates"
    assert FusionConfig().options == {}  # a preset's STAPLE runs at these defaults unless its options say otherwise


def test_staple_first_e_step_known_values():
    # 3 raters, pixels with 3, 2, 1 and 0 foreground votes; before any M-step all raters have sens = spec = 0.9
    masks = np.array([[[1, 1, 1, 0]], [[1, 1, 0, 0]], [[1, 0, 0, 0]]], float)
    fused, stats = staple(masks, max_iterations=0, return_stats=True)
    expected = [0.9**3 / (0.9**3 + 0.1**3), 0.9, 0.1, 0.1**3 / (0.9**3 + 0.1**3)]
    np.testing.assert_allclose(fused[0], expected, rtol=1e-6)
    assert stats.iterations == 0 and np.allclose(stats.sensitivity, 0.9) and np.allclose(stats.specificity, 0.9)
    # a prior of 0.8 multiplies the odds by 4
    odds = staple(masks, max_iterations=0, prior=0.8)[0, 1] / (1 - staple(masks, max_iterations=0, prior=0.8)[0, 1])
    assert odds == pytest.approx(4 * 0.9 / 0.1, rel=1e-5)


@pytest.mark.parametrize("iterations", [1, 2, 20])
def test_staple_matches_the_em_written_out(iterations):
    masks = noisy_raters(1, 5)
    w, sens, spec = reference_staple(masks, iterations)
    fused, stats = staple(masks.astype(np.float32), max_iterations=iterations, return_stats=True)
    np.testing.assert_allclose(fused, w, rtol=0, atol=1e-7)  # float32 output
    np.testing.assert_allclose(stats.sensitivity, sens, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.specificity, spec, rtol=0, atol=1e-12)
    assert stats.iterations == iterations


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("iterations", [1, 2, 5, 20, 200])
def test_staple_reproduces_simpleitk(seed, iterations):
    # ITK starts from the vote fraction with the mean foreground fraction as prior, runs M then E, and stops
    # once every squared change of an estimate is <= 1e-14; its output is the last E-step's W
    masks = noisy_raters(seed, 3 + seed)
    w, sens, spec, elapsed = sitk_staple(masks, iterations)
    fused, stats = staple(masks.astype(np.float32), init="vote", prior="mean", max_iterations=iterations,
                          tolerance=1e-7, return_stats=True)
    np.testing.assert_allclose(fused, w, rtol=0, atol=1e-7)  # float32 output of ITK's float64
    np.testing.assert_allclose(stats.sensitivity, sens, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.specificity, spec, rtol=0, atol=1e-12)
    # ITK's GetElapsedIterations is one less than the iterations it ran when it converged before the limit
    assert stats.iterations == (elapsed if elapsed == iterations else elapsed + 1)


def test_staple_differs_from_simpleitk_only_by_clamping_where_an_estimate_is_0_or_1():
    masks = noisy_raters(4, 5, flip=(0.05, 0.15))
    for extra in (masks.any(0), masks.all(0), np.ones_like(masks[0])):  # sensitivity 1, specificity 1, 0
        m = np.concatenate([masks, extra[None]])
        w, sens, spec, _ = sitk_staple(m, 20)
        assert max(sens.max(), spec.max()) == 1.0 or min(sens.min(), spec.min()) == 0.0
        fused, stats = staple(m, init="vote", prior="mean", tolerance=1e-7, return_stats=True)
        np.testing.assert_allclose(fused, w, rtol=0, atol=1e-5)
        np.testing.assert_allclose(stats.sensitivity, sens, rtol=0, atol=2e-6)
        np.testing.assert_allclose(stats.specificity, spec, rtol=0, atol=2e-6)


def test_staple_all_raters_agree_returns_their_mask():
    for mask in (square(), np.zeros((16, 16), bool), np.ones((16, 16), bool)):
        a = mask.astype(np.float32)
        out, stats = staple(np.stack([a, a, a]), return_stats=True)
        np.testing.assert_array_equal(out, a)
        assert out.dtype == np.float32 and stats.iterations == 0
        assert (stats.sensitivity == 1).all() and (stats.specificity == 1).all()
    # ITK returns NaN on identical empty raters (its estimates are 0/0); the early return avoids that case
    assert np.isnan(sitk_staple(np.zeros((3, 16, 16), bool), 20)[0]).all()


@pytest.mark.parametrize("bad", ["noise", "inverted"])
def test_staple_finds_the_bad_rater(bad):
    rng = np.random.default_rng(5)
    truth = disc()
    good = [truth ^ (rng.random(truth.shape) < 0.08) for _ in range(6)]
    wrong = rng.random(truth.shape) < 0.5 if bad == "noise" else ~truth
    masks = np.stack([*good, wrong])
    fused, stats = staple(masks.astype(np.float32), return_stats=True)
    assert stats.sensitivity.argmin() == 6 and stats.specificity.argmin() == 6
    assert stats.sensitivity[6] < 0.6 and stats.sensitivity[:6].min() > 0.85
    assert stats.specificity[6] < 0.6 and stats.specificity[:6].min() > 0.85
    dice = [binary_metrics(m, truth)["dice"] for m in masks]
    fused_dice = binary_metrics(fused >= 0.5, truth)["dice"]
    assert fused_dice > max(dice) and fused_dice > 0.99 and dice[6] < 0.6


def test_staple_weights_raters_unlike_the_mean():
    a = square()
    b = a.copy()
    b[2, 2:14] = True  # one rater adds a stray row
    masks = np.stack([a, a, b])
    fused, stats = staple(masks.astype(np.float32), return_stats=True)
    np.testing.assert_array_equal(fused >= 0.5, a)
    assert not np.allclose(fused, mean(masks))
    assert stats.sensitivity.shape == (3,) and stats.specificity[2] < stats.specificity[0]
    assert stats.iterations == 20


def test_staple_iterations_and_tolerance():
    probs = np.random.default_rng(0).random((5, 32, 32))
    fused, stats = staple(probs, max_iterations=7, return_stats=True)
    assert stats.iterations == 7
    assert np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1
    masks = noisy_raters(2, 6)
    full, full_stats = staple(masks, max_iterations=500, return_stats=True)
    early, early_stats = staple(masks, max_iterations=500, tolerance=1e-6, return_stats=True)
    assert 1 <= early_stats.iterations < 500 == full_stats.iterations
    np.testing.assert_allclose(early, full, atol=1e-4)
    np.testing.assert_allclose(early_stats.sensitivity, full_stats.sensitivity, atol=1e-5)


@pytest.mark.parametrize("init", ["rates", "vote"])
def test_staple_output_shape_range_and_no_nan(init):
    rng = np.random.default_rng(0)
    one_pixel = np.zeros((4, 8, 9))
    one_pixel[0, 3, 3] = 1.0  # nearly empty: one rater marks one pixel
    nearly_full = 1.0 - one_pixel
    many = (rng.random((200, 8, 9)) < 0.5).astype(float)  # 200 raters: linear-space products would underflow
    for probs in (one_pixel, nearly_full, many, rng.random((3, 8, 9))):
        fused, stats = staple(probs, init=init, return_stats=True)
        assert fused.shape == (8, 9) and fused.dtype == np.float32
        assert np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1
        assert np.isfinite(stats.sensitivity).all() and np.isfinite(stats.specificity).all()


def test_staple_zero_posterior_sum_keeps_the_estimates():
    # 400 empty raters and one that marks a pixel: W underflows to 0 everywhere, sum_i W_i = 0, and the
    # sensitivities keep their last (here initial) value instead of becoming 0/0
    one_pixel = np.zeros((1, 8, 9))
    one_pixel[0, 3, 3] = 1.0
    fused, stats = staple(np.concatenate([np.zeros((400, 8, 9)), one_pixel]), return_stats=True)
    assert (fused == 0).all() and np.allclose(stats.sensitivity, 0.9) and (stats.specificity > 0.9).all()


def test_staple_rejects_bad_settings():
    probs = np.random.default_rng(0).random((3, 4, 4))
    for kw, match in [({"prior": 0.0}, "prior"), ({"prior": "median"}, "prior"), ({"init": "ones"}, "init"),
                      ({"sensitivity": 1.5}, "sensitivity"), ({"max_iterations": -1}, "max_iterations"),
                      ({"init": "vote", "max_iterations": 0}, "max_iterations")]:
        with pytest.raises(LesiondiffError, match=match):
            staple(probs, **kw)


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


def _disc_and_speck(speck: int, speck_in_image: bool):
    """A 48x48 probability map: 0.9 on a disc of radius 12 and on a ``speck`` x ``speck`` px blob far from it,
    0.1 elsewhere; the image shows the disc (180 on 60), and the blob too when ``speck_in_image``."""
    d = disc((48, 48), 12)
    prob = np.where(d, 0.9, 0.1)
    prob[4 : 4 + speck, 40 : 40 + speck] = 0.9
    image = np.where(d, 180, 60).astype(np.uint8)
    if speck_in_image:
        image[4 : 4 + speck, 40 : 40 + speck] = 180
    return d, prob, image


@pytest.mark.parametrize("speck", [1, 2])
def test_densecrf_removes_an_isolated_speck_and_keeps_the_disc(speck):
    d, prob, image = _disc_and_speck(speck, speck_in_image=False)
    assert (prob >= 0.5).sum() == d.sum() + speck**2
    refined = crf_refine(prob, image)
    np.testing.assert_array_equal(refined >= 0.5, d)
    assert refined[4 : 4 + speck, 40 : 40 + speck].max() < 0.01
    # a speck the image shows too: the smoothness kernel alone (w1 = 0) removes it, the appearance kernel,
    # which links it to the equally bright disc, keeps it
    d, prob, image = _disc_and_speck(speck, speck_in_image=True)
    np.testing.assert_array_equal(crf_refine(prob, image, **crf_kernels(w1=0.0)) >= 0.5, d)
    assert (crf_refine(prob, image) >= 0.5)[4 : 4 + speck, 40 : 40 + speck].all()


def test_crf_kernels_map_eq10_names_to_crf_refine():
    assert crf_kernels(7, w1=1.0, theta_alpha=2.0, theta_beta=3.0, w2=4.0, theta_gamma=5.0) == {
        "iterations": 7, "bilateral_compat": 1.0, "bilateral_sxy": 2.0, "bilateral_srgb": 3.0,
        "gaussian_compat": 4.0, "gaussian_sxy": 5.0}
    defaults = inspect.signature(crf_refine).parameters
    assert all(defaults[k].default == v for k, v in crf_kernels().items())  # the same defaults
    rounds = inspect.signature(crf_rounds).parameters
    assert {k: rounds[k].default for k in ("rounds", "per_round", "iterations", "w1", "theta_alpha", "theta_beta",
                                            "w2", "theta_gamma")} == {
        "rounds": 3, "per_round": 4, "iterations": 5, "w1": 10.0, "theta_alpha": 80.0, "theta_beta": 13.0,
        "w2": 3.0, "theta_gamma": 3.0}


def test_densecrf_fuser_is_the_crf_of_the_mean():
    truth, image, prob = _noisy_square_case()
    probs = np.stack([prob, np.clip(prob + 0.1, 0, 1), np.clip(prob - 0.2, 0, 1)])
    fused = fuse(probs, "densecrf", image=image)
    np.testing.assert_allclose(fused, crf_refine(mean(probs), image), atol=1e-6)
    assert fused.dtype == np.float32 and binary_metrics(fused >= 0.5, truth)["dice"] > 0.9
    np.testing.assert_allclose(densecrf(probs, image, theta_gamma=5.0, iterations=3),
                               crf_refine(mean(probs), image, gaussian_sxy=5.0, iterations=3), atol=1e-6)
    for method in ("densecrf", "crf_rounds"):
        with pytest.raises(LesiondiffError, match="needs the image"):
            fuse(probs, method)


def test_crf_rounds_of_identical_maps_is_the_binarised_crf_of_that_map():
    truth, image, prob = _noisy_square_case()
    probs = np.stack([prob] * 6)
    expected = binarize(crf_refine(prob, image)).astype(np.float32)
    for rounds, per_round in ((3, 4), (5, 2), (1, 10)):
        out = crf_rounds(probs, image, rounds=rounds, per_round=per_round, seed=1)
        np.testing.assert_array_equal(out, expected)
    assert set(np.unique(expected)) == {0.0, 1.0}


def test_crf_rounds_values_draw_and_seed():
    """Six maps, two of them the disc, four empty; with one map per round each round's result is the drawn
    map's CRF, so the output is the fraction of rounds that drew a disc map, in the order
    ``numpy.random.default_rng(seed)`` draws them."""
    d = disc((32, 32), 8)
    image = np.where(d, 200, 50).astype(np.uint8)
    probs = np.stack([d, np.zeros_like(d), d, np.zeros_like(d), np.zeros_like(d), np.zeros_like(d)]).astype(float)
    k = 7
    for seed in (0, 1, 2):
        out = crf_rounds(probs, image, rounds=k, per_round=1, seed=seed)
        rng = np.random.default_rng(seed)
        hits = sum(int(rng.choice(6, size=1, replace=False)[0]) in (0, 2) for _ in range(k))
        np.testing.assert_array_equal(out, np.where(d, hits / k, 0.0).astype(np.float32))
    # values in {0, 1/K, ..., 1}; the same seed reproduces the result exactly
    truth, image, prob = _noisy_square_case()
    rng = np.random.default_rng(5)
    probs = np.clip(prob[None] + rng.normal(0, 0.15, (8, *prob.shape)), 0, 1)
    out = crf_rounds(probs, image, rounds=5, per_round=3, seed=11)
    assert out.dtype == np.float32 and out.shape == prob.shape
    np.testing.assert_allclose(out * 5, np.round(out * 5), atol=1e-6)
    np.testing.assert_array_equal(out, crf_rounds(probs, image, rounds=5, per_round=3, seed=11))
    np.testing.assert_array_equal(out, fuse(probs, "crf_rounds", image=image, rounds=5, per_round=3, seed=11))
    assert binary_metrics(out >= 0.5, truth)["dice"] > 0.9
    with pytest.raises(LesiondiffError, match="rounds"):
        crf_rounds(probs, image, rounds=0)


def test_predictor_passes_the_image_and_fusion_settings(tmp_path):
    """``Predictor.predict`` gives the CRF fusers the image at the network size and the fuser's own options
    (``fusion.options``, checked against its signature), and the refinement its kernels (``fusion.crf_options``)."""
    truth, small, prob = _noisy_square_case()
    big = np.kron(small, np.ones((2, 2), np.uint8))  # the original image, twice the network size
    write_png(tmp_path / "x.png", big)
    rng = np.random.default_rng(2)
    probs = np.clip(prob[None] + rng.normal(0, 0.1, (5, *prob.shape)), 0, 1).astype(np.float32)

    def fake(*overrides):
        cfg = Config().override(list(overrides))
        options, crf = build_fusion(cfg)
        f = SimpleNamespace(cfg=cfg, sample=lambda id_, image: probs, fusion_options=options, crf_kwargs=crf,
                            partner=None)
        return Predictor.predict_image(f, "x", read_image(tmp_path / "x.png")).fused

    net_image = np.moveaxis(resize_prob(np.moveaxis(big[..., None], -1, 0), probs.shape[-2:]), 0, -1)
    expected = crf_rounds(probs, net_image, rounds=4, per_round=2, seed=9, theta_gamma=2.0, w1=5.0)
    got = fake("fusion.method=crf_rounds", "fusion.options={rounds: 4, per_round: 2, seed: 9, theta_gamma: 2.0, "
               "w1: 5.0}")
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(expected, crf_rounds(probs, net_image, rounds=4, per_round=2, seed=9))
    np.testing.assert_allclose(fake("fusion.method=densecrf", "fusion.options={theta_gamma: 2.0, w1: 5.0}"),
                               densecrf(probs, net_image, theta_gamma=2.0, w1=5.0), atol=1e-6)
    np.testing.assert_allclose(fake("fusion.crf=true", "fusion.crf_options={theta_gamma: 2.0, w1: 5.0}"),
                               crf_refine(mean(probs), net_image, gaussian_sxy=2.0, bilateral_compat=5.0), atol=1e-6)
    with pytest.raises(LesiondiffError, match=r"fusion.options.rounds: not an option of fuser 'densecrf'"):
        build_fusion(Config().override(["fusion.method=densecrf", "fusion.options.rounds=3"]))


def test_the_old_flat_fusion_keys_are_read_into_the_fusers_options(capsys):
    cfg = Config().override(["fusion.method=staple", "fusion.staple_sensitivity=0.8", "fusion.crf_seed=4"])
    assert cfg.fusion.options["sensitivity"] == 0.8 and "seed" not in cfg.fusion.options  # staple takes no seed
    assert "deprecated keys fusion.{staple_*, crf_*}" in capsys.readouterr().err
    rounds = Config().override(["fusion.method=crf_rounds", "fusion.crf_rounds=5", "fusion.crf_w2=1.0",
                                "fusion.crf=true"])
    assert rounds.fusion.options["rounds"] == 5 and rounds.fusion.options["w2"] == 1.0
    assert rounds.fusion.crf_options["w2"] == 1.0  # the kernels of the refinement too
