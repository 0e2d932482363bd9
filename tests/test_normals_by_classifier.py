"""The image-level head of benchmarks/normals_by_classifier.py on values worked by hand."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lesiondiff.models.unet import UNet  # noqa: E402
from normals_by_classifier import (  # noqa: E402
    all_features,
    choose,
    fine_tune,
    fit_logistic,
    gated,
    lesion_probability,
    linear_head,
    pooled,
)
from normals_by_score import separation_auroc  # noqa: E402


def test_pooled_is_the_channel_mean_then_the_channel_max():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[-1.0, -1.0], [-1.0, -5.0]]]])  # [1,2,2,2]
    assert pooled(x).tolist() == [[3.0, -2.0, 6.0, -1.0]]


def test_without_features_the_bias_is_the_log_odds_of_the_labels():
    y = np.array([1.0, 1.0, 1.0, 0.0])
    w = fit_logistic(np.zeros((4, 1)), y, penalty=5.0)
    assert w[-1] == pytest.approx(np.log(3.0), abs=1e-5)
    assert lesion_probability(w, np.zeros((1, 1)))[0] == pytest.approx(0.75, abs=1e-5)


def test_the_fit_is_a_stationary_point_of_the_penalised_log_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(float)
    penalty = 2.0
    w = fit_logistic(x, y, penalty)

    def objective(v):
        z = np.hstack([x, np.ones((40, 1))]) @ v
        return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * penalty * v[:-1] @ v[:-1]

    eps = 1e-6
    grad = [(objective(w + eps * e) - objective(w - eps * e)) / (2 * eps) for e in np.eye(4)]
    assert np.abs(grad).max() < 1e-3
    assert w[0] > 1.0  # the informative feature carries the weight
    assert objective(w) < objective(np.zeros(4))


def test_choose_keeps_the_stronger_penalty_on_a_tie():
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    normal = np.array([True, True, False, False])
    penalty, _, tried = choose((x, normal), (x, normal), penalties=(0.1, 1.0))
    assert [t["val_auroc"] for t in tried] == [1.0, 1.0]
    assert penalty == 1.0


def test_gated_reads_the_folders_order_and_refuses_other_labels(tmp_path):
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "which", "label", "dice"])
        w.writeheader()
        w.writerows([{"id": "b", "which": "fused", "label": "normal", "dice": "1"},
                     {"id": "b", "which": "sample_0", "label": "normal", "dice": "0"},
                     {"id": "a", "which": "fused", "label": "benign", "dice": "0.5"}])
    prob, normal, dice = gated(["a", "b", "c"], np.array([0.9, 0.2, 0.4]), np.array([False, True, False]), tmp_path)
    assert prob.tolist() == [0.2, 0.9] and normal.tolist() == [True, False] and dice.tolist() == [1.0, 0.5]
    with pytest.raises(SystemExit, match="labels differ"):
        gated(["a", "b"], np.array([0.9, 0.2]), np.array([True, True]), tmp_path)
    with pytest.raises(SystemExit, match="'b'"):
        gated(["a"], np.array([0.9]), np.array([False]), tmp_path)


def test_the_linear_head_on_raw_features_equals_the_fit_on_standardised_ones():
    rng = np.random.default_rng(1)
    raw = rng.normal(3.0, 2.0, size=(10, 4))
    mean, spread = raw.mean(0), raw.std(0)
    w = rng.normal(size=5)
    head = linear_head(w, mean, spread)
    with torch.no_grad():
        got = torch.sigmoid(head(torch.as_tensor(raw).float())).numpy()[:, 0]
    assert got == pytest.approx(lesion_probability(w, (raw - mean) / spread), abs=1e-6)


def tiny_unet():
    torch.manual_seed(0)
    return UNet(1, base_channels=8, channel_mult=(1, 2), attention_levels=(False, False), num_groups=4)


def test_fine_tune_trains_only_the_encoder_and_head_and_keeps_the_best_state():
    x = torch.randn(8, 1, 16, 16)
    normal = np.array([True, False] * 4)
    model, head = tiny_unet(), torch.nn.Linear(32, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # scored only at step 0: whatever the steps did, the step-0 state is the best and is loaded back
    out = fine_tune(model, head, (x, normal), (x, normal), minutes=0.02, every=10**9)
    assert out["steps"] > 0 and out["best_step"] == 0 and len(out["val_auroc"]) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # scored every step: the kept state is the one of the best recorded AUROC, and the decoder never moves
    model = tiny_unet()
    out = fine_tune(model, head, (x, normal), (x, normal), minutes=0.02, every=1)
    aurocs = dict(out["val_auroc"])
    assert aurocs[out["best_step"]] == max(aurocs.values())
    decoder = [k for k in before if k.startswith(("body.up", "body.out"))]
    assert decoder and all(torch.equal(before[k], model.state_dict()[k]) for k in decoder)
    with torch.no_grad():
        again = separation_auroc(head(torch.as_tensor(all_features(model, x)).float())[:, 0].numpy(), normal)
    assert again == pytest.approx(aurocs[out["best_step"]])
