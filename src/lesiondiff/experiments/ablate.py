"""Ablation of a preset's components on one budget: ``lesiondiff ablate --preset palscdiff``.

An ablation definition (``presets/ablations/<preset>.yaml``) lists arms, each the preset with a few
``section.key=value`` overrides, and names the arm the others are compared with. Every arm, and every
``--baselines`` preset trained beside them, gets the same manifest, split, network size, seed, training budget
(wall-clock minutes per run) and step cap, and is sampled and fused the same way: the ablated preset's sampler,
steps, number of samples S and fusion (feed-forward baselines: one network evaluation per sample). The config
of an arm is the preset, then those shared settings, then the arm's overrides, then the user's overrides.

Layout of ``out/``:
    <arm>/ and ref-<preset>/     run folders (train/, predictions/, evaluation/; ``engine/phases.py``), run
                                 by ``experiments/runner.py``
    ablation.json                progress and settings, rewritten after every phase
    ablation.csv, ablation.md    the table (the paper's Table 2 form, plus the comparison with the first arm)

Every figure is per image at the original size, thresholded at the run's threshold, mean +- population std
over the split's images, in %. The difference with the reference arm is paired by image (``metrics.
paired_difference``: bootstrap 95 % interval over images, Wilcoxon p); it does not include run-to-run spread
(one training seed per arm). Resumable: the same command continues an interrupted ablation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..config import Config
from ..engine.evaluate import fused_metrics
from ..engine.phases import CHECKPOINT
from ..errors import LesiondiffError
from ..metrics import paired_difference
from ..presets import load_preset
from . import runner
from .runner import CLOCK_NAMES, ExperimentSettings, RunSpec, State, run_plan, sampling, write_tables

METRICS = ("accuracy", "precision", "recall", "dice", "iou")
HEADERS = {"accuracy": "ACC %", "precision": "Precision %", "recall": "Recall %", "dice": "Dice %",
           "iou": "IoU (Jaccard) %"}


@dataclass(kw_only=True)
class AblateSettings(ExperimentSettings):
    """What ``lesiondiff ablate`` was asked to do."""

    preset: str
    baselines: list[str] = field(default_factory=list)
    arms: list[str] | None = None  # a subset of the definition's arms (None: all)
    split: str = "test"


def ablation_names() -> list[str]:
    """The presets that have an ablation definition (``presets/ablations/<preset>.yaml``)."""
    folder = resources.files("lesiondiff.presets") / "ablations"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def load_ablation(preset: str) -> dict:
    """The definition ``{title, baseline, arms: [{name, label, overrides}]}`` of ``preset``'s ablation."""
    path = resources.files("lesiondiff.presets") / "ablations" / f"{preset}.yaml"
    if not path.is_file():
        raise LesiondiffError(f"preset {preset!r} has no ablation; ablations exist for: "
                              f"{', '.join(ablation_names()) or 'none'}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    arms = data.get("arms") or []
    _check_definition(preset, data, arms)
    return {"title": data.get("title", f"{preset} ablation"), "baseline": data["baseline"],
            "baseline_sampling": data.get("baseline_sampling", "ablated"),
            "arms": [{"name": a["name"], "label": a.get("label", a["name"]), "overrides": list(a.get("overrides") or []),
                      "same_training_as": a.get("same_training_as")} for a in arms]}


def _check_definition(preset: str, data: dict, arms: list[dict]) -> None:
    """One-line errors for arms without unique names, a baseline that is not an arm, an arm reusing the training
    of one not listed before it, and an unknown ``baseline_sampling``."""
    names = [a.get("name") for a in arms]
    if not arms or len(set(names)) != len(names) or data.get("baseline") not in names:
        raise LesiondiffError(f"ablation {preset}: needs arms with unique names and a baseline among them")
    for a in arms:
        source = a.get("same_training_as")
        if source is not None and (source not in names or names.index(source) >= names.index(a["name"])):
            raise LesiondiffError(f"ablation {preset}: arm {a['name']!r} reuses the training of {source!r}, which "
                                  "must be an arm listed before it")
    baseline_sampling = data.get("baseline_sampling", "ablated")
    if baseline_sampling not in ("ablated", "own"):
        raise LesiondiffError(f"ablation {preset}: baseline_sampling must be 'ablated' or 'own', "
                              f"got {baseline_sampling!r}")


def plan(s: AblateSettings) -> list[dict]:
    """The runs: ``{name, label, preset, overrides, same_training_as, baseline, mode, sampling}``; the
    definition's arms (or the ``--arms`` chosen), then the baselines. Baselines are sampled like the ablated
    preset unless the definition says ``baseline_sampling: own``."""
    definition = load_ablation(s.preset)
    runs = [{**a, "preset": s.preset, "baseline": False} for a in _chosen_arms(s, definition["arms"])]
    for b in s.baselines:
        runs.append({"name": f"ref-{b}", "label": f"{b} (reference preset)", "preset": b, "overrides": [],
                     "same_training_as": None, "baseline": True})
    for r in runs:
        cfg = run_config(r, s)
        r["mode"] = cfg.diffusion.mode
        own = not r["baseline"] or definition["baseline_sampling"] == "own"
        r["sampling"] = sampling(s, cfg if own else load_preset(s.preset), r["mode"])
        if r["same_training_as"]:
            _check_same_training(r, cfg, run_config(next(a for a in runs if a["name"] == r["same_training_as"]), s))
    return runs


def _chosen_arms(s: AblateSettings, arms: list[dict]) -> list[dict]:
    """The arms ``--arms`` names (all when not given), in the definition's order; an unknown arm, or one whose
    training source is not chosen, is an error."""
    if s.arms is None:
        return arms
    unknown = sorted(set(s.arms) - {a["name"] for a in arms})
    if unknown:
        raise LesiondiffError(f"unknown arm {unknown[0]!r}; arms of {s.preset}: "
                              f"{', '.join(a['name'] for a in arms)}")
    arms = [a for a in arms if a["name"] in s.arms]
    missing = sorted({a["same_training_as"] for a in arms if a["same_training_as"]} - set(s.arms))
    if missing:
        raise LesiondiffError(f"--arms: an arm chosen reuses the training of {missing[0]!r}; add it to --arms")
    return arms


def _check_same_training(run: dict, cfg: Config, source: Config) -> None:
    """An arm that reuses another arm's training must differ from it in sampling and fusion only."""
    mine, theirs = cfg.to_dict(), source.to_dict()
    for section in mine:
        if section not in ("sample", "fusion", "preset") and mine[section] != theirs[section]:
            raise LesiondiffError(f"ablation arm {run['name']!r} reuses the training of {run['same_training_as']!r} "
                                  f"but its {section} settings differ")


def run_config(run: dict, s: AblateSettings) -> Config:
    """The run's preset, the shared settings, the arm's overrides, then the user's (which therefore win)."""
    return runner.run_config(s, run["preset"], before=run["overrides"])


def _spec(run: dict, s: AblateSettings) -> RunSpec:
    """The runner's view of one planned run; an arm that reuses another's training predicts with its model."""
    out, source = Path(s.out), run["same_training_as"]
    return RunSpec(run["name"], run_config(run, s), run["sampling"], out / run["name"], s.split,
                   {key: run[key] for key in ("label", "preset", "mode", "overrides")},
                   train_from=out / source if source else None)


def _check(s: AblateSettings) -> None:
    """One-line errors for a bad budget or S and an unknown baseline preset, before any training."""
    runner.check(s)
    for b in s.baselines:
        load_preset(b)


def ablate(s: AblateSettings, log: Callable[[str], None] = print) -> dict:
    """Train, predict and evaluate every run (skipping finished stages), then write the tables.

    Returns ``{"status": "done" | "interrupted", "runs": {...}, "rows": [...], "text": the printed table}``.
    """
    _check(s)
    runs = plan(s)
    definition, out = load_ablation(s.preset), Path(s.out)
    state = State(out / "ablation.json", {"settings": asdict(s), "title": definition["title"], "runs": {}})
    outcome = run_plan([_spec(r, s) for r in runs], state, s, log)
    if outcome.interrupted:
        return outcome.interrupted
    for r in runs:
        trained = outcome.trained[r["name"]]
        r["steps"], r["train_minutes"] = trained["step"], trained["elapsed_s"] / 60
    summaries = outcome.evaluated
    reference = definition["baseline"] if definition["baseline"] in summaries else runs[0]["name"]
    rows = table_rows(runs, summaries, out, reference)
    line = protocol(s, runs, summaries, len(outcome.inputs[s.split]), reference)
    text = format_ablation(definition["title"], line, rows, reference, dataset_table(runs, summaries))
    write_tables(out, "ablation", text, CSV_COLUMNS, rows)
    state.doc["outputs"] = {"csv": "ablation.csv", "markdown": "ablation.md"}
    state.save()
    return {"status": "done", "runs": state.runs, "rows": rows, "text": text}


PAIRED = ("dice", "iou")


def _per_image(folder: Path) -> dict[str, dict[str, float]]:
    """The fused masks' per-image ``PAIRED`` metrics of a run, ``{metric: {id: value}}``, from one read of its
    evaluation/metrics.csv."""
    fused = fused_metrics(folder / "evaluation")
    return {m: {r["id"]: float(r[m]) for r in fused} for m in PAIRED}


def table_rows(runs: list[dict], summaries: dict[str, dict], out: Path, reference: str) -> list[dict]:
    """One row per run: fused metrics in % (mean, std), the single-round Dice, and the paired difference in
    Dice and IoU with the ``reference`` run (percentage points)."""
    ref = _per_image(out / reference)
    rows = []
    for run in runs:
        ev = summaries[run["name"]]
        fused = ev["fused"]["all"]
        row = {"run": run["name"], "label": run["label"], "preset": run["preset"], "mode": run["mode"],
               "steps": run.get("steps"), "train_minutes": run.get("train_minutes"),
               **sampling_columns(out / run["name"] / "predictions" / "predict.json")}
        for m in METRICS:
            row[f"{m}_pct"], row[f"{m}_pct_std"] = 100 * fused[m]["mean"], 100 * fused[m]["std"]
        row["single_round_dice_pct"] = 100 * ev["single_sample"]["all"]["dice"]["mean"]
        mine = _per_image(out / run["name"])
        for m in PAIRED:
            ids = sorted(ref[m])
            d = paired_difference([ref[m][i] for i in ids], [mine[m][i] for i in ids])
            row[f"delta_{m}_pp"] = 100 * d["mean"]
            row[f"delta_{m}_ci_low"], row[f"delta_{m}_ci_high"] = 100 * d["ci_low"], 100 * d["ci_high"]
            row[f"delta_{m}_p"] = d["p_wilcoxon"]
            if m == "dice":
                row["better"], row["worse"] = d["better"], d["worse"]
        rows.append(row)
    return rows


def sampling_columns(predict_json: Path) -> dict:
    """How a run was sampled and how fast (its ``predict.json``): sampler, S, fusion, network passes and
    evaluations per image, images/s and masks/s, device."""
    meta = json.loads(predict_json.read_text(encoding="utf-8"))
    calls, speed = meta.get("network_calls") or {}, meta.get("speed") or {}
    return {"sampler": meta["sampler"], "samples": meta["samples"], "fusion": meta.get("fusion"),
            "passes": calls.get("passes"), "evaluations": calls.get("evaluations"),
            "images_per_s": speed.get("images_per_s"), "masks_per_s": speed.get("masks_per_s"),
            "device": speed.get("device")}


def protocol(s: AblateSettings, runs: list[dict], summaries: dict, n_images: int, reference: str) -> str:
    """How every number of the table was made, in one paragraph."""
    thresholds = sorted({summaries[r["name"]]["threshold"] for r in runs})
    same = {r["name"]: r["same_training_as"] for r in runs if r["same_training_as"]}
    reuse = "".join(f"; {a} reuses the trained model of {b}" for a, b in same.items())
    clocks = sorted({run_config(r, s).train.clock for r in runs})
    clock = " / ".join(CLOCK_NAMES.get(c, c) for c in clocks)
    return (f"Protocol: split {s.split} of {s.manifest} ({n_images} images); every run trained until "
            f"{s.max_steps} steps or {s.budget_minutes:g} min of {clock}, whichever came first (steps and "
            f"minutes reached are in the table){reuse}; size {s.size} px, seed "
            f"{s.seed}; checkpoint {CHECKPOINT} (highest validation Dice; the last for runs without validation); "
            "each run's sampler, S samples per image "
            f"and fusion are in the table, threshold "
            f"{', '.join(str(t) for t in thresholds)} (prob >= threshold). Metrics per image at the original size, "
            f"mean ± population std over images, in %. Δ: paired per-image difference with {reference} in "
            "percentage points, 95 % bootstrap interval over images and Wilcoxon p (one training seed per run: "
            "run-to-run spread is not included).")


def format_ablation(title: str, protocol_line: str, rows: list[dict], reference: str,
                    datasets: str = "") -> str:
    """The title, the protocol line, the table (the paper's Table 2 form, plus speed and the paired difference
    with ``reference``), its notes and the per-dataset table."""
    head = ["run", "steps", "min", "sampling", "img/s (masks/s)", *(HEADERS[m] for m in METRICS), "ΔDice (pp) [95 % CI]", "p",
            "ΔIoU (pp)", "Dice % (one round)"]
    lines = [f"{title}", "", protocol_line, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        delta = (["(reference)", "–", "–"] if r["run"] == reference else
                 [f"{r['delta_dice_pp']:+.2f} [{r['delta_dice_ci_low']:+.2f}, {r['delta_dice_ci_high']:+.2f}]",
                  f"{r['delta_dice_p']:.2g}", f"{r['delta_iou_pp']:+.2f}"])
        passes = r.get("passes")
        sampled = f"{r['sampler']}, S={r['samples']}, {r['fusion']}" + (
            f", {passes} pass{'es' if passes != 1 else ''}" if passes else "")
        speed = f"{r['images_per_s']:.2f} ({r['masks_per_s']:.1f})" if r.get("images_per_s") else "–"
        cells = [r["label"], str(r["steps"]), f"{r['train_minutes']:.1f}", sampled, speed,
                 *(f"{r[f'{m}_pct']:.2f} ± {r[f'{m}_pct_std']:.2f}" for m in METRICS),
                 *delta, f"{r['single_round_dice_pct']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({str(r.get("device")) for r in rows if r.get("device")})
    lines += ["", "steps, min: training steps and minutes of training on the protocol's clock (pre-training "
              "included). sampling: "
              "sampler, S masks per image, fusion, and network passes one after another per image. img/s: images "
              "segmented per second, all S masks of an image drawn in one batch; masks/s: S times that (the paper's "
              f"samples/s counts one of the two); sampling time only, one image at a time, on {', '.join(devices)}. "
              "Dice % (one round): the mean over rounds of a single sample's per-image Dice, i.e. without fusion."]
    if datasets:
        lines += ["", datasets]
    return "\n".join(lines)


def dataset_table(runs: list[dict], summaries: dict[str, dict]) -> str:
    """Per-dataset mDice and mIoU (%, per-image mean of the fused masks) of every run, the paper's Table 3
    form; empty when the split has fewer than two datasets."""
    names = sorted({d for r in runs for d in summaries[r["name"]].get("datasets") or {}})
    if len(names) < 2:
        return ""
    head = ["run", *(f"{d} {m}" for d in names for m in ("mDice", "mIoU")), "all mDice", "all mIoU"]
    lines = ["Per dataset (fused masks; per-image mean over each dataset's images, %):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        ev = summaries[r["name"]]
        cells = [r["label"]]
        for d in names:
            stats = (ev["datasets"].get(d) or {}).get("fused")
            cells += ([f"{100 * stats[m]['mean']:.1f}" for m in ("dice", "iou")] if stats else ["–", "–"])
        cells += [f"{100 * ev['fused']['all'][m]['mean']:.1f}" for m in ("dice", "iou")]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{d} {next((summaries[r['name']]['datasets'][d]['n_images'] for r in runs if d in (summaries[r['name']].get('datasets') or {})), 0)}" for d in names)
    lines += ["", f"images per dataset: {counts}; 'all' is the per-image mean over every image of the split."]
    return "\n".join(lines)


CSV_COLUMNS = ("run", "label", "preset", "mode", "steps", "train_minutes", "sampler", "samples", "fusion", "passes",
               "evaluations", "images_per_s", "masks_per_s", "device", *(f"{m}_pct" for m in METRICS),
               *(f"{m}_pct_std" for m in METRICS), "single_round_dice_pct", "delta_dice_pp", "delta_dice_ci_low",
               "delta_dice_ci_high", "delta_dice_p", "delta_iou_pp", "delta_iou_ci_low", "delta_iou_ci_high",
               "delta_iou_p", "better", "worse")

