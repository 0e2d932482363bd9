"""Checkpoints as single safetensors files: no pickle, so loading a checkpoint cannot run code.

One file holds the model weights (``model.*``), the EMA weights (``ema.*``), the optimizer's tensors
(``optim.*``) and the RNG state tensors (``rng.*``); everything that is not a tensor (step, best score,
optimizer hyper-parameters, Python/NumPy RNG state) is JSON in the file's metadata. The file is written to a
temporary name and renamed, so an interrupted write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import LesiondiffError
from ..io_utils import atomic_path


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{key}"] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    model: nn.Module,
    ema: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    state: dict | None = None,
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    meta: dict[str, str] = {"state": json.dumps(state or {})}
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = json.dumps(opt_meta)
    for name, value in (rng or {}).items():
        tensors[f"rng.{name}"] = value.detach().cpu().contiguous()
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


class Checkpoint:
    """A loaded checkpoint: its tensors by prefix and its metadata."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise LesiondiffError(f"{path}: checkpoint not found")
        try:
            self.tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                self.metadata = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise LesiondiffError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
        self.path = path
        self.state = json.loads(self.metadata.get("state", "{}"))

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    def load_module(self, module: nn.Module, prefix: str = "model") -> None:
        weights = self.section(prefix)
        if not weights:
            raise LesiondiffError(f"{self.path}: checkpoint has no {prefix!r} weights")
        own = module.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
        if missing or unexpected or wrong:
            detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                      else f"{wrong[0]} is {tuple(weights[wrong[0]].shape)}, model wants {tuple(own[wrong[0]].shape)}")
            raise LesiondiffError(f"{self.path}: checkpoint does not match the model in config.yaml ({detail})")
        module.load_state_dict(weights)

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if "optimizer" not in self.metadata:
            raise LesiondiffError(f"{self.path}: checkpoint has no optimizer state to resume from")
        optimizer.load_state_dict(_unflatten_optimizer(self.section("optim"), json.loads(self.metadata["optimizer"])))

    def rng(self) -> dict[str, torch.Tensor]:
        return self.section("rng")


def run_checkpoint(run: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint file ``checkpoint`` (best or last) of a run directory; best falls back to last (a run
    without validation has no best)."""
    name = checkpoint.removesuffix(".safetensors")
    path = Path(run) / "checkpoints" / f"{name}.safetensors"
    return Path(run) / "checkpoints" / "last.safetensors" if name == "best" and not path.is_file() else path


def load_frozen(module: nn.Module, checkpoint: str | Path) -> None:
    """Load a trained segmenter's weights into ``module`` (a design's pre-trained part: the EMA weights when the
    checkpoint has them) and freeze it."""
    ckpt = Checkpoint(Path(checkpoint))
    ckpt.load_module(module, "ema" if ckpt.section("ema") else "model")
    module.requires_grad_(False)
