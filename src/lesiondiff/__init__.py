"""lesiondiff: diffusion-model segmentation of lesions in 2D medical images.

``lesiondiff.load("busi" | "runs/my_run")`` gives a ready segmenter (:func:`lesiondiff.api.load`). Importing
the package loads nothing heavy: ``lesiondiff.load`` imports the API, and with it the engine and torch, when
it is first looked up."""

from __future__ import annotations

from .errors import LesiondiffError

__version__ = "0.1.0"

__all__ = ["LesiondiffError", "load"]


def __getattr__(name: str):
    if name == "load":
        from .api import load

        return load
    raise AttributeError(f"module 'lesiondiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "load"])
