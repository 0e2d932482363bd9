"""Split assignment of a manifest's rows: seeded, stratified by label (by dataset and label when the rows come from
several datasets) and grouped by case (a patient's images never straddle two splits), into train / val / test
and, optionally, k folds of the non-test rows (``lesiondiff data index --ratios --seed --folds``). The same seed
gives the same split on every machine."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import LesiondiffError
from .manifest import SPLITS, Row, _as_row
from .records import Record


def _quotas(n: int, ratios: Sequence[float], prior: Sequence[int]) -> list[int]:
    """Largest-remainder integer shares of ``n``; every part with a positive ratio gets at least one item
    when ``n`` allows (else the parts with the largest ratios do). Ties go to the part with the fewest
    items so far (``prior``), so many small strata do not all round towards the same part."""
    exact = [n * r for r in ratios]
    counts = [int(np.floor(q)) for q in exact]
    order = sorted(range(len(ratios)), key=lambda j: (-(exact[j] - counts[j]), prior[j], j))
    for j in order[: n - sum(counts)]:
        counts[j] += 1
    # Small strata: the min(n, parts) parts with the largest ratios get one item each.
    eligible = sorted((j for j, r in enumerate(ratios) if r > 0), key=lambda j: (-ratios[j], prior[j], j))[:n]
    for j in eligible:
        if counts[j] == 0:
            donors = [i for i in range(len(counts)) if counts[i] > (1 if i in eligible else 0)]
            donor = max(donors, key=lambda i: (counts[i] - exact[i], -i))
            counts[donor] -= 1
            counts[j] = 1
    return counts


def _distribute(
    groups: list[list[Row]], ratios: Sequence[float], totals: list[int], rng: np.random.Generator
) -> tuple[list[int], list[list[Row]]]:
    """Shuffle ``groups`` and give each to a part (index) so that row counts follow ``ratios``; largest
    groups are placed first, each into the part furthest below its quota. Returns (part of each shuffled
    group, shuffled groups) and adds the parts' row counts to ``totals``."""
    groups = [groups[i] for i in rng.permutation(len(groups))]
    sizes = [len(g) for g in groups]
    target = _quotas(sum(sizes), ratios, totals)
    current = [0] * len(ratios)
    parts = [j for j, r in enumerate(ratios) if r > 0]
    out = [0] * len(groups)
    for i in sorted(range(len(groups)), key=lambda i: -sizes[i]):
        j = max(parts, key=lambda p: (target[p] - current[p], -p))
        current[j] += sizes[i]
        out[i] = j
    for j, c in enumerate(current):
        totals[j] += c
    return out, groups


def _case_key(row: Row) -> tuple[str, str]:
    """A patient/case is one within its dataset: equal case names of two datasets are two cases."""
    return row["dataset"], row["case"]


def _strata(rows: list[Row], stratify: bool) -> dict[str, list[list[Row]]]:
    """Rows grouped by case, groups by label (a group's label is its most common one; ties: first name)."""
    cases: dict[str, list[Row]] = {}
    for r in rows:
        cases.setdefault(r["case"], []).append(r)
    strata: dict[str, list[list[Row]]] = {}
    for case in sorted(cases):
        group = cases[case]
        counts = Counter(r["label"] for r in group)
        label = min(counts, key=lambda lb: (-counts[lb], lb)) if stratify else ""
        strata.setdefault(label, []).append(group)
    return dict(sorted(strata.items()))


def _assign(rows: list[Row], ratios: tuple[float, ...], seed: int, stratify: bool, k_folds: int, where: str) -> None:
    """Set ``split`` and ``fold`` of ``rows`` (one dataset's, sorted by id) in place; see :func:`assign_splits`."""
    rng = np.random.default_rng(seed)
    totals = [0, 0, 0]
    for groups in _strata(rows, stratify).values():
        parts, shuffled = _distribute(groups, ratios, totals, rng)
        for j, group in zip(parts, shuffled):
            for r in group:
                r["split"], r["fold"] = SPLITS[j], -1
    if k_folds:
        pool = [r for r in rows if r["split"] != "test"]
        n_cases = len({r["case"] for r in pool})
        if n_cases < k_folds:
            raise LesiondiffError(f"{where}{k_folds} folds need at least {k_folds} non-test cases; there are "
                                  f"{n_cases}")
        fold_totals = [0] * k_folds
        for groups in _strata(pool, stratify).values():
            parts, shuffled = _distribute(groups, [1.0 / k_folds] * k_folds, fold_totals, rng)
            for j, group in zip(parts, shuffled):
                for r in group:
                    r["fold"] = j


