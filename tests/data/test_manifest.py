"""Seeded, stratified, case-grouped splits and k-folds; manifest CSV round trip and errors; summaries."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from lesiondiff.data.layouts import IndexResult, Record
from lesiondiff.data.manifest import COLUMNS, Manifest, merge_indexes, summarize
from lesiondiff.data.splits import _quotas, assign_splits
from lesiondiff.errors import LesiondiffError

LABELS = {"benign": 350, "malignant": 168, "normal": 106, "rare": 3, "tiny": 2}


def _records(cases_of: int = 1) -> list[Record]:
    """BUSI-sized label counts; with ``cases_of`` > 1, consecutive records share a case (patient)."""
    out = []
    for label, n in LABELS.items():
        for i in range(n):
            rid = f"{label}_{i:03d}"
            case = f"{label}_p{i // cases_of:03d}" if cases_of > 1 else ""
            out.append(Record(rid, f"/data/{rid}.png", [f"/data/{rid}_mask.png"], label, case, "toy"))
    return out


def _splits(rows) -> dict[str, str]:
    return {r["id"]: r["split"] for r in rows}


def test_same_seed_same_split_and_other_seed_differs():
    a = assign_splits(_records(), seed=0)
    b = assign_splits(list(reversed(_records())), seed=0)  # input order must not matter
    c = assign_splits(_records(), seed=1)
    assert _splits(a) == _splits(b)
    assert _splits(a) != _splits(c)
    assert [r["id"] for r in a] == sorted(r["id"] for r in a)


def test_pinned_split_is_stable_across_machines():
    """numpy's PCG64 stream is platform-independent; if this fails the split algorithm itself changed."""
    rows = assign_splits(_records(), seed=0)
    assert Counter(r["split"] for r in rows) == {"train": 439, "val": 95, "test": 95}
    assert [r["split"] for r in rows[:8]] == ["train", "train", "test", "train", "train", "train", "train", "test"]
    small = [(r["id"], r["split"]) for r in rows if r["label"] in ("rare", "tiny")]
    assert small == [("rare_000", "val"), ("rare_001", "train"), ("rare_002", "test"),
                     ("tiny_000", "train"), ("tiny_001", "test")]


def test_ratios_per_stratum_within_rounding():
    ratios = (0.6, 0.25, 0.15)
    rows = assign_splits(_records(), ratios=ratios, seed=3)
    for label, n in LABELS.items():
        counts = Counter(r["split"] for r in rows if r["label"] == label)
        for split, ratio in zip(("train", "val", "test"), ratios):
            assert abs(counts[split] - n * ratio) <= 1, (label, split, counts)


def test_every_label_with_three_items_is_in_every_split():
    for seed in range(5):
        rows = assign_splits(_records(), seed=seed)
        for label, n in LABELS.items():
            present = {r["split"] for r in rows if r["label"] == label}
            assert len(present) == min(n, 3) and "train" in present


def test_quotas_largest_remainder_and_minimum_one():
    assert _quotas(10, (0.7, 0.15, 0.15), [0, 0, 0]) in ([7, 2, 1], [7, 1, 2])
    assert _quotas(3, (0.7, 0.15, 0.15), [0, 0, 0]) == [1, 1, 1]
    assert _quotas(2, (0.7, 0.15, 0.15), [0, 0, 0]) == [1, 1, 0]
    assert _quotas(5, (1.0, 0.0, 0.0), [0, 0, 0]) == [5, 0, 0]
    assert _quotas(10, (0.5, 0.25, 0.25), [0, 0, 9]) == [5, 3, 2]  # tie goes to the emptier part


def test_cases_stay_together():
    rows = assign_splits(_records(cases_of=4), seed=0, k_folds=3)
    split_of, fold_of = defaultdict(set), defaultdict(set)
    for r in rows:
        split_of[r["case"]].add(r["split"])
        fold_of[r["case"]].add(r["fold"])
    assert all(len(s) == 1 for s in split_of.values())
    assert all(len(f) == 1 for f in fold_of.values())
    counts = Counter(r["split"] for r in rows)
    assert abs(counts["train"] / len(rows) - 0.7) < 0.02


