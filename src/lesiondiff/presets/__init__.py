"""The presets (each published method's YAML: network, objective, sampler, fusion, with its paper's optimiser),
the training recipes laid over them (``recipes/``: ``fast``, the default, or ``paper``) and the overlays
(``overlays/``: partial configs such as the demo's small network), and how they are loaded into a
:class:`~lesiondiff.config.Config`. The YAML files lie beside this module."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ..config import Config
from ..errors import LesiondiffError


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


DEFAULT_RECIPE = "fast"


def recipe_names() -> list[str]:
    folder = resources.files(__name__) / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """A recipe (``presets/recipes/<name>.yaml``): ``train`` settings laid over a preset's, and ``augment``,
    augmentations added to the preset's own (see :func:`apply_recipe`)."""
    path = resources.files(__name__) / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise LesiondiffError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(data) - {"train", "augment"})
    if unknown:
        raise LesiondiffError(f"recipe {name}: unknown section {unknown[0]!r}; known: train, augment")
    return data


def apply_recipe(preset: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """A preset's YAML data with a recipe laid over it.

    ``train``: the recipe's keys replace the preset's (its other train keys, e.g. a validation sampler, stay).
    ``augment``: the recipe's augmentations, plus the preset's own where the preset names one (the paper's
    augmentation: PGDiffSeg's six-fold copies, DiffSeg's rot90 + blur); ``flip`` is not added to ``sixfold``,
    which holds the flips already. A recipe without ``augment`` keeps the preset's (or the default).
    """
    data = {**preset, "train": {**(preset.get("train") or {}), **(recipe.get("train") or {})}}
    if recipe.get("augment") is not None:
        own = list((preset.get("data") or {}).get("augment") or [])
        added = [a for a in recipe["augment"] if a not in own and not (a == "flip" and "sixfold" in own)]
        data["data"] = {**(preset.get("data") or {}), "augment": added + own}
    return data


def overlay_names() -> list[str]:
    folder = resources.files(__name__) / "overlays"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_overlay(name: str) -> list[str]:
    """An overlay (``presets/overlays/<name>.yaml``: a partial config, e.g. the demo's small network) as
    ``section.key=value`` overrides, to lay over a preset and its recipe with :meth:`Config.override`."""
    path = resources.files(__name__) / "overlays" / f"{name}.yaml"
    if not path.is_file():
        raise LesiondiffError(f"unknown overlay {name!r}; known: {', '.join(overlay_names())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = []
    for section, values in data.items():
        if not isinstance(values, dict):
            raise LesiondiffError(f"overlay {name}: section {section!r} must be a mapping")
        out += [f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                for key, value in values.items()]
    return out


def load_preset(name: str, recipe: str | None = None) -> Config:
    """A preset is a partial YAML config over the defaults; its ``preset`` field is set to its name. The preset
    describes the method (network, objective, sampler, fusion) with its paper's optimiser settings; ``recipe``
    (default :data:`DEFAULT_RECIPE`) lays a training recipe over them (``paper``: none, the paper's own)."""
    path = resources.files(__name__) / f"{name}.yaml"
    if not path.is_file():
        raise LesiondiffError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    recipe = recipe or DEFAULT_RECIPE
    data = apply_recipe(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, load_recipe(recipe))
    data["preset"] = name
    data["recipe"] = recipe
    return Config.from_dict(data, source=f"preset {name} with recipe {recipe}")