def assign_splits(
    items: Iterable[Record | Row],
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify: bool = True,
    k_folds: int = 0,
    train_only_labels: Sequence[str] = (),
) -> list[Row]:
    """Rows with ``split`` in train/val/test (and ``fold``), sorted by id.

    ``ratios`` (train, val, test) must be non-negative and sum to 1. Within each label stratum (one stratum
    when ``stratify`` is False) the cases are shuffled with ``numpy.random.default_rng(seed)`` and given to
    the splits with largest-remainder row quotas, so every split with a positive ratio gets at least one
    case of each label that has enough cases. All rows of a case share a split. With ``k_folds`` >= 2 the
    non-test rows also get folds ``0..k-1`` the same way (test rows keep ``-1``); the train/val/test split
    does not depend on ``k_folds``. The result depends only on the ids, cases, labels and ``seed``.

    Several datasets (rows with different ``dataset`` values, a unified manifest): each dataset is split on
    its own as above, with the same ``seed``, so the strata are (dataset, label) pairs, every dataset has its
    share of each split and fold (a dataset with fewer than ``k_folds`` non-test cases is an error), a case
    is one within its dataset, and each dataset's rows get exactly the split and folds they get when that
    dataset is split alone (ids prefixed alike keep their order): the unified test set is the union of the
    single-dataset test sets.

    Rows labelled one of ``train_only_labels`` are then moved to ``train`` with fold ``-1`` (never a
    validation fold): PalScDiff trains on BUSI's "normal" images but never validates or tests on them.
    The splits are assigned as without the option first, so every other row keeps the split and fold it
    would have had, except rows that share a case with a moved row: the whole case moves, so a patient
    never spans splits. A label with no rows is an error (most likely a typo); with several datasets the
    label is moved wherever it occurs (BUSI's ``normal``: Kvasir-SEG and ISIC have no such label).
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise LesiondiffError(f"split ratios (train, val, test) must be >= 0 and sum to 1, got {ratios}")
    if k_folds < 0 or k_folds == 1:
        raise LesiondiffError(f"k_folds must be 0 (no folds) or at least 2, got {k_folds}")
    rows = sorted((_as_row(i) for i in items), key=lambda r: r["id"])
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dupe = next(i for i, c in Counter(ids).items() if c > 1)
        raise LesiondiffError(f"duplicate id {dupe!r}: ids must be unique to split")
    train_only = {train_only_labels} if isinstance(train_only_labels, str) else set(train_only_labels)
    labels = {r["label"] for r in rows}
    missing = sorted(train_only - labels)
    if missing:
        known = ", ".join(sorted(labels)) or "none"
        raise LesiondiffError(f"no rows with label {missing[0]!r} to keep in train (labels: {known})")
    datasets = sorted({r["dataset"] for r in rows})
    for name in datasets:
        where = f"dataset {name or '(none)'}: " if len(datasets) > 1 else ""
        _assign([r for r in rows if r["dataset"] == name], ratios, seed, stratify, k_folds, where)
    if train_only:
        moved = {_case_key(r) for r in rows if r["label"] in train_only}
        for r in rows:
            if _case_key(r) in moved:
                r["split"], r["fold"] = "train", -1
    return rows


# --- several datasets ---------------------------------------------------------------------------------




def case_folds(rows: Iterable[Row], folds: int, seed: int = 0) -> dict[tuple[str, str], int]:
    """Cross-fitting folds of a set of rows, by case: (dataset, case) -> fold 0..folds-1. The cases, sorted, are
    shuffled with ``seed`` and dealt round robin, so the folds differ in size by at most one case and a patient's
    images share a fold. The same rows give the same folds on every machine (the refiner's fold priors,
    ``data.train_folds``, and the Trainer that routes each image to the fold prior that did not see it)."""
    if folds < 2:
        raise LesiondiffError(f"cross-fitting needs at least 2 folds, got {folds}")
    cases = sorted({_case_key(r) for r in rows})
    order = np.random.default_rng(seed).permutation(len(cases))
    return {cases[j]: k % folds for k, j in enumerate(order.tolist())}


def fold_of_row(row: Row, folds: dict[tuple[str, str], int]) -> int:
    """The fold ``case_folds`` gave the row's case."""
    return folds[_case_key(row)]
