"""Architectures. Importing this package registers every design in ``MODELS``."""

from __future__ import annotations

import torch

from ..config import Config
from ..errors import LesiondiffError
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

__all__ = ["MODELS", "Denoiser", "DenoiserOutput", "build_model", "check_size", "count_parameters"]


def build_model(cfg: Config, image_channels: int) -> Denoiser:
    """Construct the configured architecture for images with ``image_channels`` channels."""
    m = cfg.model
    prediction = "x0" if cfg.diffusion.mode == "feedforward" else cfg.diffusion.prediction
    kwargs = dict(
        image_channels=image_channels, base_channels=m.base_channels, channel_mult=list(m.channel_mult),
        num_res_blocks=m.num_res_blocks, attention_levels=list(m.attention_levels), num_groups=m.num_groups,
        dropout=m.dropout, prediction=prediction, **m.options,
    )
    try:
        model = MODELS.build(m.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise LesiondiffError(f"model {m.name!r}: {exc}") from None
    # channels_last makes oneDNN's (CPU) and cuDNN's convolutions faster: 1.3x for a training step at 128 px here.
    return model.to(memory_format=torch.channels_last)



def size_multiple(model: Denoiser) -> int:
    """What the network's input side must be a multiple of: its total stride."""
    multiple = getattr(model, "multiple", None)
    return int(multiple if multiple is not None else model.body.multiple)


def check_size(cfg: Config, image_channels: int = 1) -> None:
    """``data.size`` against the configured network's total stride, before any data or weights load: the
    network is built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = build_model(cfg, image_channels)
    multiple = size_multiple(model)
    if cfg.data.size % multiple:
        raise LesiondiffError(f"data.size {cfg.data.size}: model {cfg.model.name!r} needs a multiple of {multiple} (its total stride), e.g. "
                              f"{max(multiple, round(cfg.data.size / multiple) * multiple)}")
