"""Learning-rate schedules of the training recipe: a linear warm-up, then ``constant`` or ``cosine``.

The cosine runs over the run's *progress*, the fraction done of whichever limit stops the run first:
``max(step / train.steps, elapsed / train.max_minutes)`` (:func:`training_progress`), with elapsed
time on the run's clock (``train.clock``). A time-budgeted run therefore ends at the bottom of its cosine,
however many steps the machine managed, and a step-limited run at its last step.

    warm-up (step < warmup):  lr * (step + 1) / warmup
    constant:                 lr
    cosine:                   lr * (r + (1 - r) * (1 + cos(pi * q)) / 2),  q = (p - p_w) / (1 - p_w)

with p the progress before the step, p_w the progress when the warm-up ended (recorded then, and saved in
checkpoints so that a resumed run continues on the same curve) and r = ``train.final_lr_ratio``.
"""

from __future__ import annotations

import math

from ..errors import LesiondiffError

SCHEDULES = ("constant", "cosine")


class LRSchedule:
    """``factor(step, progress)`` -> the multiplier of the peak learning rate for the coming step."""

    def __init__(self, name: str = "constant", warmup: int = 0, final_ratio: float = 0.0) -> None:
        if name not in SCHEDULES:
            raise LesiondiffError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
        if warmup < 0:
            raise LesiondiffError(f"train.warmup must be >= 0 steps, got {warmup}")
        if not 0.0 <= final_ratio <= 1.0:
            raise LesiondiffError(f"train.final_lr_ratio must lie in [0, 1], got {final_ratio}")
        self.name, self.warmup, self.final_ratio = name, warmup, final_ratio
        self.warmup_progress: float | None = None if warmup > 0 else 0.0

    def factor(self, step: int, progress: float) -> float:
        """``step``: steps done so far (0 before the first); ``progress`` in [0, 1] at that moment."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.warmup_progress is None:
            self.warmup_progress = min(progress, 1.0)
        if self.name == "constant":
            return 1.0
        p_w = self.warmup_progress
        q = 1.0 if p_w >= 1.0 else min(max((progress - p_w) / (1.0 - p_w), 0.0), 1.0)
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * q))

    def describe(self, lr: float) -> str:
        warm = f"linear warm-up over {self.warmup} steps, then " if self.warmup else ""
        if self.name == "constant":
            return f"{warm}constant {lr:g}"
        return (f"{warm}cosine from {lr:g} to {lr * self.final_ratio:g} at the end of the run's limit "
                "(steps or time budget, whichever ends it first)")


def training_progress(step: int, steps: int, elapsed_s: float, max_minutes: float) -> float:
    """max(step / steps, elapsed / budget): the fraction done of whichever limit ends the run first."""
    progress = step / steps if steps > 0 else 0.0
    if max_minutes > 0:
        progress = max(progress, elapsed_s / (60 * max_minutes))
    return min(progress, 1.0)
