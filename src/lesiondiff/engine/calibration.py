"""``lesiondiff calibrate``: a run's selective-segmentation threshold, chosen on a calibration split with a
finite-sample guarantee (``selective.choose_threshold``), kept in the run folder as ``selective.json``.

From then on ``predict`` marks each image ``accept`` (its score's confidence reaches the threshold) or ``review``
in predictions.csv, and ``evaluate`` reports the coverage and the realised mean Dice of the accepted images. The
record holds the sampling settings it was calibrated with (S, sampler, steps, TTA, MC dropout, fusion,
threshold, the lesion / no-lesion rule): a prediction made otherwise gets no mark, with a note, because the
scores, and so the guarantee, belong to those settings.

The guarantee (``selective.py``): with probability at least 1 - delta over the calibration images, the
expected Dice of the images a new prediction accepts is at least the target, for images drawn like the
calibration split's (the same data distribution; a new scanner or population voids it).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LesiondiffError
from ..io_utils import atomic_write_text, inside
from ..selective import MIN_CALIBRATION, choose_threshold, confidence, failure_detection
from ..uncertainty import SCORES

FILE = "selective.json"
MEMBER_SCORES = ("agreement", "lesion_fraction")  # the scores that need two distinct members
SETTINGS = ("sample.samples", "sample.sampler", "sample.steps", "sample.tta", "sample.mc_dropout",
            "sample.threshold", "sample.maps", "fusion.method", "fusion.crf", "postprocess")


def calibration_settings(settings: dict) -> dict:
    """The part of a predict settings record that decides the scores (``SETTINGS``)."""
    return {k: settings.get(k) for k in SETTINGS}


def load(run: str | Path) -> dict | None:
    """The run's ``selective.json``, or None when it has none."""
    path = Path(run) / FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        record = {"error": str(exc)}
    if not isinstance(record, dict) or not {"score", "settings", "threshold"} <= set(record):
        raise LesiondiffError(f"{path}: not a readable calibration record; run lesiondiff calibrate again")
    return record


def mark(record: dict, scores: dict[str, float]) -> str:
    """``accept`` or ``review`` for one image's scores under a calibration record (``review`` when the record
    certified no threshold, or the score is missing)."""
    value = scores.get(record["score"])
    if record.get("threshold") is None or value is None:
        return "review"
    return "accept" if float(confidence(record["score"], [value])[0]) >= record["threshold"] else "review"


def check_request(split: str, target: float, delta: float, n_images: int, manifest: str | Path) -> None:
    """The one-line refusals of ``lesiondiff calibrate``, before anything is predicted."""
    if split == "test":
        raise LesiondiffError("calibrate on the validation split (or another held-out split), never on test: the "
                              "test split is for checking the guarantee")
    if not 0 < target < 1:
        raise LesiondiffError(f"--target-dice must be between 0 and 1, got {target:g}")
    if not 0 < delta < 1:
        raise LesiondiffError(f"--delta must be between 0 and 1, got {delta:g}")
    if n_images < MIN_CALIBRATION:
        raise LesiondiffError(f"{manifest}: split {split!r} has {n_images} images; calibrate needs at least "
                              f"{MIN_CALIBRATION}")


def check_score(score: str | None, members: int) -> None:
    """A score calibrate cannot use: unknown, or one that needs two distinct members when there is one."""
    if score is None:
        return
    if score not in SCORES:
        raise LesiondiffError(f"--score {score!r}: unknown; known: {', '.join(SCORES)}")
    if score in MEMBER_SCORES and members < 2:
        raise LesiondiffError(f"--score {score}: this run's predictions have one distinct member, and {score} needs "
                              "two or more (S >= 2 draws of a diffusion run, --set sample.tta=flips sample.samples=4, "
                              "MC dropout or an ensemble); the entropy scores need none")


def calibrate(rows: list[dict], score: str | None, target: float, delta: float, settings: dict,
              split: str, manifest: str | Path) -> dict:
    """The calibration record from the calibration images' rows (per-image fused ``dice`` and the scores
    predict wrote). ``score`` None: ``agreement`` when the predictions have it (S >= 2 distinct members),
    else ``entropy``. A score the predictions lack is refused."""
    available = [s for s in SCORES if all(r.get(s) not in (None, "") for r in rows)]
    chosen = score or ("agreement" if "agreement" in available else "entropy")
    if chosen not in SCORES:
        raise LesiondiffError(f"--score {chosen!r}: unknown; known: {', '.join(SCORES)}")
    if chosen not in available:
        raise LesiondiffError(f"--score {chosen}: these predictions do not have it (it needs at least two distinct "
                              f"members, e.g. S >= 2 draws, --set sample.tta=flips or an ensemble); they have "
                              f"{', '.join(available) or 'no score'}")
    dice = [float(r["dice"]) for r in rows]
    values = [float(r[chosen]) for r in rows]
    result = choose_threshold(dice, confidence(chosen, values), target, delta)
    fd = failure_detection(dice, {s: [float(r[s]) for r in rows] for s in available})
    return {**result, "score": chosen, "score_means": SCORES[chosen], "split": split, "manifest": str(manifest),
            "settings": calibration_settings(settings),
            "aurc_on_calibration_split": {s: fd[s]["aurc"] for s in available},
            "guarantee": (f"with probability >= {1 - delta:g} over the calibration images, the mean Dice of the "
                          f"images a prediction with these settings accepts is >= {target:g} (for images like the "
                          f"{split} split's)")}


def write(run: str | Path, record: dict) -> Path:
    """``RUN/selective.json``, a checked name inside the run folder, written atomically (a link in its place is
    replaced, never followed)."""
    path = inside(run, FILE)
    atomic_write_text(path, json.dumps(record, indent=2))
    return path
