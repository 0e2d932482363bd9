"""Figures of one run and its predictions, for the report: training curves (``log.csv``), prediction examples
with their uncertainty maps, and the sampling rounds beside the fused mask (PalScDiff Fig. 5). This module reads
the files; ``render/run_figures.py`` draws."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.dataset import mask_paths
from ..data.io import image_size, read_image, read_mask, read_masks, read_npz
from ..data.manifest import evenly_spaced
from ..data.transforms import resize_prob
from ..engine.outputs import read_predictions
from ..metrics import image_dice
from ..render.run_figures import GT_COLOUR, image_grid, training_curves

__all__ = ["GT_COLOUR", "examples_figure", "rounds_figure", "training_figure"]


def training_figure(run: Path, path: Path) -> bool:
    """Training loss and validation Dice against the step, from the run's ``log.csv``; False without one."""
    log = run / "log.csv"
    if not log.is_file():
        return False
    with log.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    training_curves(rows, path)
    return True


def examples_figure(pred_dir: Path, rows: list[dict], path: Path, n: int = 6) -> bool:
    """One row per image: image, ground truth, fused mask overlay, coherence, ambiguity, entropy. Rows are
    as tall as the first image's aspect needs; the title says what the maps were computed from (predict.json's
    ``maps``: the sampled probabilities, or the samples binarised at the threshold)."""
    preds, settings = read_predictions(pred_dir)
    chosen = [r for r in rows if r["id"] in preds][:n] or [{"id": i, "image": p["image"]} for i, p in
                                                             list(preds.items())[:n]]
    if not chosen:
        return False
    titles = ["image", "ground truth", "fused contour (yellow)\n+ ambiguity (red)", "coherence (mean)",
              "ambiguity (variance)", "entropy (bits)"]
    h, w = image_size(chosen[0]["image"])  # the header only: the pixels are read once, in the loop below
    source = (f"the S = {settings.get('samples', '?')} samples binarised at {settings.get('threshold', 0.5):g}"
              if settings.get("maps") == "masks" else "the S sampled probabilities")
    grid = []
    for row in chosen:
        p = preds[row["id"]]
        image = read_image(row["image"])
        npz = read_npz(pred_dir / p["probs"], ("coherence", "ambiguity", "entropy"))
        maps = {k: resize_prob(v, image.shape[:2]) for k, v in npz.items()}
        gt_paths = mask_paths(row) if "masks" in row else []
        gt = read_masks(gt_paths, shape=image.shape[:2]) if gt_paths else None
        over = np.asarray(Image.open(pred_dir / p["overlay"]).convert("RGB"))
        grid.append((row["id"], [(image[..., 0] if image.shape[2] == 1 else image / 255.0, "gray", None),
                                 (gt if gt is not None else np.zeros(image.shape[:2]), "gray", None),
                                 (over, None, None), (maps["coherence"], "viridis", (0, 1)),
                                 (maps["ambiguity"], "magma", (0, 0.25)), (maps["entropy"], "magma", (0, 1))]))
    image_grid(grid, titles, f"coherence, ambiguity and entropy over {source}", path,
               row_height=min(2.6, 2.5 * h / w + 0.3))
    return True


def rounds_figure(pred_dir: Path, rows: list[dict], path: Path, n: int = 4,
                  threshold: float | None = None) -> list[dict]:
    """PalScDiff Fig. 5: one row per image; columns: the image with its ground-truth contour, round 1 .. round S
    (sample k-1 resized bilinearly to the original size with ``resize_prob``, then ``>= threshold``, the
    Evaluator's rule), and the fused mask as predict wrote it (``<id>_mask.png``, at predict's threshold even
    when ``threshold`` differs); the ground-truth contour is drawn on every panel and each mask's per-image
    Dice is in its title.

    ``rows`` are manifest rows; the ``n`` images are spread evenly over the sorted ids that have a prediction
    and a non-empty ground truth (without any, over the sorted predicted ids, and no Dice is shown).
    ``threshold`` defaults to the one in ``predict.json`` (else 0.5). Returns one record per image drawn,
    ``{"id", "rounds": [Dice of round 1..S], "fused": Dice}`` (Dice None without ground truth), or ``[]``
    (no figure written) when there is nothing to draw or the predictions have fewer than two samples.
    """
    pred_dir = Path(pred_dir)
    preds, settings = read_predictions(pred_dir)
    thr = float(settings.get("threshold", 0.5)) if threshold is None else threshold
    with_gt = sorted((r for r in rows if r["id"] in preds and mask_paths(r)), key=lambda r: r["id"])
    # every candidate's ground truth is read once to find the lesions; images and samples only for the n chosen
    with_gt = [r for r in with_gt if read_masks(mask_paths(r)).any()]
    chosen = evenly_spaced(with_gt, n) or evenly_spaced([{"id": i, "image": preds[i]["image"]} for i in sorted(preds)], n)
    if not chosen:
        return []
    n_samples = int(read_npz(pred_dir / preds[chosen[0]["id"]]["probs"], ("samples",))["samples"].shape[0])
    if n_samples < 2:
        return []
    fusion = settings.get("fusion", "fused")
    records, grid, contours = [], [], []
    for row in chosen:
        p = preds[row["id"]]
        image = read_image(row["image"])
        hw = image.shape[:2]
        gt = read_masks(mask_paths(row), shape=hw) if with_gt else None
        samples = read_npz(pred_dir / p["probs"], ("samples",))["samples"]
        # one sample at a time: at a dermoscopy image's full size, S float32 maps are hundreds of MB
        masks = [resize_prob(samples[k].astype(np.float32), hw) >= thr for k in range(samples.shape[0])]
        masks.append(read_mask(pred_dir / p["mask"]))
        dice = [None if gt is None else image_dice(m, gt) for m in masks]
        records.append({"id": row["id"], "rounds": dice[:-1], "fused": dice[-1]})
        names = [f"round {k + 1}" for k in range(len(masks) - 1)] + [f"fused ({fusion})"]
        cells = [(image[..., 0] if image.shape[2] == 1 else image / 255.0, "gray", None, "image + GT contour")]
        cells += [(m, "gray", (0, 1), name if d is None else f"{name}\nDice {d:.3f}")
                  for m, name, d in zip(masks, names, dice)]
        grid.append((row["id"], cells))
        contours.append(gt)
    which = (f"{len(chosen)} of the {len(with_gt)} images with a non-empty ground truth, evenly spaced over the "
             "sorted ids" if with_gt else f"{len(chosen)} images evenly spaced over the sorted ids (no ground "
             "truth given)")
    # short lines, so the title never sets the width of a figure with few rounds
    are = settings.get("samples_are")
    title = (f"Sampling rounds and the fused mask\n{which}\nround k = the k-th sample at threshold {thr:g}, "
             "resized to the original size; green: ground-truth contour" + (f"\nsamples: {are}" if are else ""))
    cols = n_samples + 2
    image_grid(grid, [], title, path, row_height=2.0, width=1.9 * cols, contours=contours, titles_per_cell=True)
    return records
