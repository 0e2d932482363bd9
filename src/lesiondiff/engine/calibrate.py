"""``lesiondiff calibrate``, the command's work: predict the calibration split with the run's settings, score it,
and write the run's ``selective.json`` (the record and the threshold's statistics: ``engine/calibration.py``,
``selective.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config
from ..data.manifest import split_rows
from ..errors import LesiondiffError
from ..models import MODELS
from .calibration import calibrate, check_request, check_score, write
from .ensemble import is_ensemble, member_runs
from .evaluate import evaluate, fused_metrics
from .members import count_distinct, tta_views
from .outputs import RECORD, read_predictions
from .predict import Predictor, check_sampling, collect_inputs


def expected_members(run: Path, overrides: list[str]) -> int:
    """How many distinct members a prediction of ``run`` with ``overrides`` will have, from the configs alone
    (no weights): a network without noise input draws one mask per view unless MC dropout is on."""
    runs = member_runs(run) if is_ensemble(run) else [run]
    cfg = check_sampling(run, overrides)
    noisy = [MODELS.get(Config.load(r / "config.yaml").model.name).takes_noise or cfg.sample.mc_dropout for r in runs]
    return count_distinct(noisy, cfg.sample.samples, len(tta_views(cfg.sample.tta)))


def calibrate_run(run: str | Path, manifest: str | Path, split: str = "val", target: float = 0.8,
                  delta: float = 0.1, score: str | None = None, pred_dir: str | Path | None = None,
                  device: str | None = None, overrides: list[str] | None = None, log=print) -> dict:
    """Predict ``split`` with the run's settings and ``overrides`` (its lesion / no-lesion rule applied, as every
    later prediction will be) into ``RUN/calibration_<split>``, or read the predictions ``pred_dir`` made from
    this run; score them; choose the threshold; write ``RUN/selective.json``. Returns the record."""
    run = Path(run)
    rows = split_rows(manifest, split, None)[1]
    check_request(split, target, delta, len(rows), manifest)
    if pred_dir is None:
        check_score(score, expected_members(run, overrides or []))  # before anything is predicted
        pred_dir = run / f"calibration_{split.replace(':', '')}"
        predictor = Predictor.from_run(run, "best", device, overrides, selective=False)
        predictor.run(collect_inputs([], str(manifest), split), pred_dir, checkpoint="best", overwrite=True, log=log)
    pred_dir = Path(pred_dir)
    record_path = pred_dir / RECORD
    settings = json.loads(record_path.read_text(encoding="utf-8"))["settings"] if record_path.is_file() else {}
    if settings.get("run") != str(run.resolve()):
        raise LesiondiffError(f"{pred_dir}: not predictions of {run} (made from {settings.get('run', 'unknown')})")
    evaluate(pred_dir, manifest, split)
    preds = read_predictions(pred_dir)[0]
    dice = {r["id"]: float(r["dice"]) for r in fused_metrics(pred_dir)}
    scored = [{**preds[r["id"]], "dice": dice[r["id"]]} for r in rows]
    record = {**calibrate(scored, score, target, delta, settings, split, manifest), "predictions": str(pred_dir)}
    write(run, record)
    return record
