"""Per-image scores against values worked by hand, AURC and e-AURC against a brute-force reference, the pixel
figures, and the calibrated threshold keeping its promise on synthetic data with a known Dice distribution."""

import itertools

import numpy as np
import pytest

from lesiondiff.errors import LesiondiffError
from lesiondiff.selective import (
    aurc,
    auroc_counts,
    choose_threshold,
    confidence,
    eaurc,
    failure_detection,
    optimal_aurc,
    risk_coverage,
    roc_from_counts,
    ueo_curve,
    wsr_upper_bound,
)
from lesiondiff.uncertainty import image_scores, lesion_fraction, mean_entropy, pairwise_dice


def test_scores_worked_by_hand():
    a = np.array([[1, 1], [0, 0]], bool)
    b = np.array([[1, 0], [0, 0]], bool)
    empty = np.zeros((2, 2), bool)
    assert pairwise_dice(np.stack([a, b, empty])) == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert pairwise_dice(np.stack([empty, empty])) == 1.0  # two empty masks agree
    assert pairwise_dice(np.stack([a, a, a])) == 1.0
    assert lesion_fraction(np.stack([a, b, empty])) == pytest.approx(2 / 3)
    fused = np.array([[0.5, 1.0], [0.0, 0.5]])
    assert mean_entropy(fused) == pytest.approx(0.5)  # (1 + 0 + 0 + 1) / 4 bits
    assert mean_entropy(fused, (0.05, 0.95)) == pytest.approx(1.0)  # only the two p = 0.5 pixels
    assert mean_entropy(np.zeros((3, 3)), (0.05, 0.95)) == 0.0  # an empty band
    with pytest.raises(LesiondiffError, match="at least two"):
        pairwise_dice(a[None])


def test_image_scores_for_one_member_give_only_the_entropy_scores():
    probs = np.array([[[0.9, 0.2], [0.1, 0.6]]] * 3)
    one = image_scores(probs, probs[0], members=1)
    assert set(one) == {"entropy", "band_entropy"}
    many = image_scores(probs, probs[0])
    assert many["agreement"] == 1.0 and many["lesion_fraction"] == 1.0


def brute_aurc(risks, conf):
    """Mean over k of the mean risk of the k most confident (no ties)."""
    order = np.argsort(-np.asarray(conf))
    r = np.asarray(risks)[order]
    return np.mean([r[:k].mean() for k in range(1, len(r) + 1)])


def test_aurc_and_eaurc_against_brute_force_perfect_and_reversed():
    rng = np.random.default_rng(0)
    for _ in range(20):
        risks, conf = rng.random(9), rng.random(9)
        assert aurc(risks, conf) == pytest.approx(brute_aurc(risks, conf))
        assert eaurc(risks, conf) == pytest.approx(brute_aurc(risks, conf) - brute_aurc(risks, -risks))
    risks = rng.random(7)
    assert eaurc(risks, -risks) == pytest.approx(0.0)  # the perfect ranking
    worst = eaurc(risks, risks)  # the reversed ranking is the worst of every order
    every = [brute_aurc(risks, np.argsort(p)) - optimal_aurc(risks) for p in itertools.permutations(range(7))]
    assert worst == pytest.approx(max(every))


def test_ties_take_the_mean_risk_of_their_group():
    cov, sel = risk_coverage([0.0, 1.0, 0.5], [1.0, 1.0, 0.0])
    assert cov.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert sel.tolist() == pytest.approx([0.5, 0.5, 0.5])
    fd = failure_detection([1.0, 0.0, 0.5], {"agreement": [1.0, 1.0, 0.0]})
    assert fd["random"]["aurc"] == pytest.approx(0.5) and fd["optimal"]["eaurc"] == 0.0


def test_confidence_directions():
    assert confidence("entropy", [0.1, 0.3]).tolist() == [-0.1, -0.3]
    assert confidence("lesion_fraction", [0.0, 0.5, 1.0]).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(LesiondiffError, match="unknown score"):
        confidence("dice", [1.0])


