"""The budget curve's fit and crossing (benchmarks/budget_curve.py) and its figure."""

import sys
from pathlib import Path

import numpy as np
import pytest

from lesiondiff.render.budget_figures import budget_curve_figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from budget_curve import crossing, log_fit  # noqa: E402


def test_the_log_fit_recovers_a_line_and_the_crossing_solves_it():
    a, b = log_fit([10, 30, 90], [0.5 + 0.1 * np.log10(m) for m in (10, 30, 90)])
    assert (a, b) == (pytest.approx(0.5), pytest.approx(0.1))
    assert log_fit([10, 100], [0.4, 0.6]) == (pytest.approx(0.2), pytest.approx(0.2))  # exact through two points
    # 0.2 + 0.2 x = 0.5 + 0.05 x at x = 2: 100 minutes
    assert crossing((0.2, 0.2), (0.5, 0.05)) == pytest.approx(100.0)
    assert crossing((0.2, 0.1), (0.5, 0.1)) is None


def test_the_figure_is_written(tmp_path):
    points = {"unet": [(10, 0.5, 0.45, 0.55), (30, 0.6, 0.55, 0.65)],
              "diffusion": [(10, 0.4, 0.35, 0.45), (30, 0.58, 0.5, 0.62)]}
    fits = {k: log_fit([p[0] for p in v], [p[1] for p in v]) for k, v in points.items()}
    budget_curve_figure(points, fits, tmp_path / "curve.png", "test")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
