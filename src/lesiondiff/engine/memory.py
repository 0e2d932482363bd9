"""Whether one image's samples fit this machine's memory, checked before predict loads any weights.

Predict holds one image's S samples at the network size at a time (``Predictor.sample``, ``predict`` and
``write`` in ``engine/predict.py``). At the peak, while ``write`` computes the uncertainty maps, it holds per
sample pixel (S x size x size of them):

====  ==========================================================================================
   4  the float32 probabilities (``np.repeat``'s copy of the sampler's output)
   4  with ``sample.maps=masks`` only: their binarised float32 copy, from which the maps are computed
   2  the float16 copy that goes into ``<id>_probs.npz``
   8  the float64 copy that ``uncertainty.ambiguity`` makes (``uncertainty._samples``)
   8  numpy's float64 deviations inside ``var``
   1  boolean temporaries (the range check of the probabilities)
====  ==========================================================================================

so ``bytes = S * size**2 * 27`` (23 without ``sample.maps=masks``); tracemalloc measured 27.0 and 23.3 at
S = 32, 256 px, with mean and majority fusion. The sampling itself holds less (the sampler's float32 output and
the copy: 8). The network's activations for one chunk of samples (``sample.max_batch``) come on top, so the
estimate is a lower bound: a prediction that needs more than the machine's physical memory cannot run, and is
refused with the numbers instead of ending in an allocator traceback minutes later.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config
from ..errors import LesiondiffError

BYTES_PER_SAMPLE_PIXEL = {"probabilities": 23, "masks": 27}
"""Peak bytes per sample pixel by ``sample.maps`` (module docstring)."""


def prediction_bytes(samples: int, size: int, maps: str = "probabilities") -> int:
    """The memory predicting one image takes at the peak, in bytes: ``samples * size**2 *``
    :data:`BYTES_PER_SAMPLE_PIXEL` ``[maps]`` (the network's activations not counted)."""
    return samples * size * size * BYTES_PER_SAMPLE_PIXEL.get(maps, max(BYTES_PER_SAMPLE_PIXEL.values()))


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say (no ``sysconf``)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def gib(n: float) -> str:
    """Bytes as GiB for a message: one decimal below 10 GiB, whole above."""
    value = n / 2**30
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def check_prediction_memory(cfg: Config, available: int | None = None) -> None:
    """A one-line error when one image's samples (:func:`prediction_bytes` of ``sample.samples``,
    ``data.size``, ``sample.maps``) need more than ``available`` bytes (default: :func:`physical_memory`)."""
    available = physical_memory() if available is None else available
    s, size, maps = cfg.sample.samples, cfg.data.size, cfg.sample.maps
    need = prediction_bytes(s, size, maps)
    if available is not None and need > available:
        per = need // (s * size * size)
        raise LesiondiffError(
            f"--samples {s} at {size} px needs about {gib(need)} GiB of memory per image ({s} x {size} x {size} "
            f"probabilities and their working copies, {per} bytes each); this machine has {gib(available)} GiB: "
            f"give --samples {max(1, available // (size * size * per))} or fewer")


def check_run_memory(run: str | Path, overrides: list[str]) -> None:
    """:func:`check_prediction_memory` for the run folder ``run`` with ``overrides`` (``--samples`` and the
    rest), from its ``config.yaml`` alone; a folder without one is left to the Predictor to refuse."""
    path = Path(run) / "config.yaml"
    if path.is_file():
        check_prediction_memory(Config.load(path).override(overrides))
