"""Detect and index dataset folders: BUSI, Kvasir-SEG, ISIC, DRIVE, nnU-Net raw and a generic layout.

Each layout is a class registered in :data:`LAYOUTS` with ``detect(root) -> bool`` and
``index(root) -> IndexResult``. The dataset folder may be given at any depth up to two levels above the
folder that holds the files (``BUSI/`` or ``BUSI/Dataset_BUSI_with_GT/``). Indexing only lists folders; it
never decodes an image (nnU-Net files have their header read to tell 3D volumes from 2D images), except
that :func:`index_folder`, given a slices folder, cuts 3D volumes into 2D slice PNGs (:mod:`.volumes`).
:func:`check_records` does the full decode and size check once, when asked.

An optional ``labels.csv`` (columns ``id,label``, optionally ``case``) in the dataset folder, or in the folder
given, sets labels (and patient/case groups) for any layout.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from ..errors import LesiondiffError
from ..registry import Registry
from .io import FileError, is_image_file, num_slices, read_image, read_masks, split_name
from .records import Record
from .volumes import check_slice_mode, is_volume_record, slice_volumes, unsliced_reason

LAYOUTS = Registry("layout")
SEARCH_DEPTH = 2
"""How many folder levels below the given folder are searched for a layout's files."""


@dataclass
class IndexResult:
    """What :func:`index_folder` found. ``root`` is the folder that holds the data (absolute);
    ``skipped`` lists ``(path, reason)`` for files that were left out."""

    layout: str
    root: str
    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --- folder helpers -----------------------------------------------------------------------------------


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return []


def _subdirs(folder: Path) -> dict[str, Path]:
    """Child folders by lower-cased name."""
    return {e.name.lower(): Path(e.path) for e in _entries(folder) if e.is_dir()}


def _image_files(folder: Path) -> list[Path]:
    return [Path(e.path) for e in _entries(folder) if e.is_file() and is_image_file(e.name)]


def _search(root: Path, matches: Callable[[Path], bool], depth: int = SEARCH_DEPTH) -> list[Path]:
    """The shallowest folders at or below ``root`` (up to ``depth`` levels) for which ``matches`` holds."""
    level = [root]
    for _ in range(depth + 1):
        found = [d for d in level if matches(d)]
        if found or not level:
            return found
        level = [d for parent in level for d in _subdirs(parent).values()]
    return []


class _Index:
    """Collects keyed images and masks, then pairs them; duplicates and orphans go to ``skipped``."""

    def __init__(self) -> None:
        self.images: dict[str, Path] = {}
        self.masks: dict[str, list[Path]] = {}
        self.skipped: list[tuple[str, str]] = []

    def add_image(self, key: str, path: Path) -> None:
        if key in self.images:
            self.skipped.append((str(path), f"duplicate id {key!r} (also {self.images[key]})"))
        else:
            self.images[key] = path

    def add_mask(self, key: str, path: Path) -> None:
        self.masks.setdefault(key, []).append(path)

    def pairs(self) -> list[tuple[str, Path, list[Path]]]:
        out = []
        for key in sorted(self.images):
            if key in self.masks:
                out.append((key, self.images[key], self.masks[key]))
            else:
                self.skipped.append((str(self.images[key]), "no mask found"))
        for key in sorted(set(self.masks) - set(self.images)):
            self.skipped.extend((str(p), "no image") for p in self.masks[key])
        return out


