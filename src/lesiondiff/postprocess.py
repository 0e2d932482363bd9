"""Post-processing of fused masks and the lesion / no-lesion decision, chosen on the validation split.

As nnU-Net chooses its post-processing (Isensee et al., Nature Methods 2021: keep the largest connected
component only where that raises the validation Dice), a :class:`PostProcess` rule is picked from a small grid
by the per-image mean Dice it gives on the validation split, every image counted (lesion-free images score 1
for an empty prediction, 0 otherwise), and then applied unchanged to any other split. The rule, applied to
the fused probability map ``p`` [H,W] at the original image size and its mask ``p >= threshold``:

1. ``largest_component``: keep only the largest 8-connected foreground component;
2. the image is declared lesion-free (the mask emptied) when the remaining foreground covers less than
   ``min_area`` of the image (a fraction of its pixels, so that one rule serves every image size) or when
   ``max(p)`` over it is below ``min_prob``.

The grid (:data:`GRID`) holds the identity rule (no change), so the chosen rule is never worse on the
validation split than none. Ties go to the simpler rule (fewer changes, smaller thresholds).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import LesiondiffError
from .io_utils import atomic_write_text
from .metrics import image_dice

FILE = "postprocess.json"  # in a run directory: the rule predict applies

GRID = {
    "largest_component": (False, True),
    "min_area": (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04),
    "min_prob": (0.0, 0.6, 0.7, 0.8, 0.9, 0.95),
}


@dataclass(frozen=True)
class PostProcess:
    largest_component: bool = False
    min_area: float = 0.0  # fraction of the image's pixels
    min_prob: float = 0.0  # the fused probability's maximum over the kept foreground

    def apply(self, mask: np.ndarray, prob: np.ndarray | None = None) -> np.ndarray:
        """mask [H,W] bool (the fused probability >= threshold), prob [H,W] in [0,1] (needed by min_prob > 0)
        -> the post-processed mask [H,W] bool."""
        mask = np.asarray(mask, bool)
        if not mask.any():
            return mask
        if self.largest_component:
            labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
            if n > 1:
                sizes = np.bincount(labels.ravel())[1:]
                mask = labels == 1 + int(np.argmax(sizes))
        if mask.mean() < self.min_area:
            return np.zeros_like(mask)
        if self.min_prob > 0:
            if prob is None:
                raise ValueError("min_prob needs the probability map")
            if float(np.asarray(prob)[mask].max()) < self.min_prob:
                return np.zeros_like(mask)
        return mask

    @property
    def is_identity(self) -> bool:
        return not self.largest_component and self.min_area == 0 and self.min_prob == 0

    def describe(self) -> str:
        if self.is_identity:
            return "none (the fused mask as it is)"
        parts = ["keep the largest connected component"] if self.largest_component else []
        empty = ([f"foreground < {self.min_area:g} of the image"] if self.min_area > 0 else []) + (
            [f"max fused probability < {self.min_prob:g}"] if self.min_prob > 0 else [])
        if empty:
            parts.append("declare the image lesion-free when " + " or ".join(empty))
        return "; ".join(parts)


def _complexity(rule: PostProcess) -> tuple:
    return (rule.largest_component + (rule.min_area > 0) + (rule.min_prob > 0), rule.min_area, rule.min_prob)


def grid_rules(grid: dict = GRID) -> list[PostProcess]:
    """Every rule of the grid, simplest first (the order ties are broken in)."""
    rules = [PostProcess(*combo) for combo in itertools.product(*(grid[k] for k in
                                                                   ("largest_component", "min_area", "min_prob")))]
    return sorted(rules, key=_complexity)


def choose(cases: list[tuple[np.ndarray, np.ndarray]], threshold: float = 0.5,
           grid: dict = GRID) -> tuple[PostProcess, list[dict]]:
    """cases: (fused probability [H,W], ground truth [H,W] bool) per validation image -> (the rule with the
    highest mean per-image Dice, every rule's scores, best first; equal scores keep the simpler rule first)."""
    if not cases:
        raise LesiondiffError("no validation images to choose the post-processing on")
    # per image and component choice: what is kept, its area, its peak probability and its Dice
    kept = {False: [], True: []}
    for prob, gt in cases:
        for lc in (False, True):
            mask = PostProcess(largest_component=lc).apply(prob >= threshold, prob)
            peak = float(prob[mask].max()) if mask.any() else 0.0
            kept[lc].append((float(mask.mean()), peak, image_dice(mask, gt), bool(gt.any())))
    table = []
    for rule in grid_rules(grid):
        dices, lesion, empty_ok, n_empty = [], [], 0, 0
        for area, peak, dice, has_lesion in kept[rule.largest_component]:
            emptied = area == 0 or area < rule.min_area or (rule.min_prob > 0 and peak < rule.min_prob)
            d = (0.0 if has_lesion else 1.0) if emptied else dice
            dices.append(d)
            if has_lesion:
                lesion.append(d)
            else:
                n_empty += 1
                empty_ok += emptied
        table.append({**asdict(rule), "rule": rule.describe(), "dice": float(np.mean(dices)),
                      "lesion_dice": float(np.mean(lesion)) if lesion else float("nan"),
                      "empty_predicted_empty": empty_ok, "empty_images": n_empty})
    order = sorted(range(len(table)), key=lambda i: (-table[i]["dice"], i))  # stable: simplest of equals first
    best = table[order[0]]
    rule = PostProcess(best["largest_component"], best["min_area"], best["min_prob"])
    return rule, [table[i] for i in order]


def save(rule: PostProcess, path: Path, chosen_on: str, scores: list[dict]) -> None:
    """``postprocess.json``: the rule, what it was chosen on, and its validation scores beside no rule's."""
    identity = next(s for s in scores if s["rule"].startswith("none"))
    record = {"rule": asdict(rule), "description": rule.describe(), "chosen_on": chosen_on,
              "criterion": "mean per-image Dice over every validation image (empty vs empty = 1)",
              "validation": scores[0], "validation_without": identity, "grid": {k: list(v) for k, v in GRID.items()}}
    atomic_write_text(path, json.dumps(record, indent=2))


def load(path: Path) -> tuple[PostProcess, dict]:
    """The rule in a ``postprocess.json`` and the whole record."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return PostProcess(**record["rule"]), record
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LesiondiffError(f"{path}: not a post-processing record ({exc})") from None
