"""Difficulty scores on hand-built cases with known values, rank combination, curriculum groups, manifests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from lesiondiff.data.difficulty import (
    COLUMNS,
    SCORES,
    assign_groups,
    combine,
    difficulty_scores,
    format_summary,
    score_manifest,
)
from lesiondiff.data.layouts import index_folder
from lesiondiff.data.manifest import Manifest
from lesiondiff.data.splits import assign_splits
from lesiondiff.errors import LesiondiffError

S = 256
YY, XX = np.mgrid[:S, :S]


def _square(y0: int, x0: int, side: int, size: int = S) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


def _picture(mask: np.ndarray, inside: float = 60.0, outside: float = 180.0, blur: float = 0.0) -> np.ndarray:
    image = np.where(mask, inside, outside).astype(np.float32)
    return ndimage.gaussian_filter(image, blur) if blur else image


def _disc(radius: float) -> np.ndarray:
    return (YY - S / 2) ** 2 + (XX - S / 2) ** 2 < radius**2


def _star(radius: float, arms: int = 5) -> np.ndarray:
    r, theta = np.hypot(YY - S / 2, XX - S / 2), np.arctan2(YY - S / 2, XX - S / 2)
    return r < radius * (1 + 0.5 * np.cos(arms * theta))


def test_small_blurred_irregular_phantom_is_harder_than_large_sharp_round_one():
    easy = difficulty_scores(_picture(_disc(80)), [_disc(80)])
    hard = difficulty_scores(_picture(_star(20), blur=4.0), [_star(20)])
    assert hard["area"] < easy["area"]
    assert hard["contrast"] < easy["contrast"]
    assert hard["complexity"] > easy["complexity"]
    assert hard["boundary_ratio"] > easy["boundary_ratio"]
    # Two rows: each hardness rank is 0 or 1; the tied disagreement gives both 0.5. Default weights: area,
    # contrast, complexity and disagreement 1, boundary_ratio 0 -> (0 + 0 + 0 + 0.5) / 4 and (1 + 1 + 1 + 0.5) / 4.
    np.testing.assert_allclose(combine([easy, hard]), [0.125, 0.875])
    np.testing.assert_allclose(combine([easy, hard], dict.fromkeys(SCORES, 1.0)), [0.1, 0.9])


def test_area_is_the_union_fraction_at_the_working_size():
    square = _square(64, 64, 64)
    assert difficulty_scores(_picture(square), [square])["area"] == 0.0625
    # A 128-px image upsampled to 256 px: the square stays exactly [64, 128) on both axes.
    small = _square(32, 32, 32, size=128)
    assert difficulty_scores(_picture(small), [small], size=256)["area"] == 0.0625
    rgb = np.repeat(_picture(square)[..., None], 3, axis=2)
    assert difficulty_scores(rgb, [square], size=128)["area"] == 0.0625


def test_contrast_of_a_sharp_step_and_what_lowers_it():
    # Left half is lesion: the image border is not a boundary, so both bands are 4 columns of full height
    # and equal in size; a noise-free step then gives 1 / sqrt(0.5 * 0.5) = 2.
    half = XX < S // 2
    assert difficulty_scores(_picture(half), [half])["contrast"] == pytest.approx(2.0)
    # Independent of gain and offset.
    brighter = difficulty_scores(_picture(half, 110, 210), [half])["contrast"]
    assert brighter == pytest.approx(2.0)
    blurred = [difficulty_scores(_picture(half, blur=s), [half])["contrast"] for s in (0.5, 1.5, 3.0, 6.0)]
    assert all(a > b for a, b in zip(blurred, blurred[1:])), blurred
    noisy = _picture(half) + np.random.default_rng(0).normal(0, 80, (S, S))  # ~ 120 / sqrt(60² + 80²)
    assert difficulty_scores(noisy, [half])["contrast"] < 1.5
    # A flat image: std 0, equal means, contrast 0. A mask covering everything has no outer band.
    assert difficulty_scores(np.full((S, S), 90.0), [half])["contrast"] == 0.0
    assert math.isnan(difficulty_scores(_picture(half), [np.ones((S, S), bool)])["contrast"])


def test_complexity_and_boundary_ratio_on_known_shapes():
    square = _square(64, 64, 64)
    scores = difficulty_scores(_picture(square), [square])
    assert scores["complexity"] == 0.0  # a square is its own convex hull: solidity 1
    # skimage's 4-connected perimeter runs through boundary pixel centres: 4 * (64 - 1) px.
    assert scores["boundary_ratio"] == pytest.approx(4 * 63 / 64**2)
    smaller = difficulty_scores(_picture(_square(64, 64, 16)), [_square(64, 64, 16)])
    assert smaller["boundary_ratio"] == pytest.approx(4 * 15 / 16**2)
    ell = square.copy()
    ell[64:96, 96:128] = False  # an L: 3/4 of the square
    lobes = [difficulty_scores(_picture(m), [m])["complexity"] for m in (_disc(60), ell, _star(40, 7))]
    assert lobes[0] < 0.02 and 0.1 < lobes[1] < 0.25 and lobes[2] > lobes[1]


def test_disagreement_of_several_masks():
    a, b = _square(0, 0, 64), _square(0, 32, 64)  # overlap 64 x 32 of a union 64 x 96
    scores = difficulty_scores(_picture(a | b), [a, b])
    assert scores["disagreement"] == pytest.approx(1 - 1 / 3)
    assert scores["n_masks"] == 2 and scores["area"] == 64 * 96 / S**2
    assert difficulty_scores(_picture(a), [a, a.copy()])["disagreement"] == 0.0
    assert difficulty_scores(_picture(a), [a])["disagreement"] == 0.0
    far = _square(128, 128, 64)
    assert difficulty_scores(_picture(a | far), [a, far])["disagreement"] == 1.0  # disjoint: two lesions


def test_empty_masks_and_bad_input():
    image = _picture(_disc(40))
    for masks in ([], [np.zeros((S, S), bool)], [np.zeros((S, S), bool)] * 2):
        scores = difficulty_scores(image, masks)
        assert scores["area"] == 0.0 and scores["disagreement"] == 0.0 and scores["n_masks"] == len(masks)
        assert all(math.isnan(scores[k]) for k in ("contrast", "complexity", "boundary_ratio"))
    with pytest.raises(LesiondiffError, match="mask 0 is 10x12 but its image is 256x256"):
        difficulty_scores(image, [np.zeros((12, 10), bool)])
    with pytest.raises(LesiondiffError, match="band"):
        difficulty_scores(image, [_disc(40)], band=0)


def _row(area: float, contrast: float, complexity: float, ratio: float, disagreement: float = 0.0) -> dict:
    return dict(zip(SCORES, (area, contrast, complexity, ratio, disagreement)))


def test_combine_ranks_weights_and_nan_rows():
    rows = [_row(0.3, 2.0, 0.0, 0.02), _row(0.1, 1.0, 0.1, 0.05), _row(0.01, 0.2, 0.4, 0.3)]
    ones = dict.fromkeys(SCORES, 1.0)
    np.testing.assert_allclose(combine(rows, ones), [0.1, 0.5, 0.9])
    np.testing.assert_allclose(combine(rows), [0.125, 0.5, 0.875])  # defaults: boundary_ratio weighs 0
    np.testing.assert_allclose(combine(rows, {"area": 1, "contrast": 1}), [0.0, 0.5, 1.0])
    # Ties share their average rank; a NaN row is left out of the others' ranks.
    empty = _row(0.0, math.nan, math.nan, math.nan)
    out = combine([rows[0], empty, rows[0], rows[2]], ones)
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], [0.3, 0.3, 0.9])  # (4 * 0.25 + 0.5) / 5
    # Only weighted scores matter: with contrast alone, NaN shape scores do not make a row NaN.
    np.testing.assert_allclose(combine([_row(0.1, 1.0, math.nan, 0.1), rows[0]], {"contrast": 2}), [1.0, 0.0])
    assert combine([rows[0]]).tolist() == [0.5]
    assert combine([]).shape == (0,)
    with pytest.raises(LesiondiffError, match="unknown difficulty score 'size'"):
        combine(rows, {"size": 1})
    with pytest.raises(LesiondiffError, match="positive sum"):
        combine(rows, {"area": 0})
    with pytest.raises(LesiondiffError, match="positive sum"):
        combine(rows, {"area": -1, "contrast": 2})


def test_groups_follow_easy_fraction_in_equal_thirds_and_rise_in_difficulty():
    scores = np.random.default_rng(0).random(40)
    scores[[3, 17]] = np.nan
    groups = assign_groups(scores, easy_fraction=0.5)
    assert groups[3] == 0 and groups[17] == 0  # empty masks: the easy pool, not counted in the fraction
    counts = np.bincount(groups, minlength=4)
    assert counts.tolist() == [19 + 2, 7, 6, 6]  # 38 scored: 19 easy, 19 hard split 7/6/6
    finite = ~np.isnan(scores)
    for g in range(3):
        assert scores[finite & (groups == g)].max() < scores[finite & (groups == g + 1)].min()
    assert assign_groups(scores, empty_group=3)[[3, 17]].tolist() == [3, 3]
    assert np.bincount(assign_groups(scores, 0.25, n_hard_groups=2)[finite]).tolist() == [10, 14, 14]


def test_groups_break_ties_by_input_order():
    groups = assign_groups(np.full(8, 0.5), easy_fraction=0.5, n_hard_groups=2)
    assert groups.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert assign_groups(np.array([]), 0.5).tolist() == []
    for kwargs, message in (({"easy_fraction": 1.5}, "easy fraction"), ({"n_hard_groups": 0}, "hard group"),
                            ({"empty_group": 4}, "empty_group")):
        with pytest.raises(LesiondiffError, match=message):
            assign_groups(np.zeros(3), **kwargs)


@pytest.fixture(scope="module")
def manifest(phantom_dir) -> Manifest:
    return Manifest.from_records(assign_splits(index_folder(phantom_dir).records, seed=0))


def test_score_manifest_writes_columns_that_round_trip(manifest, tmp_path):
    scored, summary = score_manifest(manifest, split="train", size=64, progress=False)
    train = scored.rows(split="train")
    assert len(scored) == len(manifest) and set(COLUMNS) <= set(scored.columns)
    assert not any(set(COLUMNS) & r.keys() for r in scored.rows() if r["split"] != "train")
    normal = [r for r in train if r["label"] == "normal"]
    lesion = [r for r in train if r["label"] == "lesion"]
    assert all(r.keys() >= set(COLUMNS) for r in lesion)
    # Empty masks: area 0, group 0; NaN scores are empty cells (rows hold no key for an empty cell).
    assert normal and all(r["difficulty_group"] == "0" and r["difficulty_area"] == "0" for r in normal)
    assert all("difficulty_score" not in r and "difficulty_contrast" not in r for r in normal)
    assert all(0 <= float(r["difficulty_score"]) <= 1 and 0 < float(r["difficulty_area"]) < 1 for r in lesion)
    n_easy = sum(r["difficulty_group"] == "0" for r in lesion)
    assert n_easy == math.floor(0.5 * len(lesion) + 0.5)
    assert summary["n_scored"] == len(train) and summary["n_empty"] == len(normal)
    assert sum(g["n"] for g in summary["groups"]) == len(train)
    assert summary["groups"][0]["labels"]["normal"] == len(normal) == summary["groups"][0]["n_empty"]
    highs = [g["score_max"] for g in summary["groups"]]
    lows = [g["score_min"] for g in summary["groups"]]
    assert all(hi <= lo for hi, lo in zip(highs, lows[1:]))
    path = tmp_path / "scored.csv"
    scored.write(path)
    assert Manifest.read(path).rows() == scored.rows()
    text = format_summary(summary)
    assert text.splitlines()[0].startswith("group") and len(text.splitlines()) == 6
    assert "split train" in text and f"{len(normal)} empty-mask rows pooled into group 0" in text


def test_rescoring_overwrites_earlier_columns(manifest):
    first, _ = score_manifest(manifest, split="train", size=64, progress=False)
    again, _ = score_manifest(first, split="train", size=64, easy_fraction=0.0, progress=False)
    assert all(r["difficulty_group"] != "0" for r in again.rows(split="train") if r["label"] == "lesion")
    moved, _ = score_manifest(again, split="val", size=64, progress=False)
    assert not any("difficulty_group" in r for r in moved.rows(split="train"))
    assert all("difficulty_group" in r for r in moved.rows(split="val"))
    everything, summary = score_manifest(manifest, split=None, size=64, progress=False)
    assert all("difficulty_group" in r for r in everything) and summary["split"] is None
    with pytest.raises(LesiondiffError, match="no rows with split 'other'"):
        score_manifest(manifest, split="other", progress=False)
