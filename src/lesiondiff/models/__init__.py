"""Architectures, one per file. Importing this package registers every design in ``MODELS``; ``lesiondiff.build``
builds them from a Config."""

from __future__ import annotations

from . import (  # noqa: F401  (registration)
    diffseg,
    ensemdiff,
    medsegdiff,
    palscdiff,
    pgdiffseg,
    refiner,
    segdiff,
    unet,
    unisegdiff,
)
from .base import MODELS, Denoiser, DenoiserOutput, count_parameters

__all__ = ["MODELS", "Denoiser", "DenoiserOutput", "count_parameters"]