def _read_labels_csv(path: Path) -> dict[str, tuple[str, str]]:
    """``labels.csv`` -> ``{id: (label, case)}`` (case '' when the column is absent)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "id" not in columns or "label" not in columns:
                raise LesiondiffError(f"{path}: needs columns id,label; found {','.join(columns) or 'none'}")
            return {r["id"]: (r["label"] or "", r.get("case") or "") for r in reader if r.get("id")}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LesiondiffError(f"{path}: cannot read labels ({e})") from None


# --- layouts ------------------------------------------------------------------------------------------


class Layout:
    """Base class: subclasses set ``name`` and ``hint`` and implement ``matches`` and ``collect``."""

    name = ""
    hint = ""

    def matches(self, folder: Path) -> bool:
        """Whether ``folder`` itself holds this layout's files (no search)."""
        raise NotImplementedError

    def collect(self, folder: Path) -> tuple[list[Record], list[tuple[str, str]]]:
        """Records and skipped files of the data ``folder`` (one that ``matches``)."""
        raise NotImplementedError

    def find(self, root: Path) -> list[Path]:
        """The shallowest matching folders at or below ``root``."""
        return _search(Path(root), self.matches)

    def detect(self, root: Path) -> bool:
        return bool(self.find(root))

    def index(self, root: Path) -> IndexResult:
        root = Path(root).resolve()
        found = self.find(root)
        if not found:
            raise LesiondiffError(f"{root}: does not look like a {self.name} dataset ({self.hint})")
        if len(found) > 1:
            names = ", ".join(os.path.relpath(d, root) for d in found)
            raise LesiondiffError(f"{root}: holds several {self.name} datasets ({names}); index one of them")
        folder = found[0]
        records, skipped = self.collect(folder)
        for labels_csv in (folder / "labels.csv", root / "labels.csv"):
            if labels_csv.is_file():
                labels = _read_labels_csv(labels_csv)
                for r in records:
                    label, case = labels.get(r.id, (r.label, ""))
                    r.label, r.case = label, case or r.case
                break
        if not records:
            raise _no_pairs(folder, skipped)
        return IndexResult(self.name, str(folder), records, skipped)


def _no_pairs(folder: str | Path, skipped: Sequence[tuple[str, str]]) -> LesiondiffError:
    first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
    return LesiondiffError(f"{folder}: no image/mask pairs found ({len(skipped)} files skipped{first})")


@LAYOUTS.register("busi")
class BusiLayout(Layout):
    """BUSI: ``{benign,malignant,normal}/<class> (N).png`` with ``<class> (N)_mask.png`` and, for several
    lesions, ``_mask_1.png``, ``_mask_2.png`` (unioned). Label = class folder; the all-zero masks of
    ``normal`` are kept as files."""

    name = "busi"
    hint = "expected benign/, malignant/ and normal/ folders of '<class> (N).png' with '_mask' PNGs"
    classes = ("benign", "malignant", "normal")
    _mask = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<n>\d+))?$", re.IGNORECASE)

    def matches(self, folder: Path) -> bool:
        subs = _subdirs(folder)
        return any(
            any(self._mask.match(split_name(e.name)[0]) for e in _entries(subs[c]))
            for c in self.classes if c in subs
        )

    def collect(self, folder: Path) -> tuple[list[Record], list[tuple[str, str]]]:
        subs = _subdirs(folder)
        records, skipped = [], []
        for label in self.classes:
            if label not in subs:
                continue
            idx = _Index()
            order: dict[Path, int] = {}
            for path in _image_files(subs[label]):
                stem = split_name(path.name)[0]
                m = self._mask.match(stem)
                if m:
                    idx.add_mask(m["stem"], path)
                    order[path] = int(m["n"] or 0)
                else:
                    idx.add_image(stem, path)
            for key, image, masks in idx.pairs():
                masks = sorted(masks, key=lambda p: order[p])
                records.append(Record(key, str(image), [str(p) for p in masks], label, dataset=self.name))
            skipped += idx.skipped
        return records, skipped


