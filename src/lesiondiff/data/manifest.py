"""The manifest: one CSV row per image, with its masks, label, patient/case group, split and fold.

Columns: ``id, image, masks, label, case, dataset, split, fold``, then each ``extra`` key of the records
(e.g. ``fov``, ``source_split``) as its own column. ``masks`` is ``;``-joined absolute paths (empty means an
all-background mask); ``split`` is ``train``, ``val``, ``test`` or empty; ``fold`` is ``0..k-1`` or ``-1``.

In memory a row is a plain ``dict``: the columns above, with ``masks`` as ``list[str]`` and ``fold`` as
``int``. Splits come from ``data/splits.py`` (``assign_splits``): seeded, stratified by label (by dataset and label when
the rows come from several datasets) and grouped by case. :func:`merge_indexes` joins the index results of
several dataset folders into one unified manifest (UniSegDiff: one model over many datasets).
:meth:`Manifest.select` picks the rows of a split (``train``, ``val``, ``test``) or of a fold (``fold:K``).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LesiondiffError
from ..io_utils import UNSAFE_NAME, atomic_write_text, name_problem
from .io import FileError, image_size
from .layouts import IndexResult
from .records import Record

COLUMNS = ("id", "image", "masks", "label", "case", "dataset", "split", "fold")
SPLITS = ("train", "val", "test")
SELECTIONS = "train, val, test or fold:K"
"""What :meth:`Manifest.select` (and so ``--split`` of predict and evaluate) accepts."""

Row = dict[str, Any]


def _as_row(item: Record | Row) -> Row:
    """A normalised row dict from a :class:`Record` or a (possibly CSV-shaped) row dict."""
    src = asdict(item) if isinstance(item, Record) else dict(item)
    extra = {str(k): str(v) for k, v in (src.pop("extra", None) or {}).items()}
    masks = src.get("masks") or []
    if isinstance(masks, str):
        masks = [m for m in masks.split(";") if m]
    fold = src.get("fold")
    row: Row = {
        "id": str(src["id"]),
        "image": str(src["image"]),
        "masks": [str(m) for m in masks],
        "label": str(src.get("label") or ""),
        "case": str(src.get("case") or src["id"]),
        "dataset": str(src.get("dataset") or ""),
        "split": str(src.get("split") or ""),
        "fold": -1 if fold in (None, "") else int(fold),
    }
    for key, value in {**src, **extra}.items():
        if key not in row and value not in (None, ""):
            row[key] = str(value)
    return row


class Manifest:
    """A list of row dicts (see the module docstring) that reads and writes the manifest CSV."""

    def __init__(self, rows: Iterable[Record | Row] = ()) -> None:
        self._rows = [_as_row(r) for r in rows]
        self.source: Path | None = None  # the CSV it was read from, named in errors

    @classmethod
    def from_records(cls, items: Iterable[Record | Row]) -> Manifest:
        """From layout records (split '' and fold -1) or rows from :func:`assign_splits`."""
        return cls(items)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows())

    @property
    def columns(self) -> list[str]:
        extras = sorted({k for r in self._rows for k in r} - set(COLUMNS))
        return [*COLUMNS, *extras]

    def rows(self, split: str | None = None, fold: int | None = None, exclude_fold: int | None = None) -> list[Row]:
        """Copies of the rows, optionally only ``split``, only ``fold``, or all but ``exclude_fold``."""
        return [
            {**r, "masks": list(r["masks"])}
            for r in self._rows
            if (split is None or r["split"] == split)
            and (fold is None or r["fold"] == fold)
            and (exclude_fold is None or r["fold"] != exclude_fold)
        ]

    def folds(self) -> list[int]:
        """The fold numbers present (``fold >= 0``), sorted; empty for a manifest indexed without ``--folds``."""
        return sorted({r["fold"] for r in self._rows if r["fold"] >= 0})

    def select(self, which: str | None) -> list[Row]:
        """Copies of the rows of split ``which`` (``train``, ``val``, ``test``; None: every row), or with
        ``which = "fold:K"`` the rows of fold K: in k-fold cross-validation the rows that are validated on
        when training with ``data.fold=K``. Test rows have fold -1, so they are never in a fold.

        Raises :class:`LesiondiffError` for any other value, for ``fold:K`` on a manifest without folds and
        for a K it does not have. The result may be empty (a split with no rows).
        """
        if which is None or which in SPLITS:
            return self.rows(split=which)
        where = f"{self.source}: " if self.source else ""
        kind, sep, number = which.partition(":")
        if kind != "fold" or not sep:
            raise LesiondiffError(f"{where}unknown split {which!r}; expected {SELECTIONS} (K: a fold number)")
        try:
            k = int(number)
        except ValueError:
            raise LesiondiffError(f"{where}{which!r}: K in fold:K must be a fold number, e.g. fold:0") from None
        folds = self.folds()
        if not folds:
            raise LesiondiffError(f"{where}no folds (fold -1 on every row), so {which!r} selects nothing; index "
                                  "the data with lesiondiff data index ... --folds K")
        if k not in folds:
            raise LesiondiffError(f"{where}no fold {k}; this manifest has folds {', '.join(map(str, folds))}")
        return self.rows(fold=k)

    def write(self, path: str | Path) -> None:
        """Write the CSV atomically (temp file, then rename)."""
        columns = self.columns
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        for r in self._rows:
            bad = next((m for m in r["masks"] if ";" in m), None)
            if bad:
                raise LesiondiffError(f"{bad}: a mask path may not contain ';' (the manifest's separator)")
            writer.writerow({**r, "masks": ";".join(r["masks"])})
        atomic_write_text(Path(path), buffer.getvalue())

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a manifest CSV; relative image/mask paths are taken relative to the CSV's folder.

        Raises :class:`LesiondiffError` naming the file (and line) when it is missing, not CSV, lacks a
        required column, has a row of the wrong length, a bad fold or split, or a duplicate id.
        """
        path = Path(path)
        if not path.is_file():
            raise LesiondiffError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
        rows: list[Row] = []
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f, restkey="\0extra", strict=True)
                header = reader.fieldnames
                if not header:
                    raise LesiondiffError(f"{path}: empty file; expected a header with {','.join(COLUMNS)}")
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise LesiondiffError(
                        f"{path}: not a manifest: missing column(s) {', '.join(missing)} "
                        f"(expected {','.join(COLUMNS)})"
                    )
                for raw in reader:
                    rows.append(_parse_row(path, reader.line_num, raw, len(header)))
        except UnicodeDecodeError:
            raise LesiondiffError(f"{path}: not a text CSV file") from None
        except csv.Error as e:
            raise LesiondiffError(f"{path}: malformed CSV ({e})") from None
        seen: set[str] = set()
        for r in rows:
            if r["id"] in seen:
                raise LesiondiffError(f"{path}: duplicate id {r['id']!r}")
            seen.add(r["id"])
        manifest = cls(rows)
        manifest.source = path
        return manifest