def test_k_folds():
    plain = assign_splits(_records(), seed=0)
    rows = assign_splits(_records(), seed=0, k_folds=5)
    assert _splits(rows) == _splits(plain)  # adding folds does not move the test set
    assert all(r["fold"] == -1 for r in plain)
    assert all((r["fold"] == -1) == (r["split"] == "test") for r in rows)
    sizes = Counter(r["fold"] for r in rows if r["fold"] >= 0)
    assert sorted(sizes) == [0, 1, 2, 3, 4] and max(sizes.values()) - min(sizes.values()) <= 1
    benign = Counter(r["fold"] for r in rows if r["label"] == "benign" and r["fold"] >= 0)
    assert max(benign.values()) - min(benign.values()) <= 1
    manifest = Manifest(rows)
    assert len(manifest.rows(fold=2)) == sizes[2]
    assert len(manifest.rows(exclude_fold=2)) == len(rows) - sizes[2]
    assert {r["split"] for r in manifest.rows(split="val")} == {"val"}


def test_train_only_labels_move_to_train_and_leave_the_rest():
    for folds in (0, 5):
        plain = {r["id"]: r for r in assign_splits(_records(), seed=0, k_folds=folds)}
        rows = assign_splits(_records(), seed=0, k_folds=folds, train_only_labels=["normal"])
        normal = [r for r in rows if r["label"] == "normal"]
        assert len(normal) == LABELS["normal"]
        assert all(r["split"] == "train" and r["fold"] == -1 for r in normal)  # fold -1: never validation
        assert any(plain[r["id"]]["split"] != "train" for r in normal)
        others = [r for r in rows if r["label"] != "normal"]
        assert all((r["split"], r["fold"]) == (plain[r["id"]]["split"], plain[r["id"]]["fold"]) for r in others)
    with pytest.raises(LesiondiffError, match="no rows with label 'Normal'"):
        assign_splits(_records(), train_only_labels=["Normal"])


def test_train_only_moves_a_whole_case():
    records = _records()
    for rec in records:
        rec.case = f"p{int(rec.id.rsplit('_', 1)[1]) // 4}"  # 4 images per patient, mixing labels
    rows = assign_splits(records, seed=0, train_only_labels=("normal",))
    moved = {r["case"] for r in rows if r["label"] == "normal"}
    assert all(r["split"] == "train" for r in rows if r["case"] in moved)
    assert len({(r["case"], r["split"]) for r in rows}) == len({r["case"] for r in rows})


def test_split_arguments_are_checked():
    with pytest.raises(LesiondiffError, match="sum to 1"):
        assign_splits(_records(), ratios=(0.7, 0.2, 0.2))
    with pytest.raises(LesiondiffError, match="k_folds"):
        assign_splits(_records(), k_folds=1)
    with pytest.raises(LesiondiffError, match="duplicate id 'x'"):
        assign_splits([Record("x", "/a.png"), Record("x", "/b.png")])
    with pytest.raises(LesiondiffError, match="10 folds need"):
        assign_splits(_records()[:8], k_folds=10)


def test_csv_round_trip(tmp_path):
    records = _records()[:20]
    records[0].masks = []
    records[1].masks = ["/data/a_mask.png", "/data/a_mask_1.png"]
    records[2].extra = {"fov": "/data/fov.gif", "source_split": "training"}
    rows = assign_splits(records, seed=0, k_folds=2)
    path = tmp_path / "sub" / "manifest.csv"
    Manifest.from_records(rows).write(path)
    header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == [*COLUMNS, "fov", "source_split"]
    back = Manifest.read(path)
    assert back.rows() == Manifest(rows).rows()
    assert back.rows()[1]["masks"] == ["/data/a_mask.png", "/data/a_mask_1.png"]
    assert back.rows()[0]["masks"] == [] and "fov" not in back.rows()[0]
    assert back.rows()[2]["fov"] == "/data/fov.gif"
    assert [p.name for p in path.parent.iterdir()] == ["manifest.csv"]


