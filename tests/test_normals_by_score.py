"""The normal-image rule of benchmarks/normals_by_score.py on values worked by hand."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from normals_by_score import apply_rule, separation_auroc, threshold_for  # noqa: E402


def test_auroc_counts_pairs_with_ties_as_half():
    scores = np.array([0.1, 0.5, 0.5, 0.9])
    normal = np.array([True, True, False, False])
    # pairs (normal, lesion): (0.1,0.5) 1, (0.1,0.9) 1, (0.5,0.5) 0.5, (0.5,0.9) 1 -> 3.5 / 4
    assert separation_auroc(scores, normal) == pytest.approx(0.875)
    assert separation_auroc(scores[::-1].copy(), normal) == pytest.approx(0.125)
    assert math.isnan(separation_auroc(scores, np.zeros(4, bool)))


def test_threshold_empties_at_least_the_target_share_of_normals():
    scores = np.array([0.2, 0.4, 0.6, 0.8, 0.1])
    normal = np.array([True, True, True, True, False])
    assert threshold_for(scores, normal, 0.5) == 0.4      # 2 of 4
    assert threshold_for(scores, normal, 0.6) == 0.6      # ceil(2.4) = 3 of 4
    assert threshold_for(scores, normal, 1.0) == 0.8
    with pytest.raises(ValueError):
        threshold_for(scores, np.zeros(5, bool), 0.5)


def test_rule_turns_emptied_normals_to_one_and_emptied_lesions_to_zero():
    scores = np.array([0.3, 0.9, 0.2, 0.8])
    normal = np.array([True, True, False, False])
    dice = np.array([0.0, 1.0, 0.6, 0.8])   # the second normal was empty already
    r = apply_rule(scores, normal, dice, tau=0.3)
    assert (r["normal_empty_before"], r["normal_empty_after"]) == (0.5, 1.0)
    assert r["lesion_emptied"] == 0.5
    assert (r["lesion_dice_before"], r["lesion_dice_after"]) == (pytest.approx(0.7), pytest.approx(0.4))
