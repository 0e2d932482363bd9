"""Training recipes laid over the presets' methods."""

import pytest

from lesiondiff.errors import LesiondiffError
from lesiondiff.presets import (
    DEFAULT_RECIPE,
    apply_recipe,
    load_preset,
    load_recipe,
    preset_names,
    recipe_names,
)


def test_recipes_are_listed_and_the_fast_one_is_the_default():
    assert {"fast", "paper"} <= set(recipe_names())
    assert DEFAULT_RECIPE == "fast"
    assert load_preset("unet").recipe == "fast"


def test_paper_recipe_keeps_each_papers_optimiser_settings():
    for name in preset_names():
        paper = load_preset(name, "paper")
        assert paper.recipe == "paper" and paper.train.schedule == "constant" and paper.train.warmup == 0
    assert load_preset("ensemdiff", "paper").train.lr == 1e-4
    assert load_preset("diffseg-weak", "paper").train.lr == 5e-4
    assert load_preset("diffseg-weak", "paper").train.batch_size == 4


def test_fast_recipe_replaces_the_optimiser_and_adds_flips_to_the_papers_augmentation():
    fast = load_recipe("fast")
    for name in preset_names():
        cfg = load_preset(name, "fast")
        for key, value in fast["train"].items():
            assert getattr(cfg.train, key) == pytest.approx(value), (name, key)
    assert load_preset("unet").data.augment == ["flip"]  # no augmentation of its own: flips only
    assert load_preset("pgdiffseg").data.augment == ["sixfold"]  # six-fold copies hold the flips already
    assert load_preset("diffseg-weak").data.augment == ["flip", "rot90", "blur"]
    assert load_preset("palscdiff").data.augment == ["flip"]  # PAL's hard-sample augmentation stays
    assert load_preset("palscdiff").curriculum.name == "palscdiff"
    assert load_preset("unisegdiff").train.val_sampler == "staged"  # the method's own train keys survive


def test_apply_recipe_without_augment_keeps_the_preset_and_unknown_recipes_fail():
    preset = {"data": {"augment": ["blur"]}, "train": {"lr": 1e-4, "val_sampler": "ddim"}}
    out = apply_recipe(preset, {"train": {"lr": 1e-3}})
    assert out["train"] == {"lr": 1e-3, "val_sampler": "ddim"} and out["data"]["augment"] == ["blur"]
    with pytest.raises(LesiondiffError, match="unknown recipe 'slow'"):
        load_preset("unet", "slow")
