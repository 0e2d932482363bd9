"""The S members of an image: test-time augmentation maps every member back exactly, MC dropout draws distinct
seeded members, an ensemble's members are distinct runs whose budget is the sum of theirs, and predict writes
each image's scores through the same path."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from lesiondiff.cli import main
from lesiondiff.config import Config
from lesiondiff.diffusion.samplers import OneShotSampler
from lesiondiff.engine.ensemble import make_ensemble
from lesiondiff.engine.members import TTA_GROUPS, Members, Source, forward_view, inverse_view
from lesiondiff.errors import LesiondiffError
from lesiondiff.models.base import Denoiser, DenoiserOutput


class PixelNet(Denoiser):
    """x0 logits = a fixed per-pixel function of the image (no noise input): equivariant to every flip and turn,
    so a member mapped back exactly equals the untransformed one, pixel for pixel."""

    prediction = "x0"
    takes_noise = False

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(3.0))

    def encode(self, image):
        return image

    def denoise(self, x_t, t, condition):
        return DenoiserOutput(x0=self.scale * condition.mean(1, keepdim=True))


def asymmetric_image(size=16):
    """No flip or turn maps it onto itself: a ramp plus a blob in one corner."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    img = (x * 0.7 + y * 0.2) / size - 0.5
    img[2:5, 9:14] += 0.8
    return torch.from_numpy(img)[None, None]


def test_views_are_exact_inverses_and_distinct():
    x = asymmetric_image()
    seen = set()
    for view in TTA_GROUPS["d4"]:
        y = forward_view(x, view)
        assert torch.equal(inverse_view(y, view), x)
        seen.add(y.numpy().tobytes())
    assert len(seen) == 8  # the eight symmetries of the square all differ on this image
    assert TTA_GROUPS["flips"] == ((0, False), (0, True), (2, True), (2, False))


def test_tta_maps_each_member_back_exactly():
    net = PixelNet().eval()
    source = Source(net, OneShotSampler(Config().diffusion))
    x = asymmetric_image()
    plain = Members([source], 1)(x, 1, torch.Generator().manual_seed(0), 0)
    for group, n in (("flips", 4), ("d4", 8)):
        members = Members([source], n, tta=group)
        probs = members(x, 1, torch.Generator().manual_seed(0), 0)
        assert probs.shape == (n, 16, 16) and members.distinct() == n
        for k in range(n):
            assert np.array_equal(probs[k], plain[0])  # every view mapped back onto the image


class Offset(Denoiser):
    """Logits that depend on the image position in a way flips change, to show each member used its own view."""

    prediction = "x0"
    takes_noise = False

    def encode(self, image):
        return image

    def denoise(self, x_t, t, condition):
        ramp = torch.linspace(-2, 2, condition.shape[-1]).expand_as(condition[:, :1])
        return DenoiserOutput(x0=ramp + 0 * condition[:, :1])


def test_tta_members_see_their_own_view():
    source = Source(Offset(), OneShotSampler(Config().diffusion))
    probs = Members([source], 4, tta="flips")(asymmetric_image(), 1, torch.Generator(), 0)
    # the network's ramp runs left to right whatever it sees; mapped back, a member seen flipped left-right has it
    # reversed, one seen upside down has it as it is
    assert np.array_equal(probs[1], probs[0][:, ::-1]) and np.array_equal(probs[2], probs[0])
    assert np.array_equal(probs[3], probs[0][:, ::-1]) and not np.array_equal(probs[0], probs[1])


class Dropped(PixelNet):
    def __init__(self, p=0.5):
        super().__init__()
        self.drop = torch.nn.Dropout(p)

    def denoise(self, x_t, t, condition):
        return DenoiserOutput(x0=self.drop(self.scale * condition.mean(1, keepdim=True)))