def _parse_row(path: Path, line: int, raw: dict, n_columns: int) -> Row:
    where = f"{path}: line {line}"
    if "\0extra" in raw or any(v is None for v in raw.values()):
        n = n_columns + len(raw.get("\0extra", [])) - sum(v is None for v in raw.values())
        raise LesiondiffError(f"{where}: {n} fields, but the header has {n_columns}")
    if not raw["id"] or not raw["image"]:
        raise LesiondiffError(f"{where}: id and image may not be empty")
    problem = name_problem(raw["id"])
    if problem:  # ids become output file names (<id>_mask.png): one that names a path would write elsewhere
        raise LesiondiffError(f"{where}: id {raw['id']!r} cannot be a file name ({problem}); ids are file names "
                              f"of predictions, so each must be {UNSAFE_NAME}")
    if raw["split"] not in ("", *SPLITS):
        raise LesiondiffError(f"{where}: split must be one of {', '.join(SPLITS)} or empty, got {raw['split']!r}")
    try:
        fold = int(raw["fold"]) if raw["fold"].strip() else -1
    except ValueError:
        raise LesiondiffError(f"{where}: fold must be an integer, got {raw['fold']!r}") from None
    base = path.resolve().parent
    row = _as_row({**raw, "fold": fold})
    row["image"] = str(base / row["image"])
    row["masks"] = [str(base / m) for m in row["masks"]]
    return row


def merge_indexes(results: Sequence[IndexResult]) -> IndexResult:
    """One index of several dataset folders, for a unified manifest (``lesiondiff data index A B C``).

    Every folder's records get one dataset name, distinct between folders: the name its layout gives
    (``busi``, ``kvasir``, ``isic``, ``drive``; the data folder's name for generic and nnU-Net folders), or,
    where two folders would share one, each of those its data folder's name (then ``-2``, ``-3``, ... while
    still equal). ids and cases are always prefixed ``<dataset>_`` (``busi_benign (1)``, ``kvasir_cju0...``),
    so ids stay unique and file names (predictions are ``<id>_mask.png``) stay valid, and a patient/case never
    joins rows of two datasets. Records keep every other field. ``layout`` and ``root`` of the result list
    the folders' layouts and roots (``", "``-joined); ``skipped`` is every folder's.

    The same data folder given twice, and ids that collide even so, are errors.
    """
    roots = [r.root for r in results]
    twice = next((r for r in roots if roots.count(r) > 1), None)
    if twice:
        raise LesiondiffError(f"{twice}: given twice; give each dataset folder once")
    own = [Counter(rec.dataset for rec in r.records).most_common(1)[0][0] if r.records else "" for r in results]
    names = [name if name and own.count(name) == 1 else os.path.basename(root) for name, root in zip(own, roots)]
    for i, name in enumerate(names):
        n = names[:i].count(name)
        names[i] = f"{name}-{n + 1}" if n else name
    records: list[Record] = []
    for result, name in zip(results, names):
        for rec in result.records:
            records.append(Record(f"{name}_{rec.id}", rec.image, list(rec.masks), rec.label, f"{name}_{rec.case}",
                                  name, dict(rec.extra)))
    ids = Counter(r.id for r in records)
    dupe = next((i for i, c in ids.items() if c > 1), None)
    if dupe:
        raise LesiondiffError(f"id {dupe!r} occurs twice after prefixing the dataset names {', '.join(names)}")
    return IndexResult(", ".join(r.layout for r in results), ", ".join(roots), records,
                       [s for r in results for s in r.skipped])