def test_ueo_and_pixel_auroc():
    u = np.array([[0.9, 0.1], [0.6, 0.0]])
    e = np.array([[1, 0], [0, 0]], bool)
    curve = ueo_curve(u, e, (0.5, 0.95))
    assert curve.tolist() == pytest.approx([2 * 1 / (2 + 1), 0.0])
    assert ueo_curve(np.zeros((2, 2)), np.zeros((2, 2), bool), (0.5,)).tolist() == [1.0]
    perfect = roc_from_counts(auroc_counts(u, u > 0.5))
    assert perfect["auroc"] == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    noise = roc_from_counts(auroc_counts(rng.random(20000), rng.random(20000) > 0.5))
    assert noise["auroc"] == pytest.approx(0.5, abs=0.02)


def test_wsr_bound_is_above_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    x = rng.beta(2, 8, size=400)
    b100, b400 = wsr_upper_bound(x[:100], 0.1), wsr_upper_bound(x, 0.1)
    assert x[:100].mean() < b100 and x.mean() < b400 < b100
    assert wsr_upper_bound(np.ones(50), 0.1) == 1.0
    misses = sum(wsr_upper_bound(rng.beta(2, 8, size=60), 0.1) < 0.2 for _ in range(300))  # true mean 0.2
    assert misses <= 0.1 * 300


def synthetic(n, rng):
    """Images whose Dice falls as the confidence c ~ U(0,1) falls: dice = clip(0.95 - 0.6 (1 - c)^2 + N(0, 0.05)).
    The population's accepted mean Dice at threshold t is about 0.95 - 0.2 (1 - t)^2: the target 0.80 holds
    down to t = 0.13, a coverage of 87 %."""
    conf = rng.random(n)
    dice = np.clip(0.95 - 0.6 * (1 - conf) ** 2 + rng.normal(0, 0.05, n), 0, 1)
    return dice, conf


def test_the_calibrated_threshold_keeps_its_promise_over_200_splits():
    rng = np.random.default_rng(0)
    dice, conf = synthetic(20_000, rng)
    target, delta, met, coverages = 0.80, 0.1, 0, []
    for _ in range(200):
        idx = rng.permutation(len(dice))
        cal, test = idx[:300], idx[300:]
        chosen = choose_threshold(dice[cal], conf[cal], target, delta)
        if chosen["threshold"] is None:
            met += 1  # nothing accepted: the promise holds trivially
            coverages.append(0.0)
            continue
        accepted = conf[test] >= chosen["threshold"]
        met += dice[test][accepted].mean() >= target
        coverages.append(accepted.mean())
    assert met >= (1 - delta) * 200
    assert np.mean(coverages) > 0.4  # and it accepts a useful share of the images


def test_choose_threshold_refuses_bad_input():
    with pytest.raises(LesiondiffError, match="between 0 and 1"):
        choose_threshold([0.9] * 30, [1.0] * 30, 1.5, 0.1)
    with pytest.raises(LesiondiffError, match="at least 20 images"):
        choose_threshold([0.9] * 10, [1.0] * 10, 0.8, 0.1)
    everything_good = choose_threshold([0.98] * 40, np.linspace(0, 1, 40), 0.8, 0.1)
    assert everything_good["coverage"] == 1.0 and everything_good["threshold"] == 0.0


def test_the_printed_mark_line_says_what_happened_when_nothing_is_accepted():
    from lesiondiff.render.tables import trust_lines

    sel = {"score": "entropy", "accepted": 0, "images": 93, "coverage": 0.0, "accepted_mean_dice": None,
           "target_dice": 0.8, "delta": 0.1, "met": None}
    assert trust_lines({"selective": sel}) == [
        "accept / review (entropy): 0 of 93 accepted (0.0%), none accepted; target 0.8 at delta 0.1: kept trivially "
        "(nothing accepted, every image to review)"]
    line = trust_lines({"selective": {**sel, "accepted": 50, "coverage": 50 / 93, "accepted_mean_dice": 0.79,
                                      "met": False}})[0]
    assert line.endswith("50 of 93 accepted (53.8%), mean Dice 0.7900; target 0.8 at delta 0.1: NOT met")
