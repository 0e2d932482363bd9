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


def test_the_drawn_fit_stops_at_100_percent(tmp_path, monkeypatch):
    import lesiondiff.render.budget_figures as bf

    drawn = []
    monkeypatch.setattr(bf, "save", lambda fig, path: drawn.append(fig))
    # the diffusion line rises 31.4 points per decade from 80 % at 10 minutes: past 100 % beyond 43.4 minutes
    points = {"unet": [(10, 0.5, 0.45, 0.55), (30, 0.6, 0.55, 0.65)],
              "diffusion": [(10, 0.8, 0.75, 0.85), (30, 0.95, 0.9, 1.0)]}
    fits = {k: log_fit([p[0] for p in v], [p[1] for p in v]) for k, v in points.items()}
    budget_curve_figure(points, fits, tmp_path / "curve.png", "test")
    lines = {ln.get_label(): ln for ln in drawn[0].axes[0].get_lines() if ln.get_linestyle() == "--"}
    x, y = (np.asarray(v, float) for v in lines[next(k for k in lines if k.startswith("diffusion"))].get_data())
    assert np.nanmax(y) <= 100 and np.isnan(y[x > 43.5]).all() and not np.isnan(y[x < 43.3]).any()
    unet = lines[next(k for k in lines if k.startswith("unet"))].get_ydata()
    assert not np.isnan(np.asarray(unet, float)).any()  # 0.5 + 0.21 log10(m / 10) stays below 1 up to 300 minutes
    bf.pyplot().close(drawn[0])