# --- summary ------------------------------------------------------------------------------------------


def _counts(values: Iterable[str]) -> str:
    counts = Counter(values)
    return ", ".join(f"{k or '(none)'} {v}" for k, v in sorted(counts.items())) or "none"


def _per_dataset(rows: list[Row]) -> str:
    """"N (labels ...; split train N, ...; folds 0: N, ...)" for the rows of one dataset."""
    parts = [f"labels {_counts(r['label'] for r in rows)}" if any(r["label"] for r in rows) else "no labels"]
    splits = Counter(r["split"] for r in rows if r["split"])
    if splits:
        parts.append("split " + ", ".join(f"{s} {splits[s]}" for s in SPLITS if splits[s]))
    folds = Counter(r["fold"] for r in rows if r["fold"] >= 0)
    if folds:
        parts.append("folds " + ", ".join(f"{k}: {v}" for k, v in sorted(folds.items())))
    return f"{len(rows)} ({'; '.join(parts)})"


def summarize(source: IndexResult | Manifest, sizes: bool = True, max_skipped: int = 20) -> str:
    """A multi-line, human-readable report of an index result or a manifest.

    Lists the layout and root (index results), counts per dataset, label, split and fold (with several
    datasets also one line per dataset with its labels, splits and folds), the image size
    range (from file headers; ``sizes=False`` skips reading them), mask file counts and the skipped files
    with their reasons (the first ``max_skipped``, then ``and N more``).
    """
    lines: list[str] = []
    skipped: list[tuple[str, str]] = []
    if isinstance(source, IndexResult):
        rows = [_as_row(r) for r in source.records]
        skipped = list(source.skipped)
        lines += [f"layout: {source.layout}", f"root: {source.root}"]
    else:
        rows = source.rows()
    lines.append(f"records: {len(rows)}")
    lines.append(f"datasets: {_counts(r['dataset'] for r in rows)}")
    datasets = sorted({r["dataset"] for r in rows})
    if len(datasets) > 1:
        lines += [f"dataset {name or '(none)'}: {_per_dataset([r for r in rows if r['dataset'] == name])}"
                  for name in datasets]
    lines.append(f"labels: {_counts(r['label'] for r in rows) if any(r['label'] for r in rows) else 'none'}")
    if any(r["split"] for r in rows):
        for split in (*SPLITS, ""):
            part = [r for r in rows if r["split"] == split]
            if part:
                lines.append(f"split {split or '(none)'}: {len(part)} ({_counts(r['label'] for r in part)})")
        folds = Counter(r["fold"] for r in rows if r["fold"] >= 0)
        if folds:
            lines.append("folds: " + ", ".join(f"{k}: {v}" for k, v in sorted(folds.items())))
    n_masks = sum(len(r["masks"]) for r in rows)
    multi = sum(len(r["masks"]) > 1 for r in rows)
    empty = sum(not r["masks"] for r in rows)
    lines.append(f"mask files: {n_masks} ({multi} records with more than one, {empty} with none)")
    if sizes and rows:
        shapes = []
        for r in rows:
            try:
                shapes.append(image_size(r["image"]))
            except FileError as e:
                skipped.append((e.path, e.reason))
        if shapes:
            hs, ws = [s[0] for s in shapes], [s[1] for s in shapes]
            lines.append(f"image size: H {min(hs)}-{max(hs)}, W {min(ws)}-{max(ws)} px")
    lines.append(f"skipped: {len(skipped)}")
    lines += [f"  {path}: {reason}" for path, reason in skipped[:max_skipped]]
    if len(skipped) > max_skipped:
        lines.append(f"  and {len(skipped) - max_skipped} more")
    return "\n".join(lines)


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (first and last included), or all of them when fewer. With
    n <= len(items) the rounded positions are at least one apart, so none repeats."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def split_rows(manifest: str | Path, split: str, max_images: int | None) -> tuple[Manifest, list[dict]]:
    """The manifest and the rows of ``split`` (train, val, test or fold:K, :meth:`Manifest.select`; "" or None:
    every row), or ``max_images`` of them evenly spaced over it (not its first rows: manifests list classes in
    blocks, BUSI benign first); a split without rows is a one-line error."""
    m = Manifest.read(manifest)
    rows = m.select(split or None)
    if not rows:
        raise LesiondiffError(f"{manifest}: no rows in split {split!r}")
    return m, evenly_spaced(rows, max_images) if max_images else rows


def dataset_name(manifest: Manifest, path: str | Path) -> str:
    """The manifest's dataset column when it holds one value, else the file's stem."""
    values = {r["dataset"] for r in manifest.rows() if r["dataset"]}
    return values.pop() if len(values) == 1 else Path(path).stem
