import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric

from lesiondiff.errors import LesiondiffError
from lesiondiff.uncertainty import (
    ambiguity,
    coherence,
    entropy,
    expected_calibration_error,
    ged,
    ged_diffseg,
)


def masks_4x4(*pixel_lists):
    out = np.zeros((len(pixel_lists), 4, 4), bool)
    for k, pixels in enumerate(pixel_lists):
        for r, c in pixels:
            out[k, r, c] = True
    return out


A = [(0, 0), (0, 1)]
B = [(0, 0)]
EMPTY: list = []


def test_coherence_ambiguity_maps():
    probs = np.array([[[1.0, 0.2]], [[0.0, 0.2]]])  # S=2, H=1, W=2
    np.testing.assert_allclose(coherence(probs), [[0.5, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(ambiguity(probs), [[0.25, 0.0]], atol=1e-7)  # population variance
    assert coherence(probs).dtype == np.float32 and ambiguity(probs).dtype == np.float32


def test_entropy_bits():
    probs = np.array([[[0.5, 0.0, 1.0, 0.25]], [[0.5, 0.0, 1.0, 0.25]]])
    h = entropy(probs)
    assert h.dtype == np.float32 and h.shape == (1, 4)
    assert h[0, 0] == pytest.approx(1.0)  # the maximum
    assert h[0, 1] == 0.0 and h[0, 2] == 0.0
    assert h[0, 3] == pytest.approx(-(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)), rel=1e-6)
    # entropy of the mean, not the mean of entropies: two certain but opposite samples give 1 bit
    assert entropy(np.array([[[1.0]], [[0.0]]]))[0, 0] == pytest.approx(1.0)


def test_ged_identical_single_masks_is_zero():
    m = masks_4x4(A)
    assert ged(m, m) == 0.0
    assert ged(masks_4x4(EMPTY), masks_4x4(EMPTY)) == 0.0  # d(empty, empty) = 0
    assert ged(masks_4x4(EMPTY), masks_4x4(A)) == 2.0


def test_ged_hand_computed_two_samples():
    # d(A,B) = 1 - IoU = 1 - 1/2 = 0.5
    # 2 E[d(S,Y)] = 2 * mean(0, 0.5) = 0.5;  E[d(S,S')] over all 4 ordered pairs (i == j included) = 1/4
    # E[d(Y,Y')] = 0  ->  D^2 = 0.25
    assert ged(masks_4x4(A, B), masks_4x4(A)) == pytest.approx(0.25)
    # symmetric in its two arguments
    assert ged(masks_4x4(A), masks_4x4(A, B)) == pytest.approx(0.25)


def test_ged_diffseg_hand_computed():
    outputs = masks_4x4(A, B, EMPTY)
    # d = sqrt(#differing pixels / 16): d(A,B) = 1/4, d(A,0) = sqrt(2)/4, d(B,0) = 1/4
    expected = 2 / 9 * (0.25 + np.sqrt(2) / 4 + 0.25)
    assert ged_diffseg(outputs) == pytest.approx(expected)
    assert ged_diffseg(outputs.astype(np.float32)) == pytest.approx(expected)
    assert ged_diffseg(masks_4x4(A)) == 0.0
    full_and_empty = np.stack([np.ones((4, 4), bool), np.zeros((4, 4), bool)])
    assert ged_diffseg(full_and_empty) == pytest.approx(0.5)  # the bound for binary masks


def test_identical_samples_give_zero_for_both_geds():
    for pixels in (A, EMPTY):
        same = masks_4x4(pixels, pixels, pixels)
        assert ged(same, masks_4x4(pixels)) == 0.0  # the samples equal the ground truth
        assert ged_diffseg(same) == 0.0
    # identical samples that miss the ground truth: DiffSeg's GED (no ground truth) is still 0
    assert ged_diffseg(masks_4x4(B, B)) == 0.0 and ged(masks_4x4(B, B), masks_4x4(A)) == pytest.approx(1.0)


def test_ged_closed_form_two_samples_one_ground_truth():
    rng = np.random.default_rng(0)
    for _ in range(5):
        s1, s2, y = (rng.random((6, 7)) < 0.5 for _ in range(3))

        def d(p, q):
            return 1.0 - (p & q).sum() / (p | q).sum()

        # D^2 = 2 E d(S,Y) - E d(S,S') - E d(Y,Y'): E over the 2 samples, over the 4 ordered sample pairs
        # (d(s,s) = 0), and d(y,y) = 0 for one ground truth
        closed = 2 * (d(s1, y) + d(s2, y)) / 2 - (0 + d(s1, s2) + d(s2, s1) + 0) / 4 - 0.0
        assert ged(np.stack([s1, s2]), y[None]) == pytest.approx(closed, abs=1e-12)


def test_ged_rejects_probabilities():
    with pytest.raises(LesiondiffError, match="binary"):
        ged(np.full((1, 4, 4), 0.3), masks_4x4(A))


def _torchmetrics_ece(p, t, n_bins=10):
    """torchmetrics' ECE (a dev extra: the test is skipped without it)."""
    metrics = pytest.importorskip("torchmetrics.functional.classification")
    return metrics.binary_calibration_error(
        torch.tensor(p.reshape(-1)), torch.tensor(t.reshape(-1)).long(), n_bins=n_bins, norm="l1"
    ).item()


def _monai_ece(p, t, n_bins=10):
    metric = CalibrationErrorMetric(num_bins=n_bins)
    metric(torch.tensor(p.reshape(1, 1, -1)).float(), torch.tensor(t.reshape(1, 1, -1)).float())
    return metric.aggregate().item()


def test_ece_matches_torchmetrics_and_monai():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 32, 32))
    targets = rng.random((3, 32, 32)) < probs**2  # over-confident on purpose
    ece = expected_calibration_error(probs, targets, n_bins=10)
    assert ece > 0.05
    assert ece == pytest.approx(_torchmetrics_ece(probs, targets), abs=1e-9)
    assert ece == pytest.approx(_monai_ece(probs, targets), abs=1e-5)
    assert expected_calibration_error(probs, targets, n_bins=15) == pytest.approx(
        _torchmetrics_ece(probs, targets, 15), abs=1e-9
    )


