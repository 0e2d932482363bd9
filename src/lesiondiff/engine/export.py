"""A trained run -> a small run folder to ship: the EMA weights (the ones predict uses) of its best checkpoint,
floating tensors stored as float16 (half the bytes; predict loads them into float32), with its config.yaml and its
postprocess.json when it has one, both naming the training manifest by file name only (its folder is the
maker's). No optimizer state, no RNG: it predicts, it does not resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import Config
from ..errors import LesiondiffError
from ..io_utils import atomic_path, atomic_write_text
from ..postprocess import FILE as POSTPROCESS_FILE
from .checkpoint import Checkpoint, run_checkpoint


def export_run(run: str | Path, out: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``out/checkpoints/best.safetensors`` (``ema.*`` tensors), ``out/config.yaml`` and, when the run has
    it, ``out/postprocess.json``; returns ``out``."""
    run, out = Path(run), Path(out)
    ckpt = Checkpoint(run_checkpoint(run))
    weights = ckpt.section("ema") or ckpt.section("model")
    if not weights:
        raise LesiondiffError(f"{ckpt.path}: no model weights to export")
    tensors = {f"ema.{k}": (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "checkpoints" / "best.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"exported_from": str(ckpt.path), "dtype": str(dtype)})
    cfg = Config.load(run / "config.yaml")
    manifest = cfg.data.manifest
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifest=Path(manifest).name))  # its folder
    cfg.save(out / "config.yaml")  # is the maker's
    if (run / POSTPROCESS_FILE).is_file():  # its record names the manifest it was chosen on: by name, too
        text = (run / POSTPROCESS_FILE).read_text(encoding="utf-8")
        atomic_write_text(out / POSTPROCESS_FILE, text.replace(manifest, cfg.data.manifest) if manifest else text)
    return out