@LAYOUTS.register("generic")
class GenericLayout(Layout):
    """``images/`` and ``masks/`` folders (flat) whose files pair by name. A mask may carry a suffix
    (``x_mask.png``, ``x_segmentation.png``, ``x_gt.png``, ``x_mask_1.png``, ...) and any image format;
    several masks of one image are unioned. Folder aliases: image/imgs/img and mask/gt/labels/annotations.
    ``dataset`` is the data folder's name."""

    name = "generic"
    hint = "expected images/ and masks/ folders whose file names match (a mask may end in _mask)"
    image_dirs = ("images", "image", "imgs", "img")
    mask_dirs = ("masks", "mask", "gt", "groundtruth", "ground_truth", "labels", "annotations")
    _suffix = re.compile(
        r"[_\-. ]?(mask|masks|segmentation|seg|label|labels|gt|annotation|anno)([_\-]?\d+)?$", re.IGNORECASE
    )

    def _dirs(self, folder: Path) -> tuple[Path, Path] | None:
        subs = _subdirs(folder)
        images = next((subs[n] for n in self.image_dirs if n in subs), None)
        masks = next((subs[n] for n in self.mask_dirs if n in subs), None)
        return (images, masks) if images and masks else None

    def matches(self, folder: Path) -> bool:
        return self._dirs(folder) is not None

    def dataset_name(self, folder: Path) -> str:
        return folder.name

    def collect(self, folder: Path) -> tuple[list[Record], list[tuple[str, str]]]:
        dirs = self._dirs(folder)
        assert dirs is not None
        idx = _Index()
        for path in _image_files(dirs[0]):
            idx.add_image(split_name(path.name)[0], path)
        for path in _image_files(dirs[1]):
            stem = split_name(path.name)[0]
            m = self._suffix.search(stem)
            key = stem if stem in idx.images or not m else stem[: m.start()]
            idx.add_mask(key, path)
        name = self.dataset_name(folder)
        records = [
            Record(key, str(image), [str(p) for p in sorted(masks)], dataset=name)
            for key, image, masks in idx.pairs()
        ]
        return records, idx.skipped


@LAYOUTS.register("kvasir")
class KvasirLayout(GenericLayout):
    """Kvasir-SEG: ``Kvasir-SEG/images/<id>.jpg`` and ``masks/<id>.jpg`` (JPEG masks: read with > 127).
    Recognised by a folder name containing 'kvasir' or the dataset's ``kavsir_bboxes.json``."""

    name = "kvasir"
    hint = "expected a Kvasir-SEG folder with images/ and masks/"

    def matches(self, folder: Path) -> bool:
        named = "kvasir" in folder.name.lower() or (folder / "kavsir_bboxes.json").is_file()
        return named and super().matches(folder)

    def dataset_name(self, folder: Path) -> str:
        return self.name


@LAYOUTS.register("isic")
class IsicLayout(Layout):
    """ISIC challenge (2016-2018) segmentation: ``ISIC_<n>.jpg`` images and ``ISIC_<n>_segmentation.png``
    masks, in the folder or its child folders (e.g. ``ISIC-2017_Validation_Data/`` and
    ``ISIC-2017_Validation_Part1_GroundTruth/``). ``source_split`` comes from the image folder's name
    (training / validation / test). Labels come from an ISIC 2017 Part 3 ground-truth CSV when present
    (melanoma, seborrheic_keratosis, else nevus); superpixel files are ignored."""

    name = "isic"
    hint = "expected ISIC_<n>.jpg images and ISIC_<n>_segmentation.png masks"
    _image = re.compile(r"^(ISIC_\d+)\.(jpe?g|png)$", re.IGNORECASE)
    _mask = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)
    _split = re.compile(r"(training|validation|test)", re.IGNORECASE)

    def _folders(self, folder: Path) -> list[Path]:
        return [folder, *_subdirs(folder).values()]

    def matches(self, folder: Path) -> bool:
        has_image = has_mask = False
        for d in self._folders(folder):
            for e in _entries(d):
                has_image = has_image or bool(self._image.match(e.name))
                has_mask = has_mask or bool(self._mask.match(e.name))
                if has_image and has_mask:
                    return True
        return False

    def collect(self, folder: Path) -> tuple[list[Record], list[tuple[str, str]]]:
        idx = _Index()
        splits: dict[str, str] = {}
        for d in self._folders(folder):
            m_split = self._split.search(d.name)
            for e in _entries(d):
                if (m := self._image.match(e.name)) and e.is_file():
                    idx.add_image(m[1], Path(e.path))
                    splits.setdefault(m[1], m_split[1].lower() if m_split else "")
                elif (m := self._mask.match(e.name)) and e.is_file():
                    idx.add_mask(m[1], Path(e.path))
        labels = self._labels(folder)
        records = []
        for key, image, masks in idx.pairs():
            extra = {"source_split": splits[key]} if splits.get(key) else {}
            records.append(Record(key, str(image), [str(p) for p in masks], labels.get(key, ""),
                                  dataset=self.name, extra=extra))
        return records, idx.skipped

    def _labels(self, folder: Path) -> dict[str, str]:
        labels: dict[str, str] = {}
        for d in self._folders(folder):
            for e in _entries(d):
                if not e.name.lower().endswith(".csv") or e.name == "labels.csv":
                    continue
                try:
                    with open(e.path, newline="", encoding="utf-8-sig") as f:
                        reader = csv.DictReader(f)
                        if not {"image_id", "melanoma", "seborrheic_keratosis"} <= set(reader.fieldnames or []):
                            continue
                        for r in reader:
                            labels[r["image_id"]] = (
                                "melanoma" if _truthy(r["melanoma"])
                                else "seborrheic_keratosis" if _truthy(r["seborrheic_keratosis"]) else "nevus"
                            )
                except (OSError, UnicodeDecodeError, csv.Error) as err:
                    raise LesiondiffError(f"{e.path}: cannot read ISIC labels ({err})") from None
        return labels


