"""The device a run uses: automatic (cuda, then mps, then cpu), or the one ``--device`` names, checked.

Multi-GPU and multi-process training come from ``accelerate launch`` (README, "Training on several GPUs").
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from ..errors import LesiondiffError


def check_device(device: str | None) -> None:
    """``device`` (None: automatic, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``) is one this machine has; else a
    one-line error. ``cuda:N`` becomes the current CUDA device, which Accelerate then uses."""
    if device in (None, "", "cpu"):
        return
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise LesiondiffError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__})")
        n = torch.cuda.device_count()
        if index:
            if not index.isdigit() or int(index) >= n:
                raise LesiondiffError(f"--device {device}: this machine has CUDA devices 0..{n - 1}")
            torch.cuda.set_device(int(index))
        return
    if kind == "mps" and not index:
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise LesiondiffError(f"--device {device}: MPS (Apple GPU) is not available on this machine")
        return
    raise LesiondiffError(f"--device {device!r}: expected cpu, cuda, cuda:N or mps")


def make_accelerator(device: str | None, mixed_precision: str = "no") -> Accelerator:
    """cuda, then mps, then cpu, unless ``device`` says otherwise (checked: an unavailable device is an error,
    never a silent fall-back). Multi-GPU comes from ``accelerate launch``."""
    check_device(device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
    if device not in (None, "", "cpu") and accelerator.num_processes == 1:
        want = torch.device(device)
        got = accelerator.device
        if got.type != want.type or (want.index is not None and got.index not in (None, want.index)):
            raise LesiondiffError(f"--device {device}: Accelerate placed the run on {got}")
    return accelerator
