"""Shared fixtures. Real datasets are read from $LESIONDIFF_DATA, by default ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
