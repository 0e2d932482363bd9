"""Training curricula: which rows the Trainer draws at each moment of a run, how it augments each, and what
learning-rate factor it applies. A curriculum divides a run into *levels* (by training progress, the fraction
done of whichever limit ends the run first); the generic Trainer asks the configured one (``curriculum.name``,
``curriculum.options`` checked against its constructor by ``build.build_curriculum``) and knows no method.
Each method registers its own: PalScDiff's Progressive Augmentation Learning (``methods/palscdiff.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .data.transforms import Augment
from .registry import Registry

CURRICULA = Registry("curriculum")


class Curriculum:
    """Base class. A subclass is built as ``cls(rows=..., base_lr=..., log=..., **options)`` with the training
    rows (the manifest's row dicts, in the order the Trainer indexes them)."""

    def __init__(self, rows: list[dict], base_lr: float, log: Callable[[str], None] = print) -> None:
        self.rows, self.base_lr, self.log = rows, base_lr, log

    @property
    def n_levels(self) -> int:
        raise NotImplementedError

    def level_at(self, progress: float) -> int:
        """The level at training progress ``progress`` in [0, 1]."""
        raise NotImplementedError

    def pool(self, level: int) -> torch.Tensor:
        """Row indices [n] (int64) drawn from at ``level``."""
        raise NotImplementedError

    def augment_for(self, index: int, level: int) -> Augment | None:
        """The augmentation of row ``index`` at ``level``; None: the run's own (``data.augment``)."""
        return None

    def lr_factor(self, level: int) -> float:
        """The level's learning rate as a multiple of the run's peak rate (``train.lr``)."""
        return 1.0

    def describe(self, level: int) -> str:
        """One line on the level, printed when the run enters it."""
        return f"level {level + 1}/{self.n_levels}"

    def start(self, level: int) -> float:
        """The training progress at which ``level`` begins."""
        raise NotImplementedError

    def schedule(self) -> list[dict]:
        """The levels for summary.json: one dict each, with at least ``level`` (1-based)."""
        return [{"level": k + 1, "starts_at_progress": round(self.start(k), 4)} for k in range(self.n_levels)]