def test_ece_bin_edges_hand_computed():
    # bins are right-closed ((m-1)/M, m/M]: 0.5 alone in (0.4, 0.5], both 0.55 in (0.5, 0.6], 0.0 in bin 0
    probs = np.array([0.5, 0.55, 0.55, 0.0])
    targets = np.array([1, 0, 1, 0])
    expected = (abs(1 - 0.5) + 2 * abs(0.5 - 0.55) + 0) / 4
    assert expected_calibration_error(probs, targets) == pytest.approx(expected)
    assert expected_calibration_error(probs, targets) == pytest.approx(_monai_ece(probs, targets), abs=1e-6)
    # torchmetrics puts 0.5 into [0.5, 0.6) with the 0.55s, hence a different number on this edge case
    assert _torchmetrics_ece(probs, targets) == pytest.approx(0.1)
    # perfectly calibrated certain predictions
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([False, True])) == 0.0


def test_reliability_bins_hand_computed_and_pooled_equals_concatenation():
    from lesiondiff.uncertainty import ece_from_bins, merge_bins, reliability_bins, reliability_table

    probs = np.array([0.5, 0.55, 0.55, 0.0])
    targets = np.array([1, 0, 1, 0])
    b = reliability_bins(probs, targets, n_bins=10)
    assert b["count"].tolist() == [1, 0, 0, 0, 1, 2, 0, 0, 0, 0]  # right-closed: 0.5 in (0.4, 0.5]
    np.testing.assert_allclose(b["conf_sum"][[0, 4, 5]], [0.0, 0.5, 1.1])
    assert b["target_sum"][[0, 4, 5]].tolist() == [0, 1, 1]
    assert ece_from_bins(b) == pytest.approx(expected_calibration_error(probs, targets))
    table = reliability_table(b)
    assert table[5] == {"lo": 0.5, "hi": pytest.approx(0.6), "count": 2, "mean_prob": pytest.approx(0.55),
                        "frac_fg": 0.5}
    assert table[1]["mean_prob"] is None and table[1]["count"] == 0

    rng = np.random.default_rng(1)
    images = [(rng.random((h, w)), rng.random((h, w)) < 0.3) for h, w in [(4, 5), (8, 3), (6, 6)]]
    pooled = merge_bins(reliability_bins(p, t) for p, t in images)
    concat = expected_calibration_error(np.concatenate([p.ravel() for p, _ in images]),
                                        np.concatenate([t.ravel() for _, t in images]))
    assert ece_from_bins(pooled) == pytest.approx(concat, abs=1e-12)
    assert pooled["count"].sum() == 20 + 24 + 36
    # the pooled figure weighs pixels, the mean of per-image ECEs weighs images: not the same number
    assert ece_from_bins(pooled) != pytest.approx(np.mean([expected_calibration_error(p, t) for p, t in images]))
    with pytest.raises(LesiondiffError, match="merge"):
        merge_bins([reliability_bins(probs, targets, 10), reliability_bins(probs, targets, 5)])
