"""The U-Net + diffusion average: one source that averages a feed-forward run's probability with the fused
draws of a diffusion run (Fu et al., MELBA 2023, found this average beat the U-Net on all four of their data sets).

An average folder holds ``average.json`` (the two runs, the weight w and how it was chosen) and ``config.yaml``
(the diffusion run's: S, sampler, steps, fusion). ``predict --run FOLDER`` then writes, per image,
    mask from   p = w * p_unet + (1 - w) * fused(diffusion draws)      (thresholded as usual)
while the uncertainty maps and the per-image scores come from the diffusion draws alone, whose spread is the
uncertainty; w = 1 is the U-Net, w = 0 the diffusion run. ``lesiondiff average`` chooses w on a validation
split: every weight of a grid is scored by the mean per-image Dice at the original size (threshold 0.5) of
the averaged probability, the best kept (ties: the larger w, the cheaper side).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.dataset import mask_paths
from ..data.io import read_masks, read_npz
from ..data.manifest import Manifest
from ..data.transforms import resize_prob
from ..errors import LesiondiffError
from ..io_utils import OwnedFolder, atomic_write_text
from ..metrics import image_dice
from .outputs import read_predictions

FILE = "average.json"
WEIGHTS = tuple(round(0.1 * k, 1) for k in range(11))


def is_average(folder: str | Path) -> bool:
    return (Path(folder) / FILE).is_file()


def read_average(folder: str | Path) -> dict:
    """The record of an average folder, its two runs resolved and checked."""
    folder = Path(folder)
    try:
        record = json.loads((folder / FILE).read_text(encoding="utf-8"))
        runs = {k: folder / record[k] for k in ("feedforward", "diffusion")}
        weight = float(record["weight"])
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise LesiondiffError(f"{folder / FILE}: not a readable average record ({exc})") from None
    for kind, run in runs.items():
        if not (run / "config.yaml").is_file():
            raise LesiondiffError(f"{folder / FILE}: its {kind} run {run} is not a run folder (no config.yaml)")
    if not 0 <= weight <= 1:
        raise LesiondiffError(f"{folder / FILE}: weight must be in [0, 1], got {weight:g}")
    return {**record, **{k: str(v) for k, v in runs.items()}, "weight": weight}


def check_pair(feedforward: Path, diffusion: Path) -> Config:
    """A feed-forward run and a diffusion run of one input size and channel count; the diffusion config."""
    ff, df = Config.load(feedforward / "config.yaml"), Config.load(diffusion / "config.yaml")
    if not ff.diffusion.feedforward:
        raise LesiondiffError(f"{feedforward}: not a feed-forward run (diffusion.mode {ff.diffusion.mode})")
    if df.diffusion.feedforward:
        raise LesiondiffError(f"{diffusion}: a feed-forward run; the average needs a diffusion run beside the U-Net")
    for key in ("size", "channels"):
        if getattr(ff.data, key) != getattr(df.data, key):
            raise LesiondiffError(f"{diffusion}: data.{key} {getattr(df.data, key)}, but {feedforward} has "
                                  f"{getattr(ff.data, key)}")
    return df


def average_probability(unet: np.ndarray, fused: np.ndarray, weight: float) -> np.ndarray:
    """w * p_unet + (1 - w) * p_diffusion, ``[H,W]`` each."""
    return weight * unet + (1.0 - weight) * fused


def weight_scores(feedforward_pred: Path, diffusion_pred: Path, manifest: str | Path, split: str,
                  weights=WEIGHTS, threshold: float = 0.5) -> list[dict]:
    """Mean per-image Dice at the original size of the averaged probability for each weight, on the split's
    predictions of the two runs (each predict folder's ``fused`` maps)."""
    rows = Manifest.read(manifest).select(split)
    if not rows:
        raise LesiondiffError(f"{manifest}: no rows in split {split!r}")
    ff, df = read_predictions(feedforward_pred)[0], read_predictions(diffusion_pred)[0]
    dices = {w: [] for w in weights}
    for row in rows:
        for table, folder in ((ff, feedforward_pred), (df, diffusion_pred)):
            if row["id"] not in table:
                raise LesiondiffError(f"{folder}: no prediction for {row['id']} of split {split}")
        u = read_npz(feedforward_pred / ff[row["id"]]["probs"], ("fused", "original_size"))
        d = read_npz(diffusion_pred / df[row["id"]]["probs"], ("fused",))
        size = tuple(int(v) for v in u["original_size"])
        pu, pd = resize_prob(u["fused"].astype(np.float32), size), resize_prob(d["fused"].astype(np.float32), size)
        paths = mask_paths(row)
        gt = read_masks(paths, shape=size) if paths else np.zeros(size, bool)
        for w in weights:
            dices[w].append(image_dice(average_probability(pu, pd, w) >= threshold, gt))
    return [{"weight": w, "dice": float(np.mean(v)), "n": len(v)} for w, v in dices.items()]


def make_average(out: str | Path, feedforward: str | Path, diffusion: str | Path, weight: float,
                 chosen: dict | None = None) -> dict:
    """Write the average folder ``out`` (module docstring); returns its record."""
    out, feedforward, diffusion = Path(out), Path(feedforward), Path(diffusion)
    cfg = check_pair(feedforward, diffusion)
    if not 0 <= weight <= 1:
        raise LesiondiffError(f"the weight must be in [0, 1], got {weight:g}")
    record = {"feedforward": str(feedforward.resolve()), "diffusion": str(diffusion.resolve()), "weight": weight,
              "chosen": chosen or {"how": "given"},
              "rule": "mask from w * p_unet + (1 - w) * fused(diffusion draws); maps and scores from the draws"}
    with OwnedFolder(out).writing([FILE, "config.yaml"]) as paths:
        atomic_write_text(paths[FILE], json.dumps(record, indent=2))
        atomic_write_text(paths["config.yaml"], cfg.to_yaml())
    return record
