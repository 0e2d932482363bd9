"""Choose a run's lesion / no-lesion post-processing on its validation split (``lesiondiff postprocess``).

The run predicts the split with its own sampling settings and no post-processing (or reuses predictions given
with ``pred_dir``), every rule of ``postprocess.GRID`` is scored on the fused probability maps at the original
image size against the manifest's masks, and the best rule is written to ``<run>/postprocess.json``, which
``lesiondiff predict`` applies from then on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.dataset import mask_paths
from ..data.io import read_masks, read_npz
from ..data.manifest import Manifest
from ..data.transforms import resize_prob
from ..errors import LesiondiffError
from ..postprocess import FILE, PostProcess, choose, save
from .outputs import read_predictions
from .predict import Predictor, collect_inputs


def choose_for_run(run: str | Path, manifest: str | Path, split: str = "val", pred_dir: str | Path | None = None,
                   device: str | None = None, overrides: list[str] | None = None) -> tuple[PostProcess, list[dict]]:
    """Predict ``split`` (unless ``pred_dir`` holds its predictions), choose the rule, write postprocess.json."""
    run = Path(run)
    if pred_dir is None:
        pred_dir = run / f"postprocess_{split.replace(':', '')}"
        predictor = Predictor.from_run(run, "best", device, overrides, postprocess=False)
        predictor.run(collect_inputs([], str(manifest), split), pred_dir, checkpoint="best", overwrite=True)
    pred_dir = Path(pred_dir)
    preds, meta = read_predictions(pred_dir)
    rows = Manifest.read(manifest).select(split)
    missing = [r["id"] for r in rows if r["id"] not in preds]
    if missing:
        raise LesiondiffError(f"{pred_dir}: no prediction for {missing[0]} of split {split}")
    threshold = float(meta.get("threshold", 0.5))
    cases = []
    for row in rows:
        npz = read_npz(pred_dir / preds[row["id"]]["probs"], ("original_size", "fused"))
        size = tuple(int(v) for v in npz["original_size"])
        prob = resize_prob(npz["fused"].astype(np.float32), size)
        paths = mask_paths(row)
        cases.append((prob, read_masks(paths, shape=size) if paths else np.zeros(size, bool)))
    rule, scores = choose(cases, threshold)
    save(rule, run / FILE, f"split {split} of {manifest} ({len(rows)} images, threshold {threshold}, "
                           f"predictions {pred_dir})", scores)
    return rule, scores


def format_scores(scores: list[dict], top: int = 5) -> str:
    """The best ``top`` rules and the rule-free baseline as a text table."""
    identity = next(s for s in scores if s["rule"].startswith("none"))
    shown = scores[:top] + ([identity] if identity not in scores[:top] else [])
    lines = [f"{'mean Dice':>10}{'lesion Dice':>13}{'empty -> empty':>16}  rule",
             *(f"{s['dice']:>10.4f}{s['lesion_dice']:>13.4f}{s['empty_predicted_empty']:>10}/{s['empty_images']:<5}"
               f"  {s['rule']}" for s in shown)]
    return "\n".join(lines)
