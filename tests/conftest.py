"""Shared fixtures. Real datasets are read from $LESIONDIFF_DATA, by default ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_settings import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LESIONDIFF_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real datasets not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom set in the generic layout, made once per session."""
    from lesiondiff.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("phantoms"), n=40, size=64, seed=0)


@pytest.fixture(scope="session")
def phantom_manifest(phantom_dir, tmp_path_factory) -> Path:
    """A manifest of the phantom set with the seed-0 70/15/15 split."""
    from lesiondiff.data.layouts import index_folder
    from lesiondiff.data.manifest import Manifest
    from lesiondiff.data.splits import assign_splits

    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    Manifest.from_records(assign_splits(index_folder(phantom_dir).records, seed=0)).write(path)
    return path


TINY_RUN = [*TINY_MODEL, "data.size=32",
            "train.batch_size=8", "train.lr=1e-3", "train.val_steps=2", "data.val_max_images=4"]


@pytest.fixture(scope="session")
def train_tiny_run(phantom_manifest):
    """``train_tiny_run(preset, out, steps, *overrides) -> out``: a tiny 32 px run (8-channel base, two levels)
    trained on the phantom manifest, for tests of tools that read runs."""
    from lesiondiff.engine.runs import train_run
    from lesiondiff.presets import load_preset

    def train(preset: str, out: Path, steps: int, *overrides: str) -> Path:
        cfg = load_preset(preset).override([f"data.manifest={phantom_manifest}", f"train.steps={steps}",
                                            f"train.val_every={steps}", f"train.log_every={steps}", *TINY_RUN,
                                            *overrides])
        train_run(cfg, out, device="cpu")
        return out

    return train
