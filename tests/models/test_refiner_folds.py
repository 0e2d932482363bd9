"""Cross-fitted refiner priors (model.options.prior_folds): the folds, the rows each fold prior trains on, the
routing of each training image to the fold prior that did not see it, and the inference prior chosen on
validation."""

import csv
import json

import pytest
import torch

from lesiondiff.build import build_model
from lesiondiff.config import Config
from lesiondiff.data.dataset import load_rows, select_rows
from lesiondiff.data.manifest import Manifest
from lesiondiff.data.splits import case_folds, fold_of_row
from lesiondiff.engine.predict import Predictor, collect_inputs
from lesiondiff.engine.runs import train_run
from lesiondiff.errors import LesiondiffError
from lesiondiff.models.refiner import Refiner
from lesiondiff.presets import load_preset

SMALL = ["model.base_channels=8", "model.channel_mult=[1,2,2]", "model.attention_levels=[false,false,true]",
         "model.options.refine_channels=8", "model.options.refine_mult=[1,2]"]


def rows(cases):
    return [{"id": f"{c}_{j}", "case": c, "dataset": "d"} for c in cases for j in range(2)]


def test_case_folds_are_balanced_seeded_and_keep_a_case_together():
    r = rows([f"c{i}" for i in range(7)])
    folds = case_folds(r, 3)
    assert folds == case_folds(list(reversed(r)), 3)  # the order of the rows does not matter
    sizes = sorted(list(folds.values()).count(k) for k in range(3))
    assert sizes == [2, 2, 3]  # 7 cases dealt round robin
    assert {fold_of_row(x, folds) for x in r if x["case"] == "c4"} == {folds[("d", "c4")]}
    assert case_folds(r, 3, seed=1) != folds or case_folds(r, 3, seed=2) != folds
    with pytest.raises(LesiondiffError, match="at least 2 folds"):
        case_folds(r, 1)


def test_train_folds_leave_out_one_fold_of_the_training_rows(phantom_manifest):
    manifest = Manifest.read(phantom_manifest)
    base = load_preset("unet").override([f"data.manifest={phantom_manifest}"]).data
    train = select_rows(manifest, base, "train")
    folds = case_folds(train, 2)
    kept = [{r["id"] for r in select_rows(manifest, Config().override([f"data.train_folds=[2,{k}]"]).data, "train")}
            for k in range(2)]
    for k in range(2):
        assert kept[k] == {r["id"] for r in train if fold_of_row(r, folds) != k}
    assert kept[0].isdisjoint(kept[1]) and kept[0] | kept[1] == {r["id"] for r in train}
    for bad in ("[2,2]", "[1,0]", "[3]"):
        data = Config().override([f"data.train_folds={bad}"]).data
        with pytest.raises(LesiondiffError, match="data.train_folds"):
            select_rows(manifest, data, "train")


def folded_refiner():
    cfg = load_preset("refiner").override([*SMALL, "model.options.prior_folds=2"])
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    for prior in (model.prior, *model.fold_priors):  # three different, not all-zero priors
        for p in prior.parameters():
            p.data.normal_(0, 0.2)
    return model


def test_each_image_gets_the_logits_of_its_fold_prior_and_inference_the_chosen_prior():
    model = folded_refiner().train()
    image = torch.randn(4, 3, 32, 32)
    fold = torch.tensor([1, 0, 1, 0])
    got = model.encode(image, fold=fold)["logits"]
    for i, k in enumerate(fold.tolist()):
        prior = model.fold_priors[k]
        assert torch.allclose(got[i:i + 1], prior.body(prior.encode(image[i:i + 1])), atol=1e-5)
    assert model.encode(image, fold=fold)["features"] == []  # the priors' features do not enter
    with pytest.raises(LesiondiffError, match="does not pass each image's fold"):
        model.encode(image)
    model.eval()
    assert model.validation_choices == ("full prior", "fold average")
    full = model.encode(image)["logits"]
    assert torch.allclose(full, model.prior.body(model.prior.encode(image)), atol=1e-5)
    model.choose("fold average")
    mean = torch.stack([p.body(p.encode(image)) for p in model.fold_priors]).mean(0)
    assert torch.allclose(model.encode(image)["logits"], mean, atol=1e-5)
    assert "prior_choice" in model.state_dict()  # each checkpoint carries its choice
    with pytest.raises(LesiondiffError, match="prior_folds must be 0 .off. or at least 2"):
        build_model(load_preset("refiner").override([*SMALL, "model.options.prior_folds=1"]), 3)