def _truthy(value: str | None) -> bool:
    try:
        return float(value or 0) > 0.5
    except ValueError:
        return False


@LAYOUTS.register("drive")
class DriveLayout(Layout):
    """DRIVE retinal vessels: ``{training,test}/images/NN_*.tif`` with ``1st_manual/NN_manual1.gif``
    (the target), ``mask/NN_*_mask.gif`` (field of view, ``extra['fov']``) and, for test,
    ``2nd_manual/NN_manual2.gif`` (a second observer, ``extra['manual2']``; not unioned). Both subsets are
    indexed; ``extra['source_split']`` says which. Labels are ''."""

    name = "drive"
    hint = "expected training/ and test/ folders with images/ and 1st_manual/"

    @staticmethod
    def _is_subset(folder: Path) -> bool:
        subs = _subdirs(folder)
        return "images" in subs and "1st_manual" in subs

    def _subsets(self, folder: Path) -> list[Path]:
        if self._is_subset(folder):
            return [folder]
        return [d for d in _subdirs(folder).values() if self._is_subset(d)]

    def matches(self, folder: Path) -> bool:
        return bool(self._subsets(folder))

    @staticmethod
    def _by_number(folder: Path | None) -> dict[str, Path]:
        return {p.name.split("_")[0]: p for p in _image_files(folder)} if folder else {}

    def collect(self, folder: Path) -> tuple[list[Record], list[tuple[str, str]]]:
        records, skipped = [], []
        for subset in self._subsets(folder):
            subs = _subdirs(subset)
            idx = _Index()
            numbers: dict[str, str] = {}
            for path in _image_files(subs["images"]):
                stem = split_name(path.name)[0]
                numbers[stem] = stem.split("_")[0]
                idx.add_image(stem, path)
            manual = self._by_number(subs["1st_manual"])
            for stem, number in numbers.items():
                if number in manual:
                    idx.add_mask(stem, manual.pop(number))
            fov, manual2 = self._by_number(subs.get("mask")), self._by_number(subs.get("2nd_manual"))
            for key, image, masks in idx.pairs():
                extra = {"source_split": subset.name.lower()}
                if numbers[key] in fov:
                    extra["fov"] = str(fov[numbers[key]])
                if numbers[key] in manual2:
                    extra["manual2"] = str(manual2[numbers[key]])
                records.append(Record(key, str(image), [str(p) for p in masks], dataset=self.name, extra=extra))
            skipped += idx.skipped + [(str(p), "no image") for p in manual.values()]
        return records, skipped


