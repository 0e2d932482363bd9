"""Load a manifest split into memory as network-ready tensors.

Images are resized once to ``size`` and kept as float16 tensors, so a training step costs no disk I/O or
decoding; at 128 px that is 32 KiB per grey image. Masks are the union of all of a row's mask files.

With ``DataConfig.healthy`` set (DiffSeg's class-labelled training data, Shuai et al. 2024, Sec. 4.1), each
row also gets a healthy version of its image (data/healthy.py): the resized image with its resized lesion
filled in from the surrounding skin, or the image itself where the mask is empty (a normal image, e.g. BUSI
normal).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..config import DataConfig
from ..errors import LesiondiffError
from .healthy import METHODS, remove_lesion
from .io import read_image, read_masks
from .manifest import Manifest
from .splits import case_folds, fold_of_row
from .transforms import preprocess_image, preprocess_mask


@dataclass
class SplitData:
    """images [N,C,S,S] in [-1,1] (float16), masks [N,1,S,S] in {-1,+1} (float16), and each row's fields.

    ``lesion`` [N] bool: the row's mask is non-empty (at the model size), i.e. the class of the original image
    (DiffSeg's c1 "unhealthy"; False is c0 "healthy"). ``healthy`` [N,C,S,S] in [-1,1] (float16), only with
    ``DataConfig.healthy``: the image with its lesion removed (the image itself where ``lesion`` is False).
    """

    images: torch.Tensor
    masks: torch.Tensor
    rows: list[dict] = field(default_factory=list)
    healthy: torch.Tensor | None = None
    lesion: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.lesion is None:
            self.lesion = (self.masks > 0).flatten(1).any(1)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> dict:
        """``{"image", "mask", "lesion" [B] bool}`` and, when built, ``"healthy"``, float32 on ``device``."""
        out = {
            "image": self.images[index].to(device, torch.float32),
            "mask": self.masks[index].to(device, torch.float32),
            "lesion": self.lesion[index].to(device),
        }
        if self.healthy is not None:
            out["healthy"] = self.healthy[index].to(device, torch.float32)
        return out


def select_rows(manifest: Manifest, cfg: DataConfig, role: str) -> list[dict]:
    """Rows for ``role`` ("train" or "val"). With ``cfg.fold`` set, the non-test rows are split by fold."""
    if cfg.fold is not None:
        pool = [r for r in manifest.rows() if r["split"] != "test"]
        rows = [r for r in pool if (int(r["fold"]) == cfg.fold) == (role == "val")]
    else:
        rows = manifest.rows(split=cfg.train_split if role == "train" else cfg.val_split)
    if role == "train" and cfg.include_labels:
        rows = [r for r in rows if r["label"] in cfg.include_labels]
    if role == "train" and cfg.train_folds is not None:
        folds, k = check_train_folds(cfg.train_folds)
        assigned = case_folds(rows, folds)
        rows = [r for r in rows if fold_of_row(r, assigned) != k]
    return rows


def check_train_folds(value) -> tuple[int, int]:
    """``data.train_folds`` as (F, k), or a one-line error."""
    try:
        folds, k = (int(v) for v in value)
    except (TypeError, ValueError):
        raise LesiondiffError(f"data.train_folds must be [F, k], got {value!r}") from None
    if folds < 2 or not 0 <= k < folds:
        raise LesiondiffError(f"data.train_folds must be [F, k] with F >= 2 and 0 <= k < F, got {value!r}")
    return folds, k


def mask_paths(row: dict) -> list[str]:
    masks = row.get("masks") or []
    return [m for m in masks.split(";") if m] if isinstance(masks, str) else list(masks)


def image_channels(images: list[torch.Tensor]) -> int:
    """3 if most images are colour, else 1: a grey modality with a few colour-annotated images (BUSI has 12 of
    624, with coloured markers) stays grey, and the colour ones are converted to luminance."""
    return 3 if 2 * sum(im.shape[0] == 3 for im in images) > len(images) else 1


def load_rows(rows: list[dict], cfg: DataConfig, channels: int = 0, desc: str = "loading") -> SplitData:
    """Read, check and preprocess ``rows``. ``channels`` 0 means: decide by ``image_channels``."""
    if not rows:
        raise LesiondiffError(f"{cfg.manifest or 'manifest'}: no rows for this split")
    images, masks = [], []
    for row in tqdm(rows, desc=desc, unit="img", leave=False):
        raw = read_image(row["image"])
        paths = mask_paths(row)
        mask = read_masks(paths, shape=raw.shape[:2]) if paths else None
        c = channels or raw.shape[2]
        images.append(preprocess_image(raw, cfg.size, c, cfg.intensity_window))
        if mask is None:
            masks.append(-torch.ones(1, cfg.size, cfg.size))
        else:
            masks.append(preprocess_mask(mask, cfg.size))
    c = channels or image_channels(images)
    images = [im if im.shape[0] == c else preprocess_image(read_image(row["image"]), cfg.size, c,
                                                           cfg.intensity_window)
              for im, row in zip(images, rows)]
    images, masks = torch.stack(images), torch.stack(masks)
    healthy = healthy_images(images, masks, cfg.healthy, [r["image"] for r in rows]) if cfg.healthy else None
    return SplitData(images.half(), masks.half(), rows, None if healthy is None else healthy.half())


def healthy_images(images: torch.Tensor, masks: torch.Tensor, method: str, names: list[str] | None = None
                   ) -> torch.Tensor:
    """``images [N,C,S,S]`` in [-1,1] with each lesion (``masks [N,1,S,S] > 0``) removed by
    ``remove_lesion(..., method)`` at this size; images with an empty mask are returned as they are. ``names``
    (one per image) name the file in errors, e.g. a lesion that covers the whole image."""
    if method not in METHODS:
        raise LesiondiffError(f"data.healthy: unknown lesion-removal method {method!r}; known: {', '.join(METHODS)}")
    out = images.clone()
    for i in tqdm(range(len(images)), desc=f"healthy images ({method})", unit="img", leave=False):
        m = (masks[i, 0] > 0).numpy()
        if m.any():
            try:
                filled = remove_lesion(images[i].permute(1, 2, 0).numpy(), m, method)
            except LesiondiffError as exc:
                raise LesiondiffError(f"{names[i] if names else f'image {i}'}: {exc}") from None
            out[i] = torch.from_numpy(filled).permute(2, 0, 1)
    return out
