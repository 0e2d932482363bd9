"""Old import path of ``reporting.figures.pyplot``, kept only for ``engine/compare.py`` while it moves to
``experiments/``; new code imports ``lesiondiff.reporting.figures``."""

from .reporting.figures import pyplot

__all__ = ["pyplot"]
