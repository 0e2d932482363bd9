"""The device a run uses: automatic (cuda, then mps, then cpu), or the one ``--device`` names, checked.

Multi-GPU and multi-process training and prediction come from ``accelerate launch`` (README, "Training on
several GPUs", "Predicting with several processes"); :func:`process_rank`, :func:`broadcast_from_main` and
:func:`wait_for_everyone` are what prediction needs of it.
"""

from __future__ import annotations

from datetime import timedelta

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list

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


def make_accelerator(device: str | None, mixed_precision: str = "no",
                     timeout: timedelta | None = None) -> Accelerator:
    """cuda, then mps, then cpu, unless ``device`` says otherwise (checked: an unavailable device is an error,
    never a silent fall-back). Multi-GPU comes from ``accelerate launch``. ``timeout``: how long a collective
    (a barrier) waits for the other processes of a launch before it fails (the process group's; taken from
    the first Accelerator a process makes; default Accelerate's, 30 minutes)."""
    check_device(device)
    handlers = [InitProcessGroupKwargs(timeout=timeout)] if timeout is not None else []
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision, kwargs_handlers=handlers)
    if device not in (None, "", "cpu") and accelerator.num_processes == 1:
        want = torch.device(device)
        got = accelerator.device
        if got.type != want.type or (want.index is not None and got.index not in (None, want.index)):
            raise LesiondiffError(f"--device {device}: Accelerate placed the run on {got}")
    return accelerator


def process_rank() -> tuple[int, int]:
    """(this process's index, the number of processes) of the ``accelerate launch`` it belongs to, from
    Accelerate's state once an Accelerator was made (``make_accelerator``; loading a run makes one); (0, 1)
    before, and without a launch. It never makes the state itself: that would fix the device before
    ``--device`` is read."""
    if not PartialState._shared_state:
        return 0, 1
    state = PartialState()
    return state.process_index, state.num_processes


def broadcast_from_main(obj):
    """``obj`` of the main process (rank 0), on every process of the launch; every process waits here until the
    main one gets here."""
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def wait_for_everyone() -> None:
    """A barrier: every process of the launch waits here until all got here."""
    PartialState().wait_for_everyone()
