"""Models that ship with the package: each is a run folder (``checkpoints/best.safetensors`` with the EMA
weights in float16, ``config.yaml``, ``MODEL_CARD.md`` and ``card.json``, the card's numbers), so that every
command that reads a run reads it with ``--model NAME`` instead of ``--run DIR``. They are made by
``benchmarks/ship_models.py`` (``engine/export.py``, ``reporting/model_card.py``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import LesiondiffError

CARD = "card.json"


def folder() -> Path:
    """Where the shipped models lie (inside the installed package)."""
    return Path(str(resources.files("lesiondiff.shipped")))


def model_names() -> list[str]:
    return sorted(p.name for p in folder().iterdir() if (p / CARD).is_file())


def model_dir(name: str) -> Path:
    """The run folder of the shipped model ``name``; an unknown name is a one-line error listing the known."""
    path = folder() / name
    if not (path / CARD).is_file():
        raise LesiondiffError(f"unknown model {name!r}; shipped: {', '.join(model_names()) or 'none'} "
                              "(lesiondiff models lists them)")
    return path


def model_bytes(name: str) -> int:
    """The shipped model's size on disk: every file of its folder."""
    return sum(f.stat().st_size for f in model_dir(name).rglob("*") if f.is_file())


def model_card(name: str) -> dict:
    return json.loads((model_dir(name) / CARD).read_text(encoding="utf-8"))


def run_folder(run: str | None, model: str | None) -> Path:
    """The run folder a command reads: ``--run DIR`` or a shipped ``--model NAME`` (exactly one of them)."""
    if (run is None) == (model is None):
        raise LesiondiffError("give either --run DIR (a trained run) or --model NAME (a shipped model)")
    return model_dir(model) if model is not None else Path(run)
