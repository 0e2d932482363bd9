"""Reports over run and prediction folders, above the engine: ``report`` (the self-contained HTML report),
``model_card`` (the shipped models' cards) and ``run_figures`` (training curves, prediction examples and
sampling rounds read from a run's and a prediction folder's files). Every picture is drawn by ``render/``."""
