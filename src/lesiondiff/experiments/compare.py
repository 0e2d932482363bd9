"""Feed-forward against diffusion training of the same architectures, on the same data, split and budget.

The experiment of "Analysing Diffusion Segmentation for Medical Images" (Öttl et al., arXiv preprint 2024):
Table 1 (IoU and ECE per method in feed-forward and in diffusion mode, and their difference) and Fig. 1 (mean
and standard deviation of several predictions per method and mode). This module holds the plan (every preset x
mode), the protocol line, the table and the figure; the runs are trained, predicted and evaluated by
``experiments/runner.py``, into the usual run, prediction and evaluation folders (``engine/phases.py``), so
any of them can be inspected or rerun on its own.

Layout of ``out/``:
    <preset>-<mode>/train/        a run directory (config.yaml, checkpoints/, log.csv, summary.json)
    <preset>-<mode>/predictions/  ``lesiondiff predict`` output for the split
    <preset>-<mode>/evaluation/   metrics.csv, summary.json, reliability.png
    compare.json                  progress and settings, rewritten atomically after every phase
    compare.csv, compare.md       the table (Table 1 form); compare.png: the figure (Fig. 1 form)

Choices, stated once here and again in the protocol line printed above the table:
- Every combination gets the same manifest, split, network size, seed, training budget (minutes of wall clock
  per run, ``train.max_minutes``) and step cap (``train.steps``). The config is the preset, then those
  settings, then the user's ``section.key=value`` overrides, in that order.
- Feed-forward mode is the same architecture with random noise as x_t and t = T-1, trained with Dice + BCE
  (objective ``feedforward``). It is sampled with the one-shot sampler, S times with S different noise inputs:
  that noise is the only source of its (smaller) spread, as in the paper. Diffusion runs use ``--sampler`` and
  ``--steps``, or their preset's own when not given.
- Predictions use the ``best`` checkpoint (highest validation Dice; ``last`` when there is none), fused by the
  preset's fusion method, thresholded at the run's threshold (0.5 unless overridden).
- A preset whose own YAML sets ``diffusion.mode: feedforward`` (the ``unet`` baseline) is a feed-forward
  network: it ignores x_t and t, so training it "for diffusion" would train the same network with a different
  loss. Its diffusion combination is skipped, with that reason, in the state, the table and the figure; its
  feed-forward row stands as a reference, like nnU-Net and SegFormer in the paper's Table 1.
- IoU and Dice are reported in percent (x 100, as in the paper), ECE in [0, 1]; deltas are diffusion minus
  feed-forward (percentage points for IoU and Dice).
- Resumable and idempotent, from the files themselves (``engine/phases.py``): a finished run is not retrained,
  an interrupted one is resumed, predictions and evaluations are redone only when out of date, and a run
  trained with a different config (say another ``--size``) is refused, not mixed in.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.dataset import mask_paths
from ..data.io import read_image, read_masks, read_npz
from ..data.manifest import Manifest, evenly_spaced
from ..data.transforms import resize_prob
from ..engine.outputs import read_predictions
from ..engine.phases import CHECKPOINT
from ..errors import LesiondiffError
from ..presets import load_preset
from ..render.compare_figure import draw_compare_figure
from . import runner
from .runner import ExperimentSettings, RunSpec, State, run_plan, sampling, write_tables

MODES = ("diffusion", "feedforward")



@dataclass(kw_only=True)
class CompareSettings(ExperimentSettings):
    """What ``lesiondiff compare`` was asked to do; the same for every combination."""

    presets: list[str]
    modes: list[str] = field(default_factory=lambda: list(MODES))
    samples: int = 5  # S in both modes
    split: str = "test"
    figure_images: int = 3


def skip_reason(preset: str, mode: str) -> str | None:
    """Why a combination is not run (None: it is). Only feed-forward presets in diffusion mode are skipped."""
    if mode == "diffusion" and load_preset(preset).diffusion.mode == "feedforward":
        return (f"{preset} is a feed-forward network (its preset sets diffusion.mode: feedforward and the model "
                "ignores x_t and t), so it has no diffusion mode")
    return None


def run_config(preset: str, mode: str, s: CompareSettings) -> Config:
    """The preset, then the shared settings and the mode, then the user's overrides (which therefore win)."""
    return runner.run_config(s, preset, before=[f"diffusion.mode={mode}"])