def test_mc_dropout_members_differ_and_repeat_with_the_seed():
    source = Source(Dropped().eval(), OneShotSampler(Config().diffusion))
    members = Members([source], 5, mc_dropout=True)
    a = members(asymmetric_image(), 1, torch.Generator(), seed=7)
    b = members(asymmetric_image(), 1, torch.Generator(), seed=7)
    assert np.array_equal(a, b) and members.distinct() == 5
    assert len({m.tobytes() for m in a}) == 5
    assert not source.model.drop.training  # left in eval mode afterwards
    with pytest.raises(LesiondiffError, match="model.dropout > 0"):
        Members([Source(PixelNet(), OneShotSampler(Config().diffusion))], 3, mc_dropout=True)


def test_an_ensemble_takes_member_i_from_run_i_mod_m():
    a, b = PixelNet().eval(), PixelNet().eval()
    with torch.no_grad():
        b.scale.fill_(-3.0)
    sampler = OneShotSampler(Config().diffusion)
    members = Members([Source(a, sampler), Source(b, sampler)], 4)
    probs = members(asymmetric_image(), 1, torch.Generator(), 0)
    assert members.distinct() == 2 and np.array_equal(probs[0], probs[2]) and np.array_equal(probs[1], probs[3])
    assert np.allclose(probs[0] + probs[1], 1.0, atol=1e-6)  # sigmoid(z) + sigmoid(-z)


@pytest.fixture(scope="module")
def unets(train_tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [train_tiny_run("unet", root / f"u{k}", 3, f"train.seed={k}") for k in range(3)]


def test_make_ensemble_needs_distinct_runs_and_sums_their_budgets(unets, tmp_path):
    record = make_ensemble(tmp_path / "ens", unets)
    budgets = [json.loads((u / "summary.json").read_text())["elapsed_s"] for u in unets]
    assert record["budget_s"] == pytest.approx(sum(budgets), abs=0.1)
    assert [b["elapsed_s"] for b in record["budgets"]] == budgets
    assert len(set(record["members"])) == 3
    assert Config.load(tmp_path / "ens" / "config.yaml").sample.samples == 3
    with pytest.raises(LesiondiffError, match="given twice"):
        make_ensemble(tmp_path / "twice", [unets[0], unets[0]])
    copy = tmp_path / "copy"
    shutil.copytree(unets[0], copy)
    with pytest.raises(LesiondiffError, match="hold the same weights"):
        make_ensemble(tmp_path / "same", [unets[0], copy])


def test_predict_writes_scores_for_every_source(unets, phantom_manifest, tmp_path, capsys):
    base = ["--manifest", str(phantom_manifest), "--split", "test"]

    def rows(out):
        with (out / "predictions.csv").open() as f:
            return list(csv.DictReader(f))

    assert main(["predict", "--run", str(unets[0]), *base, "--out", str(tmp_path / "one")]) == 0
    one = rows(tmp_path / "one")
    assert one and all("agreement" not in r for r in one)  # S = 1: the entropy scores only
    assert all(0 <= float(r["entropy"]) <= 1 for r in one)
    assert main(["predict", "--run", str(unets[0]), *base, "--tta", "flips", "--samples", "4",
                 "--out", str(tmp_path / "tta")]) == 0
    meta = json.loads((tmp_path / "tta" / "predict.json").read_text())
    assert meta["members"] == {"distinct": 4, "runs": 1} and "test-time augmentation" in meta["samples_are"]
    assert 0 < meta["speed"]["scores_s"] < meta["speed"]["predict_s"]
    assert all(0 <= float(r["agreement"]) <= 1 for r in rows(tmp_path / "tta"))
    assert main(["ensemble", "--out", str(tmp_path / "ens"), *map(str, unets)]) == 0
    assert main(["predict", "--run", str(tmp_path / "ens"), *base, "--out", str(tmp_path / "ens_pred")]) == 0
    assert main(["predict", *[a for u in unets for a in ("--run", str(u))], *base,
                 "--out", str(tmp_path / "fly")]) == 0
    folder, fly = rows(tmp_path / "ens_pred"), rows(tmp_path / "fly")
    assert [r["agreement"] for r in folder] == [r["agreement"] for r in fly]  # the same ensemble either way
    assert json.loads((tmp_path / "ens_pred" / "predict.json").read_text())["members"] == {"distinct": 3,
                                                                                           "runs": 3}
    capsys.readouterr()