def test_relative_paths_resolve_against_the_manifest(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(",".join(COLUMNS) + "\nx,img/x.png,mask/x.png;mask/x1.png,,,,train,\n")
    row = Manifest.read(path).rows()[0]
    assert row["image"] == str(tmp_path / "img" / "x.png") and row["fold"] == -1 and row["case"] == "x"
    assert row["masks"] == [str(tmp_path / "mask" / "x.png"), str(tmp_path / "mask" / "x1.png")]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such file"),
        ("", "empty file"),
        ("id,image,label\nx,/x.png,\n", "missing column(s) masks, case, dataset, split, fold"),
        (",".join(COLUMNS) + "\nx,/x.png,,,,,train,zero\n", "line 2: fold must be an integer, got 'zero'"),
        (",".join(COLUMNS) + "\nx,/x.png,,,,,training,0\n", "line 2: split must be one of"),
        (",".join(COLUMNS) + "\nx,/x.png,,,,,train,0,extra\n", "line 2: 9 fields, but the header has 8"),
        (",".join(COLUMNS) + "\nx,/x.png,,,\n", "line 2: 5 fields, but the header has 8"),
        (",".join(COLUMNS) + "\nx,/x.png,,,,,train,0\nx,/y.png,,,,,val,0\n", "duplicate id 'x'"),
        (",".join(COLUMNS) + '\nx,"/x.png\n', "malformed CSV"),
    ],
)
def test_malformed_manifest(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(LesiondiffError) as exc:
        Manifest.read(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)) and message in msg and "\n" not in msg


def test_summarize_manifest_and_index_result(tmp_path):
    rows = assign_splits(_records(), seed=0, k_folds=3)
    text = summarize(Manifest(rows), sizes=False)
    assert "records: 629" in text and "labels: benign 350, malignant 168, normal 106, rare 3, tiny 2" in text
    assert "split train: 439 (" in text and "folds: 0: " in text
    skipped = [(f"/data/x{i}.png", "no mask found") for i in range(25)]
    result = IndexResult("generic", "/data", _records()[:3], skipped)
    text = summarize(result)  # the image files do not exist: their headers are reported as skipped
    lines = text.splitlines()
    assert lines[:2] == ["layout: generic", "root: /data"]
    assert "skipped: 28" in lines and lines[-1] == "  and 8 more"
    assert sum(line.startswith("  /data/") for line in lines) == 20


# --- several datasets (a unified manifest) ------------------------------------------------------------

OTHER = {"lesion": 60, "normal": 9}


def _two_datasets() -> list[IndexResult]:
    """The BUSI-sized "toy" records and a second folder whose ids and cases repeat the first's names."""
    other = [Record(f"benign_{i:03d}", f"/other/{i}.png", [f"/other/{i}_m.png"], label, f"benign_p{i:03d}", "kvasir")
             for i, label in enumerate(lb for lb, n in OTHER.items() for _ in range(n))]
    return [IndexResult("busi", "/data/BUSI", _records(cases_of=2)), IndexResult("kvasir", "/data/Kvasir", other)]


def test_merge_indexes_prefixes_ids_and_cases_with_distinct_dataset_names():
    merged = merge_indexes(_two_datasets())
    ids = [r.id for r in merged.records]
    assert len(ids) == len(set(ids)) == sum(LABELS.values()) + sum(OTHER.values())
    assert {r.dataset for r in merged.records} == {"toy", "kvasir"}
    first = merged.records[0]
    assert (first.id, first.case, first.dataset, first.image) == ("toy_benign_000", "toy_benign_p000", "toy",
                                                                  "/data/benign_000.png")
    assert "kvasir_benign_000" in ids and merged.layout == "busi, kvasir"
    # two folders whose layouts give the same name: each takes its folder's name
    a, b = (IndexResult("isic", root, [Record("ISIC_1", f"{root}/1.jpg", dataset="isic")])
            for root in ("/d/ISIC2017", "/d/ISIC2017_512"))
    assert [r.id for r in merge_indexes([a, b]).records] == ["ISIC2017_ISIC_1", "ISIC2017_512_ISIC_1"]
    c = IndexResult("isic", "/e/ISIC2017", [Record("ISIC_1", "/e/1.jpg", dataset="isic")])
    assert [r.dataset for r in merge_indexes([a, c]).records] == ["ISIC2017", "ISIC2017-2"]
    with pytest.raises(LesiondiffError, match="/d/ISIC2017: given twice"):
        merge_indexes([a, a])