def plan(s: CompareSettings) -> list[RunSpec]:
    """Every preset x mode combination, presets first; a feed-forward preset's diffusion mode is listed as
    skipped."""
    return [_spec(s, preset, mode) for preset in s.presets for mode in s.modes]


def _spec(s: CompareSettings, preset: str, mode: str) -> RunSpec:
    """One combination: diffusion sampled with ``--sampler/--steps`` or the preset's own, feed-forward one-shot,
    S times in both modes."""
    name, reason = f"{preset}-{mode}", skip_reason(preset, mode)
    entry, folder = {"preset": preset, "mode": mode}, Path(s.out) / name
    if reason:
        return RunSpec(name, None, None, folder, s.split, entry, skip=reason)
    cfg = run_config(preset, mode, s)
    return RunSpec(name, cfg, sampling(s, cfg, mode), folder, s.split, entry)


# ---- orchestration ------------------------------------------------------------------------------------------
def _previous_runs(out: Path) -> dict:
    """The run entries of an earlier compare.json in ``out`` (kept until this call revisits them), else {}.
    Informational only: what to skip is decided from the run folders themselves."""
    try:
        runs = json.loads((out / "compare.json").read_text(encoding="utf-8")).get("runs", {})
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in runs.items() if isinstance(v, dict) and "preset" in v and "mode" in v}


def check_settings(s: CompareSettings) -> None:
    """One-line errors for no preset, an unknown mode or preset, a bad budget or S, before any training."""
    if not s.presets:
        raise LesiondiffError("compare needs at least one preset (--presets a,b,c)")
    bad = [m for m in s.modes if m not in MODES]
    if bad or not s.modes:
        raise LesiondiffError(f"unknown mode {bad[0] if bad else ''!r}; known: {', '.join(MODES)}")
    runner.check(s)
    for preset in s.presets:
        load_preset(preset)  # an unknown preset fails here, before any training


def compare(s: CompareSettings, log: Callable[[str], None] = print) -> dict:
    """Run (or finish) every preset x mode combination, then write compare.csv, compare.md and compare.png.

    Returns ``{"status": "done" | "interrupted", "runs": {...}, "rows": [...], "text": the printed table}``.
    On Ctrl-C during training the Trainer saves the last checkpoint and this returns ``interrupted``; calling
    again with the same settings continues from there.
    """
    check_settings(s)
    specs, out = plan(s), Path(s.out)
    state = State(out / "compare.json", {"settings": asdict(s), "runs": _previous_runs(out)})
    outcome = run_plan(specs, state, s, log)
    if outcome.interrupted:
        return outcome.interrupted
    results = _results(state.runs, outcome.evaluated, {(x.entry["preset"], x.entry["mode"]) for x in specs})
    rows = table_rows(s.presets, results)
    text = format_compare(protocol(s, results, len(outcome.inputs[s.split])), rows)
    write_tables(out, "compare", text, CSV_COLUMNS, rows)
    figure = compare_figure(out / "compare.png", s, results) if s.figure_images > 0 else None
    _tidy(state.runs)
    state.doc["outputs"] = {"csv": "compare.csv", "markdown": "compare.md", "figure": figure and figure.name}
    state.save()
    return {"status": "done", "runs": state.runs, "rows": rows, "text": text}


def _results(runs: dict, evaluated: dict, combos: set) -> dict:
    """``{(preset, mode): state entry + its evaluation "summary" when evaluated}`` of the requested combinations,
    in the order of the state's runs."""
    return {(e["preset"], e["mode"]): {**e, **({"summary": evaluated[k]} if k in evaluated else {})}
            for k, e in runs.items() if (e["preset"], e["mode"]) in combos}


def _tidy(runs: dict) -> None:
    """Entries kept from an earlier compare.json point to their evaluation file instead of holding it."""
    for e in runs.values():
        e.pop("summary", None)
        if e["status"] == "evaluated":
            e["evaluation_summary"] = f"{e['preset']}-{e['mode']}/evaluation/summary.json"


# ---- the table ----------------------------------------------------------------------------------------------
def _figures(summary: dict) -> dict:
    """Per-image means (IoU and Dice in %) and stds, and both ECEs, of one evaluation summary."""
    fused, cal = summary["fused"]["all"], summary["calibration"]
    return {"iou_pct": 100 * fused["iou"]["mean"], "iou_pct_std": 100 * fused["iou"]["std"],
            "dice_pct": 100 * fused["dice"]["mean"], "dice_pct_std": 100 * fused["dice"]["std"],
            "ece": cal["ece_per_image"]["mean"], "ece_std": cal["ece_per_image"]["std"],
            "ece_pooled": cal["ece_pooled"]}


