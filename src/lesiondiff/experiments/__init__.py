"""Multi-run experiments on one budget: one runner (``runner.py``) and the plans and tables of ``lesiondiff
compare``, ``ablate`` and ``cv``."""
