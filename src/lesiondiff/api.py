"""The Python API: ``lesiondiff.load(name_or_folder)`` -> a :class:`Segmenter`, whose ``predict(image)`` gives
one image's :class:`Segmentation` in memory: the numbers ``lesiondiff predict`` writes, and no files.

    import lesiondiff
    seg = lesiondiff.load("busi")            # a shipped model (lesiondiff models), or a run folder
    result = seg.predict("case.png")         # or an array H x W (x C) in [0, 255]
    result.mask, result.scores, result.review

A loaded model is a :class:`~lesiondiff.engine.predict.Predictor` (``Segmenter.predictor``) with the run's
settings and the keyword arguments of :func:`load` laid over them as config overrides, as the options of
``lesiondiff predict`` are. Each image's noise is seeded from the run's seed and the image's id
(``Predictor.image_seed``), so ``predict(image, id="case")`` gives what ``lesiondiff predict`` writes for an
image whose id is ``case`` (the file's stem).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .data.io import read_image, split_name
from .engine.device import check_device
from .engine.memory import check_run_memory
from .engine.predict import Predictor
from .errors import LesiondiffError
from .shipped import model_dir, model_names

# load()'s sampling keywords -> the config key each overrides (lesiondiff predict's options of the same names)
OPTIONS = {"samples": "sample.samples", "steps": "sample.steps", "sampler": "sample.sampler",
           "seed": "sample.seed", "tta": "sample.tta", "mc_dropout": "sample.mc_dropout",
           "threshold": "sample.threshold", "fusion": "fusion.method", "crf": "fusion.crf",
           "prediction": "diffusion.prediction"}


@dataclass
class Segmentation:
    """One image's prediction. ``mask`` and ``probability`` are at the input's size (what ``<id>_mask.png``
    holds, and the npz's ``fused`` resized as predict resizes it before thresholding); ``samples`` and the
    maps at the network size (the npz's arrays, ``samples`` in float32 where the npz keeps float16)."""

    id: str
    mask: np.ndarray  # [H,W] bool: probability >= threshold, then the run's lesion / no-lesion rule
    probability: np.ndarray  # [H,W] float32 in [0,1]: the fused probability
    samples: np.ndarray  # [S,h,w] float32 in [0,1]: the S members' probabilities
    coherence: np.ndarray  # [h,w] in [0,1]: the mean of the samples (of their masks with sample.maps=masks)
    ambiguity: np.ndarray  # [h,w] in [0,0.25]: their variance
    entropy: np.ndarray  # [h,w] in [0,1] bit: the entropy of their mean
    scores: dict[str, float]  # agreement, lesion_fraction, entropy, band_entropy as the run gives them
    review: str | None  # "accept" or "review" when the run is calibrated for these settings, else None


class Segmenter:
    """A loaded run, shipped model, ensemble or average, ready to segment images one at a time."""

    def __init__(self, predictor: Predictor, source: str) -> None:
        self.predictor = predictor
        self.source = source  # the name or folder it was loaded from

    @property
    def config(self) -> Config:
        """The run's Config with the overrides laid over it."""
        return self.predictor.cfg

    def __repr__(self) -> str:
        s = self.config.sample
        return (f"Segmenter({self.source!r}: model {self.config.model.name}, sampler {s.sampler}, "
                f"{s.steps} steps, S={s.samples}, device {self.predictor.device})")

    def predict(self, image: str | Path | np.ndarray, id: str | None = None) -> Segmentation:
        """Segment one image: a file path (any format ``lesiondiff predict`` reads) or an array H x W or
        H x W x C (C = 1, 3, or 4 whose alpha is dropped), uint8 or float, in grey levels [0, 255].

        ``id`` seeds the image's noise as predict's image id does (default: the file's stem; ``"image"`` for
        an array), so the same id gives the same result as ``lesiondiff predict``."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise LesiondiffError(f"{path}: no such image file")
            id_, pixels = id or split_name(path.name)[0], read_image(path)
        else:
            id_, pixels = id or "image", as_image(image)
        p = self.predictor
        pred = p.predict_image(id_, pixels)
        probability, mask, _ = p.full_mask(pred)
        scored = p.score(pred)
        review = scored.pop("review", None)
        return Segmentation(id_, mask, probability, pred.probs, **p.maps(pred), scores=scored, review=review)


def as_image(values: np.ndarray) -> np.ndarray:
    """An array H x W, H x W x 1, x 3 or x 4 in [0, 255] as predict reads an image file: float32 H x W x C,
    C 1 or 3 (alpha dropped; three equal channels become one, as ``read_image`` does)."""
    arr = np.asarray(values)
    numbers = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if arr.dtype == bool or not numbers:
        raise LesiondiffError(f"expected an image of numbers, got an array of {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise LesiondiffError(f"expected an image H x W or H x W x C (C 1, 3 or 4), got shape {arr.shape}")
    arr = arr[..., :3].astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise LesiondiffError(f"expected grey levels in [0, 255], got values in "
                              f"[{arr.min():g}, {arr.max():g}]")
    if arr.shape[2] == 3 and (arr == arr[..., :1]).all():
        arr = arr[..., :1]
    return arr


def resolve(name_or_folder: str | Path) -> Path:
    """The folder ``load`` reads: a shipped model's (a ``str`` that is one of their names), else the path."""
    if isinstance(name_or_folder, str) and name_or_folder in model_names():
        return model_dir(name_or_folder)
    folder = Path(name_or_folder)
    if not folder.is_dir():
        raise LesiondiffError(f"{name_or_folder}: no such run folder, and not a shipped model "
                              f"({', '.join(model_names()) or 'none'}; lesiondiff models lists them)")
    return folder


def load(name_or_folder: str | Path, device: str | None = None, checkpoint: str = "best",
         overrides: list[str] | None = None, postprocess: bool = True, **options) -> Segmenter:
    """A ready :class:`Segmenter` of a shipped model (``"busi"``; ``lesiondiff models``), a run folder, an
    ensemble folder (``lesiondiff ensemble``) or an average folder (``lesiondiff average``). A name of a
    shipped model means that model; write a folder of the same name as ``"./busi"`` or a ``Path``.

    ``device``: cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu). ``checkpoint``: best or last.
    ``options``: sampling settings as ``lesiondiff predict`` takes them, each a config override
    (:data:`OPTIONS`): ``samples``, ``steps``, ``sampler``, ``seed``, ``tta`` (none, flips, d4),
    ``mc_dropout``, ``threshold``, ``fusion``, ``crf``, ``prediction``; ``overrides``: any other
    ``section.key=value``. ``postprocess``: apply the run's lesion / no-lesion rule (``postprocess.json``)
    when it has one. Nothing is written."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise LesiondiffError(f"load: unknown option {unknown[0]!r}; known: {', '.join(OPTIONS)} (other "
                              "settings as overrides=['section.key=value'])")
    folder = resolve(name_or_folder)
    check_device(device)
    settings = [f"{OPTIONS[k]}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()
                if v is not None]
    settings += list(overrides or [])
    check_run_memory(folder, settings)  # before any weights load, as predict does
    predictor = Predictor.from_run(folder, checkpoint, device, settings, postprocess=postprocess)
    return Segmenter(predictor, str(name_or_folder))