@LAYOUTS.register("nnunet")
class NnunetLayout(Layout):
    """nnU-Net raw data: ``imagesTr/<case>_0000.<ext>`` with ``labelsTr/<case>.<ext>`` (NIfTI, PNG, TIFF,
    ...). Only channel ``0000`` is used (other channels are listed as skipped). Label maps are binarised as
    foreground > 0. ``case`` is the case id, ``dataset`` the folder name (e.g. ``Dataset001_BUSI``);
    ``imagesTs`` (no labels) is ignored.

    3D data (PGDiffSeg's breast DCE-MRI): ``imagesTr/<case>_0000.nii.gz`` may be a 3D volume, or
    ``imagesTr/<case>_0000/`` a folder holding one DICOM series, with its label volume in
    ``labelsTr/<case>.nii.gz`` (same size and orientation). Such a case is listed as one volume record;
    :func:`index_folder` with a slices folder (``lesiondiff data index --slices-dir``) cuts it into 2D
    slice PNGs (:mod:`.volumes`: each volume min-max scaled to [0,255] over the whole volume, 8-bit), else
    it is skipped with a reason. ``--slices all`` (the default) keeps every slice, so empty slices give
    negatives for classifier-style priors; ``--slices lesion`` keeps slices with foreground only.

    - Patients: ``case`` (the patient id that splits group by) is the nnU-Net case id; ids such as
      ``<patient>_<visit>`` are not parsed. To group several cases of one patient, give a ``labels.csv``
      with ``id`` (the case id) and ``case`` (the patient) columns; every slice inherits it.
    - Split: ``data index`` defaults to PGDiffSeg's patient-level 70/10/20 when rows come from volumes
      (``--ratios`` overrides it).
    - Intensities: the paper then truncates to [20,200]; that is not baked into the PNGs but set in the
      config as ``data.intensity_window=[20,200]`` (the BUSI protocol uses ``[30,235]``).
    """

    name = "nnunet"
    hint = "expected imagesTr/ and labelsTr/ with <case>_0000.nii.gz and <case>.nii.gz"
    _channel = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")

    def matches(self, folder: Path) -> bool:
        subs = _subdirs(folder)
        return "imagestr" in subs and "labelstr" in subs

    def collect(self, folder: Path) -> tuple[list[Record], list[tuple[str, str]]]:
        subs = _subdirs(folder)
        idx = _Index()
        series = list(_subdirs(subs["imagestr"]).values())  # DICOM series folders
        for path in sorted(_image_files(subs["imagestr"]) + series):
            m = self._channel.match(path.name if path in series else split_name(path.name)[0])
            if not m:
                idx.skipped.append((str(path), "name lacks the _0000 channel suffix"))
            elif m["ch"] != "0000":
                idx.skipped.append((str(path), "extra channel (only channel 0000 is used)"))
            else:
                idx.add_image(m["case"], path)
        for path in _image_files(subs["labelstr"]):
            idx.add_mask(split_name(path.name)[0], path)
        records = []
        for key, image, masks in idx.pairs():
            extra = {"source_split": "training"}
            try:
                if image in series or num_slices(image) > 1:
                    extra["volume"] = str(image)
            except FileError as e:
                idx.skipped.append((e.path, e.reason))
                continue
            records.append(Record(key, str(image), [str(p) for p in masks], dataset=folder.name, extra=extra))
        return records, idx.skipped


DETECTION_ORDER = ("busi", "isic", "drive", "nnunet", "kvasir", "generic")
"""Specific layouts are tried first; ``generic`` only when none of them matches."""


def index_folder(
    root: str | Path,
    layout: str | None = None,
    slices_dir: str | Path | None = None,
    slices: str = "all",
    on_error: Literal["raise", "skip"] = "skip",
    progress: bool = False,
) -> IndexResult:
    """Find the dataset in ``root`` and list its image/mask records.

    With ``layout`` None the layout is detected; a folder holding several datasets is an error, as are a
    missing folder, an empty one, an unrecognised one and one with no image/mask pairs.

    No image is decoded, except 3D volumes when ``slices_dir`` is given: each is cut into 2D slice PNGs
    under it (:func:`.volumes.slice_volumes`; ``slices`` ``"all"`` or ``"lesion"``), and the records point
    at those; a bad volume (unreadable, or a label of another size) raises with ``on_error="raise"`` and is
    skipped with ``"skip"``. Without ``slices_dir`` volumes are skipped with a reason and nothing is written.
    """
    check_slice_mode(slices)
    result = _index(root, layout)
    volumes = [r for r in result.records if is_volume_record(r)]
    if not volumes:
        return result
    if slices_dir is None:
        result.records = [r for r in result.records if not is_volume_record(r)]
        result.skipped += [unsliced_reason(r) for r in volumes]
    else:
        result.records, bad = slice_volumes(result.records, slices_dir, slices, on_error, progress)
        result.skipped += bad
    if not result.records:
        raise _no_pairs(result.root, result.skipped)
    return result


