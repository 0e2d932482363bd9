"""A deep ensemble (Lakshminarayanan et al., NeurIPS 2017) of trained runs, read by ``predict`` as one source.

An ensemble folder holds ``ensemble.json`` (its member runs, as paths relative to the folder when they lie
inside it, and the training budget of each) and ``config.yaml`` (the first member's, with ``sample.samples``
set to the number of members, so S = M gives one member per run). ``lesiondiff ensemble --out DIR RUN RUN ...``
makes one; ``predict --run A --run B ...`` makes one on the fly, without a folder. Member i of the S draws of an
image comes from run i mod M (``engine/members.py``), so the uncertainty maps and the per-image scores are
those of the members' spread, as for the draws of a diffusion run.

The members must be distinct runs (no run twice, no two runs with the same weights) of the same input size and
channels. The ensemble's training budget is the sum of its members' (``train.clock`` time of each run,
pre-training included), recorded so that it can be set against a single run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config
from ..errors import LesiondiffError
from ..io_utils import OwnedFolder, atomic_write_text, file_sha256
from .checkpoint import run_checkpoint

FILE = "ensemble.json"


def is_ensemble(folder: str | Path) -> bool:
    return (Path(folder) / FILE).is_file()


def member_runs(folder: str | Path) -> list[Path]:
    """The member run folders of an ensemble folder, checked to exist."""
    folder = Path(folder)
    try:
        record = json.loads((folder / FILE).read_text(encoding="utf-8"))
        members = [folder / m for m in record["members"]]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise LesiondiffError(f"{folder / FILE}: not a readable ensemble record ({exc})") from None
    for run in members:
        if not (run / "config.yaml").is_file():
            raise LesiondiffError(f"{folder / FILE}: member {run} is not a run folder (no config.yaml)")
    return members


def run_budget(run: Path) -> dict:
    """A run's training time from its summary.json: seconds on its clock, pre-training included."""
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise LesiondiffError(f"{run}: has no summary.json; train it to the end first")
    s = json.loads(summary_path.read_text(encoding="utf-8"))
    return {"elapsed_s": float(s.get("elapsed_s", 0.0)), "clock": s.get("clock", "wall"), "step": s.get("step")}


def check_members(runs: list[Path]) -> list[Config]:
    """Distinct runs of one input size and channel count; their configs."""
    if len(runs) < 2:
        raise LesiondiffError(f"an ensemble needs at least two runs, got {len(runs)}")
    resolved = [r.resolve() for r in runs]
    twice = next((r for r in resolved if resolved.count(r) > 1), None)
    if twice:
        raise LesiondiffError(f"{twice}: given twice; an ensemble's members are distinct runs")
    weights = [file_sha256(run_checkpoint(r)) for r in runs]
    same = next(((a, b) for i, a in enumerate(runs) for b, wb in zip(runs[i + 1:], weights[i + 1:])
                 if weights[i] == wb), None)
    if same:
        raise LesiondiffError(f"{same[0]} and {same[1]} hold the same weights; an ensemble's members are distinct "
                              "runs")
    configs = [Config.load(r / "config.yaml") for r in runs]
    for run, cfg in zip(runs[1:], configs[1:]):
        for key in ("size", "channels"):
            if getattr(cfg.data, key) != getattr(configs[0].data, key):
                raise LesiondiffError(f"{run}: data.{key} {getattr(cfg.data, key)}, but {runs[0]} has "
                                      f"{getattr(configs[0].data, key)}; an ensemble's members see the same input")
    return configs


def make_ensemble(out: str | Path, runs: list[str | Path]) -> dict:
    """Write the ensemble folder ``out`` of ``runs`` (module docstring); returns its record."""
    out, runs = Path(out), [Path(r) for r in runs]
    configs = check_members(runs)
    budgets = [run_budget(r) for r in runs]
    clocks = {b["clock"] for b in budgets}
    names = [str(r.resolve().relative_to(out.resolve())) if r.resolve().is_relative_to(out.resolve())
             else str(r.resolve()) for r in runs]
    record = {"members": names, "budgets": budgets,
              "budget_s": round(sum(b["elapsed_s"] for b in budgets), 1),
              "clock": clocks.pop() if len(clocks) == 1 else "mixed",
              "note": "member i of an image's S draws comes from run i mod M; S = M gives one per run"}
    cfg = configs[0].override([f"sample.samples={len(runs)}"])
    files = OwnedFolder(out)
    with files.writing([FILE, "config.yaml"]) as paths:
        atomic_write_text(paths[FILE], json.dumps(record, indent=2))
        atomic_write_text(paths["config.yaml"], cfg.to_yaml())
    return record
