"""The lesion / no-lesion post-processing: rules, their choice on a validation set with a known answer, and the
image-level figures of evaluate."""

import numpy as np
import pytest

from lesiondiff.engine.scoring import image_level
from lesiondiff.postprocess import GRID, PostProcess, choose, grid_rules


def blob(shape, top, left, h, w, value, out=None):
    out = np.zeros(shape, np.float32) if out is None else out
    out[top:top + h, left:left + w] = value
    return out


def test_rule_keeps_the_largest_component_and_empties_small_or_faint_masks():
    prob = blob((100, 100), 10, 10, 20, 20, 0.9)
    blob((100, 100), 70, 70, 3, 3, 0.99, prob)
    mask = prob >= 0.5
    lc = PostProcess(largest_component=True).apply(mask, prob)
    assert lc.sum() == 400 and not lc[70, 70]
    assert PostProcess(min_area=0.05).apply(mask, prob).sum() == 0  # 409 px < 5 % of 10,000
    assert PostProcess(min_area=0.04).apply(mask, prob).sum() == 409
    assert PostProcess(largest_component=True, min_prob=0.95).apply(mask, prob).sum() == 0  # peak 0.9 after LC
    assert PostProcess(min_prob=0.95).apply(mask, prob).sum() == 409  # the speck's 0.99 keeps it
    assert PostProcess().is_identity and "none" in PostProcess().describe()
    assert "largest" in PostProcess(True, 0.01, 0.7).describe() and "0.7" in PostProcess(True, 0.01, 0.7).describe()


def test_choice_on_a_synthetic_validation_set_with_a_known_answer():
    """Lesion images: a 20x20 lesion (4 % of the image) plus a confident 4x4 speck elsewhere. Lesion-free images:
    one confident 4x4 speck (0.16 %). Keeping the largest component removes the lesion images' specks, and any
    minimum area between 0.16 % and 4 % empties the lesion-free images; the smallest such grid value (0.25 %)
    wins the tie. min_prob cannot separate them (every speck is at 0.97)."""
    rng = np.random.default_rng(0)
    cases = []
    for k in range(12):
        shape = (100, 100)
        if k % 3:
            prob = blob(shape, 10 + k, 10, 20, 20, 0.8 + 0.01 * k)
            blob(shape, 80, 80, 4, 4, 0.97, prob)
            gt = blob(shape, 10 + k, 10, 20, 20, 1) > 0
        else:
            prob = blob(shape, int(rng.integers(0, 90)), int(rng.integers(0, 90)), 4, 4, 0.97)
            gt = np.zeros(shape, bool)
        cases.append((prob, gt))
    rule, scores = choose(cases)
    assert rule == PostProcess(largest_component=True, min_area=0.0025, min_prob=0.0)
    assert scores[0]["dice"] == pytest.approx(1.0)
    assert scores[0]["empty_predicted_empty"] == 4 and scores[0]["empty_images"] == 4
    none = next(s for s in scores if s["rule"].startswith("none"))
    lesion_dice = 2 * 400 / (416 + 400)
    assert none["dice"] == pytest.approx(8 / 12 * lesion_dice)  # lesion-free images score 0 with their speck
    assert len(scores) == len(grid_rules()) == np.prod([len(v) for v in GRID.values()])


def test_choice_keeps_no_rule_when_nothing_helps():
    prob = blob((50, 50), 5, 5, 10, 10, 0.9)
    rule, _ = choose([(prob, prob > 0.5)] * 3)
    assert rule.is_identity


def test_image_level_figures_on_hand_counted_cases():
    # (ground truth non-empty, prediction non-empty, label)
    presence = [(True, True, "benign"), (True, False, "malignant"), (True, True, "malignant"),
                (False, False, "normal"), (False, True, "normal"), (False, False, "normal")]
    il = image_level(presence)
    assert (il["lesion_images"], il["detected"]) == (3, 2)
    assert il["detection_sensitivity"] == pytest.approx(2 / 3)
    assert (il["empty_images"], il["predicted_empty"]) == (3, 2)
    assert il["specificity"] == pytest.approx(2 / 3)
    assert il["normal_images"] == 3 and il["normal_predicted_empty"] == pytest.approx(2 / 3)
    assert "normal_images" not in image_level([(True, True, ""), (False, False, "")])
    assert np.isnan(image_level([(True, True, "")])["specificity"])


def test_printed_lines_give_lesion_dice_the_counts_and_the_rule():
    from lesiondiff.render.tables import image_level_lines

    stats = {"mean": 0.5, "std": 0.1, "n": 3, "n_nan": 0}
    summary = {"image_level": image_level([(True, True, "benign"), (False, False, "normal")]),
               "lesion_images": {"dice": stats, "iou": {**stats, "mean": 0.4}},
               "postprocess": PostProcess(True, 0.01, 0.0).describe()}
    lines = image_level_lines(summary)
    assert "Dice 0.500" in lines[0] and "IoU 0.400" in lines[0] and "n = 1" in lines[0]
    assert "detection sensitivity 1/1" in lines[1] and "specificity 1/1" in lines[1] and "100.0% of 1" in lines[1]
    assert lines[2] == ("lesion / no-lesion decision: keep the largest connected component; declare the image "
                        "lesion-free when foreground < 0.01 of the image")
    assert image_level_lines({}) == []
