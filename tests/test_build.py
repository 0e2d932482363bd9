"""build.py: every part from a Config, each method's parts registered by methods/, options checked against the
constructor, capabilities declared on the model class, and the layers below build never reaching up."""

import ast
from pathlib import Path

import pytest

import lesiondiff
from lesiondiff.build import build_model, build_objective, build_sampler, checked_options, sampler_name
from lesiondiff.config import Config
from lesiondiff.diffusion.objectives import OBJECTIVES
from lesiondiff.diffusion.samplers import SAMPLERS
from lesiondiff.diffusion.timesteps import TIMESTEP_SAMPLERS
from lesiondiff.errors import LesiondiffError
from lesiondiff.models import MODELS
from lesiondiff.presets import load_preset
from lesiondiff.pretraining import PRETRAINING
from tiny_settings import TINY_MODEL

ROOT = Path(lesiondiff.__file__).parent


def test_each_papers_parts_are_registered_from_its_methods_file():
    where = {name: OBJECTIVES.get(name).__module__ for name in OBJECTIVES.names()}
    where.update({f"sampler {name}": SAMPLERS.get(name).__module__ for name in SAMPLERS.names()})
    assert where["eps_bce_align"] == "lesiondiff.methods.palscdiff"
    assert where["eps_prior"] == "lesiondiff.methods.pgdiffseg"
    assert where["staged"] == where["sampler staged"] == "lesiondiff.methods.unisegdiff"
    assert where["class_eps"] == where["sampler class_difference"] == "lesiondiff.methods.diffseg"
    assert where["sampler refine"] == "lesiondiff.methods.refiner"
    assert where["feedforward"] == "lesiondiff.methods.analysing"
    assert TIMESTEP_SAMPLERS.get("fingerprint").__module__ == "lesiondiff.methods.analysing"
    generic = {"eps_mse", "x0_hybrid", "x0_dice_bce", "sampler ddpm", "sampler ddim", "sampler oneshot"}
    assert {where[n] for n in generic} <= {"lesiondiff.diffusion.objectives", "lesiondiff.diffusion.samplers"}


def test_the_generic_layers_never_import_a_method_or_the_builder():
    """models/ and diffusion/ are below methods/ and build.py: they are imported by them, never the reverse."""
    for path in [*ROOT.joinpath("models").glob("*.py"), *ROOT.joinpath("diffusion").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                top = (node.module or "").split(".")[0]
                assert top not in ("methods", "build", "engine", "experiments", "cli"), (path.name, node.module)


def test_capabilities_are_declared_on_the_class_and_match_what_it_has():
    for name in MODELS.names():
        cls = MODELS.get(name)
        assert cls.class_conditional == hasattr(cls, "noise_prediction"), name
        assert (cls.pretrained_part is not None) == (name in PRETRAINING), name
    assert [n for n in MODELS.names() if MODELS.get(n).has_prior_mask] == ["refiner"]
    assert {n: MODELS.get(n).pretrained_part for n in PRETRAINING.names()} == {"refiner": "prior",
                                                                                 "unisegdiff": "cfenet"}


def test_model_options_are_checked_against_the_constructor_with_their_types():
    base = Config().override([*TINY_MODEL, "model.name=palscdiff"])
    assert build_model(base.override(["model.options.branches=1"]), 1).heads.__len__() == 0  # MedSegDiff's head
    assert build_model(base.override(["model.options.ff_size=8"]), 1) is not None  # a base class's keyword
    with pytest.raises(LesiondiffError, match=r"^model.options.branchez: not an option of model 'palscdiff' "
                                              r"\(known: base_channels, branches,"):
        build_model(base.override(["model.options.branchez=1"]), 1)
    with pytest.raises(LesiondiffError, match=r"^model.options.branches: expected int, got 'two'$"):
        build_model(base.override(["model.options.branches=two"]), 1)


def test_checked_options_coerce_to_the_annotated_type():
    def part(cfg, max_batch: int = 0, n: int = 1, x: float = 1.0, flag: bool = True, name: str = "a"):
        return None

    assert checked_options(part, {"n": 3.0, "x": 2, "flag": 0, "name": "b"}, "sample.options", "p") == {
        "n": 3, "x": 2.0, "flag": False, "name": "b"}
    for bad, why in (({"n": 2.5}, "expected int"), ({"flag": 2}, "expected bool"), ({"x": "one"}, "expected float"),
                     ({"max_batch": 1}, "not an option")):
        with pytest.raises(LesiondiffError, match=why):
            checked_options(part, bad, "sample.options", "p")


def test_the_feed_forward_rule_is_applied_once_in_build():
    cfg = load_preset("ensemdiff").override(["diffusion.mode=feedforward", "sample.options.anything=1"])
    assert sampler_name(cfg) == sampler_name(cfg, "ddim") == "oneshot"
    assert type(build_sampler(cfg)).__name__ == "OneShotSampler"  # the preset's sampler options are not its
    assert type(build_objective(cfg.diffusion)).__name__ == "FeedForward"
    assert build_model(cfg.override(TINY_MODEL), 1).prediction == "x0"
