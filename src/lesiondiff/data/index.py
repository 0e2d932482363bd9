"""``lesiondiff data index``: dataset folders -> one manifest with splits.

Each folder's layout is recognised (``layouts.py``; volumes are sliced, ``volumes.py``), several folders are
merged with ``<dataset>_<id>`` ids, every record is checked (it decodes, image and masks agree in size), and
the splits are assigned stratified by label (and dataset), grouped by case (``manifest.assign_splits``).
"""

from __future__ import annotations

from pathlib import Path

from .layouts import check_records, index_folder
from .manifest import Manifest, merge_indexes, summarize
from .splits import assign_splits
from .volumes import is_slice_record, split_ratios


def index_datasets(paths: list[Path], output: Path, layout: str | None = None, slices: str = "all",
                   slices_dir: Path | None = None, skip_bad: bool = False, check: bool = True,
                   ratios: tuple[float, ...] | None = None, seed: int = 0, folds: int = 0,
                   train_only: list[str] | None = None) -> list[str]:
    """Index ``paths`` into the manifest ``output``; returns the lines that say what was found and how it was
    split. ``skip_bad``: leave out (and report) records that fail to read instead of stopping at the first."""
    slices_dir = slices_dir or output.with_name(f"{output.stem}_slices")
    several = len(paths) > 1
    on_error = "skip" if skip_bad else "raise"
    results = [index_folder(path, layout, slices=slices,
                            slices_dir=slices_dir / f"{k}-{path.resolve().name}" if several else slices_dir,
                            on_error=on_error, progress=True)
               for k, path in enumerate(paths)]
    result = merge_indexes(results) if several else results[0]
    names = list(dict.fromkeys(r.dataset for r in result.records))  # merged records keep the folders' order
    lines = [f"dataset {name}: {len(part.records)} records, layout {part.layout}, from {part.root}"
             for part, name in zip(results, names)] if several else []
    if check:
        good, bad = check_records(result.records, on_error=on_error)
        result.records = good
        result.skipped.extend(bad)
    ratios = ratios or split_ratios(result.records, (0.7, 0.15, 0.15))
    rows = assign_splits(result.records, ratios=ratios, seed=seed, k_folds=folds, train_only_labels=train_only)
    manifest = Manifest.from_records(rows) if not isinstance(rows, Manifest) else rows
    manifest.write(output)
    lines.append(summarize(manifest if not result.skipped else result))
    volumes = {r.extra["volume"] for r in result.records if is_slice_record(r)}
    if volumes:
        lines.append(f"slices: {sum(map(is_slice_record, result.records))} from {len(volumes)} volumes in "
                     f"{slices_dir}")
    strata = "dataset and label" if several else "label"
    kept = f"; label(s) {', '.join(train_only)} in train only" if train_only else ""
    lines.append(f"split: seed {seed}, ratios {'/'.join(str(r) for r in ratios)}, stratified by {strata}, "
                 f"grouped by case{f', {folds} folds' if folds else ''}{kept}")
    if several:
        lines.append(f"ids and cases: '<dataset>_<id>' for the {len(results)} datasets ({', '.join(names)})")
    return lines