TABLE_KEYS = ("iou_pct", "ece", "dice_pct", "ece_pooled")
CSV_COLUMNS = ("preset", "iou_pct_ff", "ece_ff", "iou_pct_diffusion", "ece_diffusion", "delta_iou_pct", "delta_ece",
               "dice_pct_ff", "dice_pct_diffusion", "delta_dice_pct", "ece_pooled_ff", "ece_pooled_diffusion",
               "delta_ece_pooled", "iou_pct_std_ff", "iou_pct_std_diffusion", "dice_pct_std_ff",
               "dice_pct_std_diffusion", "ece_std_ff", "ece_std_diffusion", "steps_ff", "steps_diffusion",
               "status_ff", "status_diffusion")
SHORT = {"feedforward": "ff", "diffusion": "diffusion"}


def table_rows(presets: list[str], results: dict) -> list[dict]:
    """One row per preset with the CSV_COLUMNS; a missing or skipped mode leaves its cells (and deltas) None."""
    rows = []
    for preset in presets:
        row: dict = {c: None for c in CSV_COLUMNS}
        row["preset"] = preset
        for mode, short in SHORT.items():
            e = results.get((preset, mode))
            if e is None:
                row[f"status_{short}"] = "not requested"
                continue
            row[f"status_{short}"] = e["status"] + (f": {e['reason']}" if e.get("reason") else "")
            if "summary" not in e:
                continue
            row[f"steps_{short}"] = e["train"]["step"]
            for key, value in _figures(e["summary"]).items():
                row[f"{key}_{short}"] = value
        for key in TABLE_KEYS:
            d, f = row[f"{key}_diffusion"], row[f"{key}_ff"]
            row[f"delta_{key}"] = d - f if d is not None and f is not None else None
        rows.append(row)
    return rows


def protocol(s: CompareSettings, results: dict, n_images: int) -> str:
    """How every number of the table was made, in one paragraph."""
    done = {k: e for k, e in results.items() if "summary" in e}
    settings = {k: e["summary"].get("prediction_settings") or {} for k, e in done.items()}
    diff = sorted({f"{v.get('sampler')} {v.get('steps')} steps" for (_, m), v in settings.items() if m == "diffusion"})
    thresholds = sorted({e["summary"]["threshold"] for e in done.values()})
    fusions = sorted({v.get("fusion", "?") for v in settings.values()})
    steps = ", ".join(f"{p}-{m} {e['train']['step']} ({e['train']['status']})" for (p, m), e in done.items())
    skipped = "; ".join(f"{p}-{m} skipped: {e['reason']}" for (p, m), e in results.items() if e.get("reason"))
    return (f"Protocol: split {s.split} of {s.manifest} ({n_images} images); S = {s.samples} samples per image in "
            f"both modes (feed-forward: S different random x_t inputs, one network evaluation each); diffusion "
            f"sampler {', '.join(diff) or 'n/a'}; training budget {s.budget_minutes:g} min per run, at most "
            f"{s.max_steps} steps; steps reached: {steps or 'none'}; size {s.size} px; seed {s.seed}; "
            f"checkpoint {CHECKPOINT} (highest validation Dice); fused mask ({', '.join(fusions) or 'n/a'} fusion) "
            f"at threshold {', '.join(str(t) for t in thresholds) or 'n/a'} (prob >= threshold). IoU and Dice: "
            "per-image mean at the original image size, in %. ECE: 10 equal-width bins on the mean of the S "
            "samples, per-image mean; pooled ECE: all pixels of the split in one set of bins. "
            "Delta = diffusion - feed-forward (IoU and Dice in percentage points)."
            + (f" {skipped}." if skipped else ""))