@pytest.mark.slow
def test_no_fold_prior_has_seen_an_image_its_refiner_rows_were_trained_on(phantom_manifest, tmp_path, monkeypatch):
    """A tiny run with 2 fold priors, aligned x0 training with recycling (whose extra pass routes its subset of
    images too): every image the refiner trained on got its logits from the fold prior whose training rows (read
    back from that prior's own run folder) do not contain it."""
    seen = []
    original = Refiner.fold_logits

    def spy(self, image, fold):
        seen.append((image.detach().clone(), fold.clone()))
        return original(self, image, fold)

    monkeypatch.setattr(Refiner, "fold_logits", spy)
    cfg = load_preset("refiner").override([
        f"data.manifest={phantom_manifest}", "train.steps=12", "train.val_every=6", "train.log_every=6",
        "data.size=32", "data.val_max_images=4", "data.augment=[]", "train.warmup=2", *SMALL,
        "model.options.prior_folds=2", "diffusion.objective=x0_dice_bce", "diffusion.timestep_sampling=aligned",
        "diffusion.objective_options={recycle: 0.5}"])
    out = tmp_path / "run"
    summary = train_run(cfg, out, device="cpu")
    assert summary["status"] == "finished"
    parts = summary["pretraining"]["parts"]
    assert list(parts) == ["prior", "prior-fold-0", "prior-fold-1"]
    assert all(p["step"] == round(0.6 / 3 * 12) for p in parts.values())  # the prior phase's share, split 3 ways

    manifest = Manifest.read(phantom_manifest)
    fold_ids = {}
    for k in range(2):
        prior_cfg = Config.load(out / f"prior-fold-{k}" / "config.yaml")
        assert prior_cfg.data.train_folds == [2, k]
        fold_ids[k] = {r["id"] for r in select_rows(manifest, prior_cfg.data, "train")}
        assert json.loads((out / f"prior-fold-{k}" / "summary.json").read_text())["train_images"] == len(fold_ids[k])
    train_rows = select_rows(manifest, cfg.data, "train")
    channels = Config.load(out / "config.yaml").data.channels
    data = load_rows(train_rows, cfg.data, channels, desc="")
    by_image = {hash(data.images[i].float().numpy().tobytes()): r["id"] for i, r in enumerate(train_rows)}
    routed = [(by_image.get(hash(img.numpy().tobytes())), k) for images, folds in seen
              for img, k in zip(images, folds.tolist())]
    assert None not in {id_ for id_, _ in routed}  # every routed image is a training image
    assert len(routed) >= 12 * 8  # every training image of every step, and the recycled ones again
    for id_, k in routed:
        assert id_ not in fold_ids[k], f"{id_} was in fold prior {k}'s training rows"
    assert {k for _, k in routed} == {0, 1}
    with (out / "folds.csv").open() as f:
        recorded = {r["id"]: int(r["fold"]) for r in csv.DictReader(f)}
    assert all(recorded[id_] == k for id_, k in routed)
    assert summary["cross_fitting"]["train_images_per_fold"] == [
        sum(v == k for v in recorded.values()) for k in range(2)]

    choice = summary["validation_choice"]
    assert set(choice["val_dice"]) == {"full prior", "fold average"}
    assert choice["val_dice"][choice["chosen"]] == max(choice["val_dice"].values()) == summary["best_val_dice"]
    log = list(csv.DictReader((out / "log.csv").open()))
    assert {"val_dice_full_prior", "val_dice_fold_average", "chosen"} <= set(log[0])
    predictor = Predictor.from_run(out, device="cpu")
    model = predictor.model
    assert model.validation_choices[int(model.prior_choice)] == choice["chosen"]
    predictor.run(collect_inputs([], str(phantom_manifest), "test")[:2], tmp_path / "pred")
    assert len(list((tmp_path / "pred").glob("*_probs.npz"))) == 2
