import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from scipy import ndimage

from lesiondiff.errors import LesiondiffError
from lesiondiff.metrics import (
    METRIC_NAMES,
    MetricAggregator,
    binary_metrics,
    hd95,
    pooled_metrics,
    summarize,
)


def square(shape=(32, 32), top=10, left=10, size=10):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def blob(rng, shape=(40, 40)):
    """A smoothed random blob: irregular, non-empty, possibly several components."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    m = noise > np.quantile(noise, 0.7)
    assert m.any()
    return m


def test_hand_counted_4x4():
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
    pred = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
    # TP = 3, FP = 1, FN = 1, TN = 11
    m = binary_metrics(pred, gt)
    assert m["dice"] == pytest.approx(6 / 8)
    assert m["iou"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(14 / 16)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(11 / 12)
    assert tuple(m) == METRIC_NAMES
    # 0/1 integer masks give the same numbers as bool masks
    assert binary_metrics(pred.astype(np.uint8), gt.astype(int)) == m


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), bool)
    full = np.ones((8, 8), bool)
    some = square((8, 8), 2, 2, 3)

    both = binary_metrics(empty, empty)
    assert both == {
        "dice": 1.0,
        "iou": 1.0,
        "accuracy": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "specificity": 1.0,
        "hd95": 0.0,
    }

    fp_only = binary_metrics(some, empty)
    assert (fp_only["dice"], fp_only["iou"], fp_only["precision"], fp_only["recall"]) == (0, 0, 0, 1)
    assert fp_only["specificity"] == pytest.approx(55 / 64)
    assert math.isnan(fp_only["hd95"])

    missed = binary_metrics(empty, some)
    assert (missed["dice"], missed["iou"], missed["precision"], missed["recall"]) == (0, 0, 0, 0)
    assert missed["specificity"] == 1.0
    assert math.isnan(missed["hd95"])

    # no negatives in the ground truth: specificity 1 by convention
    assert binary_metrics(full, full)["specificity"] == 1.0
    assert binary_metrics(some, full)["specificity"] == 1.0


def test_rejects_probabilities_and_mismatched_shapes():
    with pytest.raises(LesiondiffError, match="threshold"):
        binary_metrics(np.full((4, 4), 0.7), np.zeros((4, 4), bool))
    with pytest.raises(LesiondiffError, match="differs"):
        binary_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_hd95_shifted_squares_is_the_shift(k):
    a = square(left=10)
    b = square(left=10 + k)
    assert hd95(a, b) == pytest.approx(k)
    assert hd95(b, a) == pytest.approx(k)
    # spacing scales the distances along the axis it belongs to (row, column)
    assert hd95(a, b, spacing=(1.0, 0.5)) == pytest.approx(0.5 * k)
    assert hd95(a, b, spacing=2.0) == pytest.approx(2 * k)


def _hd95_scipy(a, b, spacing=(1.0, 1.0)):
    """Independent HD95: edge = mask XOR erosion, EDT to the other edge, 95th percentile, max of both."""
    ea = a ^ ndimage.binary_erosion(a)
    eb = b ^ ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~eb, sampling=spacing)[ea]
    to_a = ndimage.distance_transform_edt(~ea, sampling=spacing)[eb]
    return max(np.percentile(to_b, 95), np.percentile(to_a, 95))


def test_hd95_agrees_with_monai_and_scipy_on_random_blobs():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = blob(rng), blob(rng)
        ours = hd95(a, b, spacing=(1.0, 1.5))
        monai = compute_hausdorff_distance(
            torch.tensor(a[None, None]),
            torch.tensor(b[None, None]),
            include_background=True,
            percentile=95,
            spacing=(1.0, 1.5),
        ).item()
        assert ours == pytest.approx(monai, rel=1e-5)
        assert ours == pytest.approx(_hd95_scipy(a, b, (1.0, 1.5)), rel=1e-5)


def test_dice_iou_agree_with_monai():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = blob(rng), blob(rng)
        m = binary_metrics(a, b)
        ta, tb = torch.tensor(a[None, None]).float(), torch.tensor(b[None, None]).float()
        assert m["dice"] == pytest.approx(compute_dice(ta, tb).item(), rel=1e-6)
        assert m["iou"] == pytest.approx(compute_iou(ta, tb).item(), rel=1e-6)


def test_summarize_nan_aware_population_std():
    rows = [
        {"dice": 1.0, "hd95": 2.0},
        {"dice": 0.0, "hd95": float("nan")},
        {"dice": 0.5, "hd95": 4.0},
    ]
    s = summarize(rows, keys=("dice", "hd95"))
    assert s["dice"] == {"mean": 0.5, "std": pytest.approx(np.sqrt(1 / 6)), "n": 3, "n_nan": 0}
    assert s["hd95"] == {"mean": 3.0, "std": 1.0, "n": 2, "n_nan": 1}
    all_nan = summarize([{"hd95": float("nan")}], keys=("hd95",))["hd95"]
    assert math.isnan(all_nan["mean"]) and all_nan["n"] == 0 and all_nan["n_nan"] == 1
    with pytest.raises(LesiondiffError, match="iou"):
        summarize(rows, keys=("iou",))


def test_pooled_metrics_sum_counts():
    gt1, pred1 = square((8, 8), 0, 0, 4), square((8, 8), 0, 0, 2)  # TP 4, FN 12
    gt2, pred2 = np.zeros((8, 8), bool), square((8, 8), 4, 4, 2)  # FP 4
    pooled = pooled_metrics([pred1, pred2], [gt1, gt2])
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["tn"]) == (4, 4, 12, 108)
    assert pooled["pooled_dice"] == pytest.approx(8 / 24)
    assert pooled["pooled_iou"] == pytest.approx(4 / 20)
    # differs from the per-image mean (0.4 and 0 -> 0.2), which is why it carries its own name
    assert pooled_metrics(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool))["pooled_dice"] == 1.0
    with pytest.raises(LesiondiffError, match="numbers"):
        pooled_metrics([pred1], [gt1, gt2])


def test_aggregator_groups_and_reset():
    agg = MetricAggregator()
    gt = square((8, 8), 0, 0, 4)
    r1 = agg.add(gt, gt, group="benign")
    agg.add(np.zeros((8, 8), bool), gt, group="malignant")
    agg.add(np.zeros((8, 8), bool), np.zeros((8, 8), bool))
    assert r1["dice"] == 1.0 and len(agg) == 3
    out = agg.aggregate()
    assert list(out) == ["all", "benign", "malignant"]
    assert out["all"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert out["all"]["hd95"]["n_nan"] == 1
    assert out["benign"]["dice"] == {"mean": 1.0, "std": 0.0, "n": 1, "n_nan": 0}
    assert out["malignant"]["recall"]["mean"] == 0.0
    pooled = agg.pooled()
    assert pooled["all"]["tp"] == 16 and pooled["all"]["fn"] == 16
    assert pooled["all"]["pooled_dice"] == pytest.approx(32 / 48)
    assert agg.rows[2]["group"] is None
    with pytest.raises(LesiondiffError, match="reserved"):
        agg.add(gt, gt, group="all")
    agg.reset()
    assert len(agg) == 0 and agg.aggregate() == {} and agg.pooled() == {}


def test_paired_difference_known_values():
    from lesiondiff.metrics import paired_difference

    a = [0.5, 0.6, 0.7, 0.8]
    b = [0.6, 0.7, 0.8, 0.9]  # every image +0.1: the interval collapses onto it
    d = paired_difference(a, b, n_boot=200)
    assert d["mean"] == pytest.approx(0.1) and d["ci_low"] == pytest.approx(0.1) and d["ci_high"] == pytest.approx(0.1)
    assert (d["better"], d["worse"], d["equal"], d["n"]) == (4, 0, 0, 4)
    assert d["p_wilcoxon"] == pytest.approx(0.125)  # exact two-sided signed-rank p for 4 of 4 positive
    same = paired_difference(a, a)
    assert same["mean"] == 0 and same["p_wilcoxon"] == 1.0 and same["equal"] == 4
    mixed = paired_difference([0.0, 0.0, 0.0, 0.0], [0.4, -0.2, 0.1, -0.1], n_boot=2000, seed=1)
    assert mixed["mean"] == pytest.approx(0.05) and mixed["ci_low"] < 0.05 < mixed["ci_high"]
    assert paired_difference(a, b, seed=3)["ci_low"] == paired_difference(a, b, seed=3)["ci_low"]
    with pytest.raises(LesiondiffError, match="equal-length"):
        paired_difference([1.0], [1.0, 2.0])


def test_hd95_hands_monai_writable_arrays(monkeypatch):
    """torch.as_tensor (inside MONAI) warns "The given NumPy array is not writable" once per process for a
    read-only array, such as np.asarray of a Pillow image; hd95 copies those first."""
    import monai.metrics

    real = monai.metrics.compute_hausdorff_distance
    seen = []

    def spy(y_pred, y, **kw):
        seen.append((y_pred.flags.writeable, y.flags.writeable))
        return real(y_pred, y, **kw)

    monkeypatch.setattr(monai.metrics, "compute_hausdorff_distance", spy)
    a = np.zeros((8, 8), bool)
    a[2:5, 2:5] = True
    b = np.roll(a, 1, axis=1)
    a.flags.writeable = b.flags.writeable = False
    assert hd95(a, b) == pytest.approx(1.0)
    assert seen == [(True, True)]


def test_evaluate_masks_raises_no_warning_about_read_only_arrays(tmp_path):
    """End to end in a fresh process (torch shows that warning once per process): masks at another size than
    their image are resized, which made a read-only array."""
    import subprocess
    import sys

    from PIL import Image

    gt = np.zeros((32, 32), np.uint8)
    gt[8:20, 8:20] = 255
    (tmp_path / "tool").mkdir()
    rows = ["id,image,masks,label,case,dataset,split,fold"]
    for i in range(2):
        Image.fromarray(gt // 2).save(tmp_path / f"img{i}.png")
        Image.fromarray(gt).save(tmp_path / f"gt{i}.png")
        Image.fromarray(gt).resize((16, 16), Image.NEAREST).save(tmp_path / "tool" / f"case{i}.png")
        rows.append(f"case{i},{tmp_path}/img{i}.png,{tmp_path}/gt{i}.png,benign,case{i},toy,test,-1")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    done = subprocess.run([sys.executable, "-W", "error:The given NumPy array is not writable:UserWarning", "-c",
                           "import sys; from lesiondiff.cli import main; sys.exit(main(sys.argv[1:]))",
                           "evaluate", "--masks", str(tmp_path / "tool"), "--manifest", str(tmp_path / "m.csv")],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not writable" not in done.stderr


def test_bootstrap_mean_brackets_the_mean_collapses_on_constants_and_serves_paired_difference():
    from lesiondiff.metrics import bootstrap_mean, paired_difference

    m, lo, hi = bootstrap_mean([0.2, 0.4, 0.6, 0.8])
    assert m == pytest.approx(0.5) and 0.2 <= lo < m < hi <= 0.8
    assert bootstrap_mean([0.3] * 5) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    assert bootstrap_mean([0.1, 0.9, 0.5], seed=4) == bootstrap_mean([0.1, 0.9, 0.5], seed=4)
    # paired_difference's interval is the bootstrap interval of the per-item differences, same resamples
    a, b = [0.5, 0.6, 0.7, 0.2, 0.9], [0.55, 0.5, 0.9, 0.3, 0.95]
    d = paired_difference(a, b, n_boot=500, seed=2)
    _, lo, hi = bootstrap_mean(np.subtract(b, a), n_boot=500, seed=2)
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    with pytest.raises(LesiondiffError, match="non-empty"):
        bootstrap_mean([])