def _cell(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_compare(protocol_line: str, rows: list[dict]) -> str:
    """The protocol line, then the table in Markdown (Table 1 form, then Dice and pooled ECE)."""
    head = ["preset", "IoU % (FF)", "ECE (FF)", "IoU % (diffusion)", "ECE (diffusion)", "ΔIoU (pp)", "ΔECE",
            "Dice % (FF)", "Dice % (diffusion)", "ΔDice (pp)", "pooled ECE (FF)", "pooled ECE (diffusion)"]
    lines = [protocol_line, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["preset"], _cell(r["iou_pct_ff"], 2), _cell(r["ece_ff"], 4), _cell(r["iou_pct_diffusion"], 2),
                 _cell(r["ece_diffusion"], 4), _cell(r["delta_iou_pct"], 2, True), _cell(r["delta_ece"], 4, True),
                 _cell(r["dice_pct_ff"], 2), _cell(r["dice_pct_diffusion"], 2), _cell(r["delta_dice_pct"], 2, True),
                 _cell(r["ece_pooled_ff"], 4), _cell(r["ece_pooled_diffusion"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("FF: feed-forward. –: not run (see status in compare.csv). Standard deviations over images are in "
                 "compare.csv.")
    return "\n".join(lines)


# ---- the figure ---------------------------------------------------------------------------------------------
def figure_ids(ids: list[str], k: int) -> list[str]:
    """``k`` ids evenly spaced over the sorted ids (first and last included), without repeats."""
    return evenly_spaced(sorted(ids), k) if k > 0 else []


def _maps(pred_dir: Path, rows: dict[str, dict], id_: str, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over the S samples of one prediction (``rows``: its ``predictions.csv``), at the image size.
    std = sqrt(the npz's population variance ``ambiguity``), taken before resizing."""
    npz = read_npz(pred_dir / rows[id_]["probs"], ("coherence", "ambiguity"))
    return resize_prob(npz["coherence"], hw), resize_prob(np.sqrt(npz["ambiguity"]), hw)


def compare_figure(path: Path, s: CompareSettings, results: dict) -> Path | None:
    """Fig. 1 form (``render.compare_figure``): one row per (image, preset) of the ``figure_images`` images
    evenly spaced over the split, the diffusion and the feed-forward run's mean and std of the S samples."""
    presets = [p for p in s.presets if any("summary" in results.get((p, m), {}) for m in MODES)]
    rows_by_id = {r["id"]: r for r in Manifest.read(s.manifest).rows(split=s.split)}
    ids = figure_ids(list(rows_by_id), s.figure_images)
    if not presets or not ids:
        return None
    cells = _figure_cells(s, results, presets, [rows_by_id[i] for i in ids])
    return draw_compare_figure(path, cells, lambda vmax: _figure_title(s, results, presets, vmax))


def _figure_cells(s: CompareSettings, results: dict, presets: list[str], rows: list[dict]) -> list[tuple]:
    """One (row label, image, ground truth, {mode: (mean, std) or why there is none}) per image and preset."""
    pred_dirs = {(p, m): Path(s.out) / f"{p}-{m}" / "predictions" for p in presets for m in MODES
                 if "summary" in results.get((p, m), {})}
    tables = {key: read_predictions(d)[0] for key, d in pred_dirs.items()}  # each predictions.csv read once
    cells = []
    for row in rows:
        image = read_image(row["image"])
        hw = image.shape[:2]
        paths = mask_paths(row)
        gt = read_masks(paths, shape=hw) if paths else np.zeros(hw, bool)
        for preset in presets:
            maps = {mode: _maps(pred_dirs[preset, mode], tables[preset, mode], row["id"], hw)
                    if (preset, mode) in pred_dirs else _missing(results.get((preset, mode))) for mode in MODES}
            cells.append((f"{row['id'][:18]}\n{preset}", image, gt, maps))
    return cells


def _missing(entry: dict | None) -> str:
    """The text of a panel without predictions: a skipped combination, or one not run."""
    return "skipped:\nno diffusion mode" if entry is not None and entry.get("reason") else "not run"


def _figure_title(s: CompareSettings, results: dict, presets: list[str], vmax: float) -> str:
    """What the figure shows: S, split, samplers, the colour scales."""
    diff = sorted({f"{v.get('sampler')} {v.get('steps')} steps" for p in presets
                   for v in [results.get((p, "diffusion"), {}).get("summary", {}).get("prediction_settings")] if v})
    return (f"mean and std of S = {s.samples} predictions per image, split {s.split} (images evenly spaced "
            f"over the sorted ids)\ndiffusion: {', '.join(diff) or 'n/a'}; feed-forward: S random x_t inputs, "
            "one network evaluation each; yellow: ground-truth contour\nmean panels 0–1; every std panel "
            f"(population std, ddof 0) on one shared scale 0–{vmax:g} (the largest std shown)")