def test_splits_and_folds_are_stratified_per_dataset_and_label():
    rows = assign_splits(merge_indexes(_two_datasets()).records, seed=0, k_folds=4)
    for dataset, labels, case_size in (("toy", LABELS, 2), ("kvasir", OTHER, 1)):  # rounding: one case
        for label, n in labels.items():
            mine = [r for r in rows if r["dataset"] == dataset and r["label"] == label]
            split = Counter(r["split"] for r in mine)
            n_cases = len({r["case"] for r in mine})
            if n_cases >= 3:
                assert set(split) == {"train", "val", "test"}, (dataset, label, split)
            for name, ratio in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
                assert abs(split[name] - n * ratio) <= case_size, (dataset, label, split)
            folds = Counter(r["fold"] for r in mine if r["fold"] >= 0)
            if n >= 20:
                assert sorted(folds) == [0, 1, 2, 3] and max(folds.values()) - min(folds.values()) <= case_size
    # each dataset is split as it is alone: the unified test set is the union of the single-dataset ones
    for result in _two_datasets():
        alone = {f"{r['dataset']}_{r['id']}": (r["split"], r["fold"])
                 for r in assign_splits(result.records, seed=0, k_folds=4)}
        assert alone == {r["id"]: (r["split"], r["fold"]) for r in rows if r["id"] in alone}
    # a case is a (dataset, case) pair: "benign_p000" of kvasir is not that of toy; each stays whole
    assert all(len({r["split"] for r in rows if (r["dataset"], r["case"]) == key}) == 1
               for key in {(r["dataset"], r["case"]) for r in rows})


def test_same_case_name_in_two_datasets_is_two_cases():
    rows = [{"id": f"{d}{i}", "image": "/x.png", "case": "p", "dataset": d, "label": "normal" if d == "a" else ""}
            for d in "ab" for i in range(2)]
    with pytest.raises(LesiondiffError, match="dataset a: 2 folds need at least 2 non-test cases; there are 1"):
        assign_splits(rows, ratios=(1.0, 0.0, 0.0), seed=0, k_folds=2)  # every fold needs every dataset
    moved = assign_splits(rows, ratios=(0.0, 1.0, 0.0), seed=0, train_only_labels=["normal"])
    assert {r["dataset"]: r["split"] for r in moved} == {"a": "train", "b": "val"}  # only a's case "p" moves


def test_single_dataset_split_ignores_the_dataset_name():
    plain = assign_splits(_records(), seed=0, k_folds=3)
    renamed = [Record(**{**vars(r), "dataset": "other"}) for r in _records()]
    assert [(r["split"], r["fold"]) for r in assign_splits(renamed, seed=0, k_folds=3)] == \
        [(r["split"], r["fold"]) for r in plain]


def test_select_split_or_fold(tmp_path):
    path = tmp_path / "m.csv"
    Manifest.from_records(assign_splits(_records(), seed=0, k_folds=3)).write(path)
    manifest = Manifest.read(path)
    assert manifest.folds() == [0, 1, 2]
    assert manifest.select("val") == manifest.rows(split="val") and manifest.select(None) == manifest.rows()
    fold1 = manifest.select("fold:1")
    assert fold1 == manifest.rows(fold=1) and fold1 and all(r["split"] != "test" for r in fold1)
    for bad, message in (("fold:3", "no fold 3; this manifest has folds 0, 1, 2"), ("fold:x", "fold:0"),
                         ("training", "unknown split 'training'; expected train, val, test or fold:K"),
                         ("fold", "unknown split 'fold'")):
        with pytest.raises(LesiondiffError) as exc:
            manifest.select(bad)
        assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value)
    with pytest.raises(LesiondiffError, match="no folds.*--folds K"):
        Manifest(assign_splits(_records(), seed=0)).select("fold:0")


def test_summarize_lists_each_dataset():
    rows = assign_splits(merge_indexes(_two_datasets()).records, seed=0, k_folds=2)
    lines = summarize(Manifest(rows), sizes=False).splitlines()
    kvasir = next(x for x in lines if x.startswith("dataset kvasir: "))
    n = Counter(r["split"] for r in rows if r["dataset"] == "kvasir")
    assert kvasir.startswith("dataset kvasir: 69 (labels lesion 60, normal 9; split "
                             f"train {n['train']}, val {n['val']}, test {n['test']}; folds 0: ")
    assert any(x.startswith("dataset toy: 629 (") for x in lines)
    assert not any(x.startswith("dataset ") for x in summarize(Manifest(assign_splits(_records())), False).split("\n"))
