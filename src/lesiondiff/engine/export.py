"""A trained run -> a small run folder to ship: the EMA weights (the ones predict uses) of its best checkpoint,
floating tensors stored as float16 (half the bytes; predict loads them into float32), with its config.yaml (the
training manifest by file name only) and its postprocess.json when it has one. No optimizer state, no RNG: it predicts, it does not resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import Config
from ..errors import LesiondiffError
from ..io_utils import atomic_path
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
    cfg.data.manifest = Path(cfg.data.manifest).name  # a record of the training data; its folder is the maker's
    cfg.save(out / "config.yaml")
    if (run / POSTPROCESS_FILE).is_file():
        shutil.copyfile(run / POSTPROCESS_FILE, out / POSTPROCESS_FILE)
    return out