def _index(root: str | Path, layout: str | None) -> IndexResult:
    root = Path(root).expanduser()
    if not root.exists():
        raise LesiondiffError(f"{root}: no such folder")
    if not root.is_dir():
        raise LesiondiffError(f"{root}: not a folder")
    if not _entries(root):
        raise LesiondiffError(f"{root}: empty folder")
    root = root.resolve()
    if layout is not None:
        return LAYOUTS.build(layout).index(root)
    found: list[tuple[Layout, Path]] = []
    for name in DETECTION_ORDER[:-1]:
        lay = LAYOUTS.build(name)
        found += [(lay, d) for d in lay.find(root)]
    if not found:
        generic = LAYOUTS.build("generic")
        found = [(generic, d) for d in generic.find(root)]
    if not found:
        raise LesiondiffError(
            f"{root}: unrecognised layout; expected one of: {', '.join(DETECTION_ORDER)} "
            "(simplest: put images in images/ and masks in masks/ with matching file names)"
        )
    if len(found) > 1:
        listing = ", ".join(f"{lay.name} ({os.path.relpath(d, root)})" for lay, d in found)
        raise LesiondiffError(f"{root}: holds several datasets: {listing}; index one folder at a time")
    lay, folder = found[0]
    return lay.index(folder)


def check_records(
    records: Sequence[Record], on_error: Literal["raise", "skip"] = "raise", progress: bool = False
) -> tuple[list[Record], list[tuple[str, str]]]:
    """Decode every image and mask once and check that each mask (and each image-file ``extra``, such as
    DRIVE's field of view, but not a slice's source ``volume``) has its image's size.

    Returns ``(good, skipped)`` with ``skipped`` as ``(path, reason)``. With ``on_error="raise"`` the first
    bad file raises :class:`LesiondiffError` naming it; with ``"skip"`` bad records are left out.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    good: list[Record] = []
    skipped: list[tuple[str, str]] = []
    for rec in tqdm(records, desc="checking", unit="img", disable=not progress, leave=False):
        try:
            shape = read_image(rec.image).shape[:2]
            read_masks(list(rec.masks), shape=shape)
            for path in _extra_files(v for k, v in rec.extra.items() if k != "volume"):
                read_masks([path], shape=shape)
        except FileError as e:
            if on_error == "raise":
                raise
            skipped.append((e.path, e.reason))
            continue
        good.append(rec)
    return good, skipped


def _extra_files(values: Iterable[str]) -> list[str]:
    return [v for v in values if os.path.isabs(v) and is_image_file(v)]


_PAIRED_MASK = re.compile(r"^(?P<stem>.+?)_(?:mask(?:_\d+)?|segmentation)$", re.IGNORECASE)


def known_masks(root: str | Path) -> dict[Path, str]:
    """The mask files in a folder of images (resolved path -> why it is a mask), so that ``predict FOLDER``
    predicts every image and skips only what is a known mask of a known layout:
    - the masks (and image-file extras such as DRIVE's field of view) of every layout found at or below ``root``
      (:data:`DETECTION_ORDER`; the same search as indexing), and the files a layout took for masks of a
      missing image;
    - in any folder, ``<stem>_mask.*``, ``<stem>_mask_<n>.*`` and ``<stem>_segmentation.*`` beside an image
      ``<stem>.*`` (the BUSI and ISIC naming), so a class folder of BUSI given alone is read right.
    Any other file is an image, whatever its name (``scan_mask.png`` with no ``scan.png`` beside it)."""
    root = Path(root).resolve()
    found: dict[Path, str] = {}
    for name in DETECTION_ORDER:
        layout = LAYOUTS.build(name)
        for folder in layout.find(root):
            try:
                records, skipped = layout.collect(folder)
            except LesiondiffError:
                continue
            paths = [m for r in records for m in (*r.masks, *_extra_files(r.extra.values()))]
            paths += [p for p, reason in skipped if reason == "no image"]
            for p in paths:
                found.setdefault(Path(p).resolve(), f"{name} masks")
    for path in root.rglob("*"):
        m = _PAIRED_MASK.match(split_name(path.name)[0])
        if m and path.is_file() and is_image_file(path) and path.resolve() not in found and any(
                split_name(sibling.name)[0] == m["stem"] and is_image_file(sibling)
                for sibling in path.parent.glob(glob.escape(m["stem"]) + ".*")):
            found[path.resolve()] = "masks beside their image (<stem>_mask, _mask_N, _segmentation)"
    return found
