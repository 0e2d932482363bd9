"""Sampler sweeps: Dice against the number of function evaluations (NFE), per sampler, for one trained run.

After PGDiffSeg (sec. 5.5 "Efficient sampling", Figs. 10-11): every sampler (ancestral DDPM, DDIM, DPM-Solver,
DPM-Solver++, UniPC) at every NFE, each setting repeated R times; the mean Dice over the repeats as a line,
its spread as a band, and the original many-step DDPM result (by default 1000 steps) as a horizontal line.

Protocol:
- images: a manifest split, all of it or ``max_images`` rows evenly spaced over it (``data.manifest.evenly_spaced``);
- sampling: the run's EMA weights; the R repeats of an image are one sampler call with ``num_samples = R``
  (condition encoded once), repeat r being sample r; its noise comes from a CPU generator seeded from the seed
  and the image id exactly as ``Predictor.image_seed`` does, so a setting's repeat r is sample r of
  ``lesiondiff predict`` with that sampler, steps and ``sample.seed``, and every setting of an image starts from
  the same noise (common random numbers: settings differ by the sampler, not by the draw);
- Dice: each sample's probability resized bilinearly to the image's original size, ``>= threshold`` (the run's
  ``sample.threshold``), against the union of the image's masks, with the empty-mask rules of ``metrics.py``
  (the per-sample figures of ``lesiondiff evaluate``); averaged over images per repeat, then mean and
  population std (ddof 0) over the R repeat means;
- NFE: the rows passed through ``model.denoise`` divided by the samples drawn (``count_evaluations``), recorded
  as ``measured_nfe`` beside the requested one; a mismatch warns and is kept in the outputs;
- time: wall seconds of the sampler calls (encode, every step and the copy of the result to the CPU; not
  reading, preprocessing or scoring) per setting, after one untimed warm-up call per sweep; ``seconds_per_image = seconds / images`` (all R samples) and
  ``seconds_per_image_per_sample = seconds / (images x R)``.

Outputs (``sweep_samplers``; every file written atomically): sweep.csv (one row per sampler, NFE and repeat;
rewritten after every setting, so an interrupted sweep resumes where it stopped), summary.csv, summary.json,
samplers.md and dice_vs_nfe.png. The protocol (run, checkpoint and its hash, manifest, split, image ids,
repeats, seed, threshold) is kept in summary.json; a rerun into the same folder skips completed settings and
refuses another protocol.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..build import build_sampler
from ..config import Config
from ..data.dataset import mask_paths
from ..data.io import read_image, read_masks
from ..data.manifest import dataset_name, split_rows
from ..data.transforms import preprocess_image, resize_prob
from ..diffusion.samplers import SAMPLERS, SchedulerSampler
from ..engine.predict import Predictor
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..metrics import image_dice
from ..models import Denoiser
from ..render.sampler_figures import dice_vs_nfe_figure

DEFAULT_SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmsolver", "dpmsolver++", "unipc")
DEFAULT_NFE: tuple[int, ...] = (5, 10, 20, 50, 100)
REFERENCE_SAMPLER = "ddpm"
SWEEP_FIELDS = ["sampler", "nfe", "measured_nfe", "repeat", "dice", "images", "seconds", "device"]
SUMMARY_FIELDS = ["sampler", "nfe", "measured_nfe", "dice_mean", "dice_std", "seconds_per_image_per_sample",
                  "seconds_per_image", "repeats", "images"]
# what must match for a rerun to add to (or skip) the settings of an existing sweep
PROTOCOL_KEYS = ("run", "checkpoint", "checkpoint_sha256", "manifest", "split", "image_ids", "repeats", "seed",
                 "threshold")
AVERAGING = "per-image Dice averaged over images, mean ± std over repeats"
OUTPUTS = ("sweep.csv", "summary.csv", "summary.json", "samplers.md", "dice_vs_nfe.png")


# ---- counting network evaluations -------------------------------------------------------------------------------
@dataclass
class EvaluationCount:
    calls: int = 0  # calls of model.denoise
    rows: int = 0  # samples passed through it, summed over calls: NFE per sample = rows / samples drawn


@contextmanager
def count_evaluations(model: Denoiser):
    """Count ``model.denoise`` calls (and the batch rows they carry) while the block runs, by shadowing the
    method with a counting wrapper on the instance; the method is restored on exit."""
    count = EvaluationCount()
    shadowed = model.__dict__.get("denoise")
    original = model.denoise

    def denoise(x_t, t, condition, *args, **kwargs):
        count.calls += 1
        count.rows += int(x_t.shape[0])
        return original(x_t, t, condition, *args, **kwargs)

    model.denoise = denoise
    try:
        yield count
    finally:
        if shadowed is None:
            del model.denoise
        else:
            model.denoise = shadowed


# ---- one setting ------------------------------------------------------------------------------------------------
@dataclass
class SweepImage:
    id: str
    x: torch.Tensor  # [1,C,size,size] in [-1,1], on the model's device
    gt: np.ndarray  # [H,W] bool at the image's original size: the union of its masks
    seed: int  # Predictor.image_seed(id)


@dataclass
class SettingResult:
    dice: np.ndarray  # [images, R] per-image Dice of each repeat
    seconds: float  # sampler wall time for all images and repeats
    measured_nfe: float  # network rows evaluated per sample drawn


def run_setting(model: Denoiser, cfg: Config, sampler: str, nfe: int, images: list[SweepImage], repeats: int,
                threshold: float, progress=None) -> SettingResult:
    """Draw ``repeats`` samples of every image with ``sampler`` at ``nfe`` steps and score each (module
    docstring). ``progress``: a tqdm bar advanced by one per image."""
    sample = build_sampler(cfg, sampler)
    dice = np.zeros((len(images), repeats))
    seconds = 0.0
    with count_evaluations(model) as count:
        for i, im in enumerate(images):
            generator = torch.Generator().manual_seed(im.seed)
            start = time.perf_counter()
            probs = sample(model, im.x, repeats, nfe, generator)[0, :, 0].float().cpu().numpy()
            seconds += time.perf_counter() - start
            masks = resize_prob(probs, im.gt.shape) >= threshold
            dice[i] = [image_dice(m, im.gt) for m in masks]
            if progress is not None:
                progress.update(1)
    measured = count.rows / (len(images) * repeats)
    return SettingResult(dice, seconds, int(measured) if measured.is_integer() else measured)


def load_images(rows: list[dict], cfg: Config, image_seed, device: torch.device) -> list[SweepImage]:
    """Read and preprocess each row's image once (as ``Predictor.sample`` does) and its masks at the image's
    original size (as ``evaluate`` does); a row without masks has an all-background ground truth."""
    d = cfg.data
    out = []
    for row in tqdm(rows, desc="reading images", unit="img", leave=False):
        image = read_image(row["image"])
        paths = mask_paths(row)
        gt = read_masks(paths, shape=image.shape[:2]) if paths else np.zeros(image.shape[:2], bool)
        x = preprocess_image(image, d.size, d.channels, d.intensity_window)[None].to(device)
        out.append(SweepImage(row["id"], x, gt, image_seed(row["id"])))
    return out


# ---- summaries --------------------------------------------------------------------------------------------------
def summarize_sweep(rows: list[dict], order: list[str]) -> list[dict]:
    """One summary row per (sampler, nfe) of the sweep.csv ``rows`` (values as floats/ints): dice_mean and
    dice_std (population) over the repeat means, seconds per image and per image per sample. Sorted by
    ``order`` of the samplers (others after, by name), then NFE."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["sampler"], int(r["nfe"])), []).append(r)
    rank = {name: i for i, name in enumerate(dict.fromkeys(order))}
    out = []
    for (sampler, nfe), group in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0])):
        dice = np.array([float(r["dice"]) for r in group])
        seconds = sum(float(r["seconds"]) for r in group)
        images = int(group[0]["images"])
        out.append({"sampler": sampler, "nfe": nfe, "measured_nfe": _number(group[0]["measured_nfe"]),
                    "dice_mean": float(dice.mean()), "dice_std": float(dice.std(ddof=0)),
                    "seconds_per_image_per_sample": seconds / (images * len(group)),
                    "seconds_per_image": seconds / images, "repeats": len(group), "images": images})
    return out


def fewest_within(summary: list[dict], reference: dict | None, tolerance: float) -> dict[str, dict | None]:
    """Per sampler, the summary row with the fewest NFE whose dice_mean is at least the reference's mean minus
    ``tolerance`` Dice percentage points (the reference setting itself excluded), or None; ``"overall"``: the
    fewest NFE over all samplers (ties: the higher Dice). Empty when there is no reference."""
    if reference is None:
        return {}
    floor = reference["dice_mean"] - tolerance / 100
    out: dict[str, dict | None] = {}
    for row in summary:
        if row is reference:
            continue
        out.setdefault(row["sampler"], None)
        best = out[row["sampler"]]
        if row["dice_mean"] >= floor and (best is None or row["nfe"] < best["nfe"]):
            out[row["sampler"]] = row
    hits = [r for r in out.values() if r is not None]
    out["overall"] = min(hits, key=lambda r: (r["nfe"], -r["dice_mean"])) if hits else None
    return out


def _number(text) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _find_reference(summary: list[dict], reference_nfe: int) -> dict | None:
    return next((r for r in summary if r["sampler"] == REFERENCE_SAMPLER and r["nfe"] == reference_nfe), None)


# ---- files ------------------------------------------------------------------------------------------------------
def _read_sweep(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and set(SWEEP_FIELDS) - set(rows[0]):
        raise LesiondiffError(f"{path}: not a sampler sweep (columns {', '.join(rows[0])})")
    return rows


def _csv_text(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)  # floats as repr: they read back exactly
    return buffer.getvalue()


def _protocol_difference(old: dict, new: dict) -> str:
    parts = []
    for key in PROTOCOL_KEYS:
        if old.get(key) != new.get(key):
            if key == "image_ids":
                parts.append(f"images {len(old.get(key) or [])} ids -> {len(new[key])} ids"
                             + (" (other ids)" if len(old.get(key) or []) == len(new[key]) else ""))
            else:
                parts.append(f"{key} {old.get(key)} -> {new.get(key)}")
    return "; ".join(parts)


def _existing_rows(out: Path, protocol: dict) -> list[dict]:
    """The rows of ``out``'s sweep.csv, after checking that ``out`` holds nothing but a sweep of the same
    protocol (an evaluate folder's summary.json is not overwritten)."""
    sweep, summary = out / "sweep.csv", out / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
        except ValueError:
            data = None
        old = data.get("protocol") if isinstance(data, dict) else None
        if not isinstance(old, dict) or "checkpoint_sha256" not in old:  # e.g. the summary.json of evaluate
            raise LesiondiffError(f"{summary}: not a sampler-sweep summary; use another --out")
        diff = _protocol_difference(old, protocol)
        if diff:
            raise LesiondiffError(f"{out}: holds a sampler sweep of another protocol ({diff}); use another --out")
    elif sweep.is_file():
        raise LesiondiffError(f"{sweep}: found without its summary.json, so its protocol is unknown; use another "
                              "--out or delete it")
    return _read_sweep(sweep) if sweep.is_file() else []


def _checkpoint_file(run: Path, checkpoint: str) -> Path:
    """The file ``load_run`` loads: checkpoints/<name>.safetensors, ``best`` falling back to ``last``."""
    name = checkpoint.removesuffix(".safetensors")
    path = run / "checkpoints" / f"{name}.safetensors"
    if name == "best" and not path.is_file():
        path = run / "checkpoints" / "last.safetensors"
    if not path.is_file():
        raise LesiondiffError(f"{path}: checkpoint not found")
    return path


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _parse_settings(samplers, nfe, reference_nfe: int, repeats: int, max_images, tolerance: float,
                    timesteps: int) -> tuple[list[str], list[int], list[tuple[str, int]]]:
    """(samplers, sorted NFE, the (sampler, nfe) settings in sweep order, the reference last), checked."""
    samplers, nfe = list(dict.fromkeys(samplers)), sorted(set(int(n) for n in nfe))
    if not samplers or not nfe:
        raise LesiondiffError("need at least one sampler and one NFE")
    for name in samplers:
        if not issubclass(SAMPLERS.get(name), SchedulerSampler):
            raise LesiondiffError(f"sampler {name!r} does not take a number of steps; sweep one of "
                                  + ", ".join(n for n in SAMPLERS.names() if issubclass(SAMPLERS.get(n),
                                                                                       SchedulerSampler)))
    if repeats < 1 or min(nfe) < 1 or reference_nfe < 0 or tolerance < 0 or (max_images is not None
                                                                               and max_images < 1):
        raise LesiondiffError("need --repeats >= 1, --nfe >= 1, --reference-nfe >= 0, --tolerance >= 0 and "
                              "--max-images >= 1")
    if max(nfe + [reference_nfe]) > timesteps:
        raise LesiondiffError(f"NFE {max(nfe + [reference_nfe])} exceeds the run's {timesteps} training timesteps")
    settings = [(s, n) for s in samplers for n in nfe]
    if reference_nfe and (REFERENCE_SAMPLER, reference_nfe) not in settings:
        settings.append((REFERENCE_SAMPLER, reference_nfe))
    return samplers, nfe, settings


def sweep_samplers(run: str | Path, out: str | Path, manifest: str | Path | None = None, split: str = "test",
                   samplers=DEFAULT_SAMPLERS, nfe=DEFAULT_NFE, reference_nfe: int = 1000, repeats: int = 5,
                   max_images: int | None = None, checkpoint: str = "best", seed: int = 0,
                   device: str | None = None, tolerance: float = 1.0, progress: bool = True) -> dict:
    """Sweep ``samplers`` x ``nfe`` (plus DDPM at ``reference_nfe``, 0: none) on ``split`` of ``manifest``
    (default: the run's own) and write the files of the module docstring under ``out``; returns what
    summary.json holds. Settings already in ``out``'s sweep.csv are not sampled again."""
    run, out = Path(run), Path(out)
    if not (run / "config.yaml").is_file():
        raise LesiondiffError(f"{run}: not a run directory (no config.yaml)")
    cfg = Config.load(run / "config.yaml")
    if cfg.diffusion.feedforward:
        raise LesiondiffError(f"{run}: a feed-forward run has one one-shot sampler and no NFE to sweep")
    samplers, nfe, settings = _parse_settings(samplers, nfe, reference_nfe, repeats, max_images, tolerance,
                                              cfg.diffusion.num_train_timesteps)
    manifest = manifest or cfg.data.manifest
    if not manifest:
        raise LesiondiffError(f"{run}: the run names no manifest; give --manifest")
    m, rows = split_rows(manifest, split, max_images)
    n_split = len(m.rows(split=split or None))
    ckpt = _checkpoint_file(run, checkpoint)
    threshold = cfg.sample.threshold
    protocol = {
        "run": str(run.absolute()), "checkpoint": ckpt.name, "checkpoint_sha256": _sha256(ckpt),
        "manifest": str(Path(manifest).absolute()), "split": split, "image_ids": [r["id"] for r in rows],
        "repeats": repeats, "seed": seed, "threshold": threshold,
        "images": len(rows), "split_images": n_split,
        "image_selection": (f"all {n_split} images of the split" if len(rows) == n_split else
                            f"{len(rows)} of {n_split} images, evenly spaced over the split (--max-images)"),
        "averaging": AVERAGING,
        "dice": "each sample resized bilinearly to the image's original size, prob >= threshold, against the "
                "union of its masks; empty mask and empty prediction = 1 (metrics.py)",
        "std": "population std (ddof 0) of the repeat means",
        "repeats_drawn": "the R repeats of an image are one batched sampler call; repeat r = sample r",
        "noise": f"per image a CPU generator seeded from seed {seed} and the image id (Predictor.image_seed); the "
                 "same starting noise for every setting",
        "nfe": "measured_nfe = rows through model.denoise / samples drawn",
        "seconds": "wall time of the sampler calls after one untimed warm-up call; sweep.csv seconds = the "
                   "setting's seconds / R",
    }
    done = _existing_rows(out, protocol)
    counts = Counter((r["sampler"], int(r["nfe"])) for r in done)
    complete = {key for key, n in counts.items() if n == repeats}
    done = [r for r in done if (r["sampler"], int(r["nfe"])) in complete]  # a partial setting is redone
    todo = [s for s in settings if s not in complete]

    requested = {"samplers": samplers, "nfe": nfe, "reference_nfe": reference_nfe, "tolerance": tolerance,
                 "dataset": dataset_name(m, manifest)}
    device_name = ""
    if todo:
        predictor = Predictor.from_run(run, checkpoint, device, overrides=[f"sample.seed={seed}"])
        model, device_name = predictor.model, str(predictor.device)
        images = load_images(rows, predictor.cfg, predictor.image_seed, predictor.device)
        # one untimed, uncounted call first, so the first setting's time does not include warming up
        build_sampler(predictor.cfg, todo[0][0], max_batch=0)(model, images[0].x, 1, 1, torch.Generator())
        bar = tqdm(total=len(todo) * len(images), desc="sampler sweep", unit="img", disable=not progress)
        for sampler, n in todo:
            bar.set_postfix_str(f"{sampler} NFE {n}")
            result = run_setting(model, predictor.cfg, sampler, n, images, repeats, threshold, bar)
            if result.measured_nfe != n:
                warnings.warn(f"{sampler} at NFE {n} made {result.measured_nfe} network evaluations per sample",
                              stacklevel=2)
            means = result.dice.mean(0)
            done += [{"sampler": sampler, "nfe": n, "measured_nfe": result.measured_nfe, "repeat": r,
                      "dice": float(means[r]), "images": len(images), "seconds": result.seconds / repeats,
                      "device": device_name} for r in range(repeats)]
            _write_all(out, done, protocol, requested, figure=False)
        bar.close()
    return _write_all(out, done, protocol, requested, figure=True, sampled=len(todo))


def _write_all(out: Path, rows: list[dict], protocol: dict, requested: dict, figure: bool, sampled: int = 0) -> dict:
    """Write sweep.csv, summary.csv and summary.json (and with ``figure``, samplers.md and dice_vs_nfe.png) from
    the sweep ``rows``, every completed setting included; returns summary.json's content plus
    ``sampled_settings``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.csv", _csv_text(rows, SWEEP_FIELDS))
    parsed = [{**r, "nfe": int(r["nfe"]), "repeat": int(r["repeat"])} for r in rows]
    summary_rows = summarize_sweep(parsed, [*requested["samplers"], REFERENCE_SAMPLER])
    reference_nfe = requested["reference_nfe"]
    reference = _find_reference(summary_rows, reference_nfe) if reference_nfe else None
    within = fewest_within(summary_rows, reference, requested["tolerance"])
    mismatches = [f"{r['sampler']} NFE {r['nfe']}: measured {r['measured_nfe']}" for r in summary_rows
                  if r["measured_nfe"] != r["nfe"]]
    summary = {
        "settings": {**{k: requested[k] for k in ("samplers", "nfe", "reference_nfe", "dataset")},
                     "reference": f"{REFERENCE_SAMPLER} at NFE {reference_nfe}" if reference_nfe else None,
                     "tolerance_dice_points": requested["tolerance"]},
        "protocol": protocol,
        "results": summary_rows,
        "reference": reference,
        "fewest_nfe_within_tolerance": {k: (None if v is None else {"sampler": v["sampler"], "nfe": v["nfe"],
                                                                    "dice_mean": v["dice_mean"]})
                                        for k, v in within.items()},
        "nfe_mismatches": mismatches,
        "files": list(OUTPUTS),
    }
    atomic_write_text(out / "summary.csv", _csv_text(summary_rows, SUMMARY_FIELDS))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    if figure:
        atomic_write_text(out / "samplers.md", format_markdown(summary) + "\n")
        dice_vs_nfe_figure(summary, out / "dice_vs_nfe.png")
    return {**summary, "sampled_settings": sampled}


# ---- text -------------------------------------------------------------------------------------------------------
def _pct(row: dict) -> str:
    return f"{100 * row['dice_mean']:.2f} ± {100 * row['dice_std']:.2f}"


def within_lines(summary: dict) -> list[str]:
    """One line per sampler, then ``overall``: the fewest NFE within the tolerance of the reference, or none."""
    s, ref = summary["settings"], summary["reference"]
    if ref is None:
        return [f"no reference ({s['reference'] or 'reference disabled'} not in the sweep): no NFE comparison"]
    head = (f"fewest NFE whose mean Dice is at most {s['tolerance_dice_points']:g} Dice percentage points below "
            f"the reference ({REFERENCE_SAMPLER} {ref['nfe']} NFE, {_pct(ref)} %):")
    lines = [head]
    for name, row in summary["fewest_nfe_within_tolerance"].items():
        label = "overall" if name == "overall" else name
        text = "none" if row is None else (f"{row['sampler'] + ' at ' if name == 'overall' else ''}{row['nfe']} NFE "
                                           f"({100 * row['dice_mean']:.2f} %)")
        lines.append(f"- {label}: {text}")
    return lines


def protocol_line(summary: dict) -> str:
    p = summary["protocol"]
    return (f"{summary['settings']['dataset']}, split {p['split']} of {p['manifest']}: {p['image_selection']}; threshold {p['threshold']} "
            f"(prob >= threshold) at each image's original size; {AVERAGING} (R = {p['repeats']}, population "
            f"std; repeat r = sample r of one batched call); noise seeded from seed {p['seed']} and the image id; "
            f"run {p['run']}, checkpoint {p['checkpoint']}")


def format_markdown(summary: dict) -> str:
    """samplers.md: the summary table (Dice in %), the fewest-NFE lines and the protocol."""
    lines = ["| sampler | NFE | measured NFE | Dice % (mean ± std) | s / image / sample | s / image |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary["results"]:
        lines.append(f"| {r['sampler']} | {r['nfe']} | {r['measured_nfe']} | {_pct(r)} | "
                     f"{r['seconds_per_image_per_sample']:.4f} | {r['seconds_per_image']:.4f} |")
    lines += ["", *within_lines(summary)]
    if summary["nfe_mismatches"]:
        lines += ["", "NFE measured differs from requested: " + "; ".join(summary["nfe_mismatches"])]
    return "\n".join([*lines, "", f"How: {protocol_line(summary)}."])


def format_table(summary: dict) -> str:
    """A short text table for the terminal, with how the numbers were computed."""
    lines = [f"{'sampler':<12} {'NFE':>5} {'measured':>8} {'Dice % mean ± std':>18} {'s/img/sample':>12} "
             f"{'s/img':>8}"]
    for r in summary["results"]:
        lines.append(f"{r['sampler']:<12} {r['nfe']:>5} {r['measured_nfe']!s:>8} {_pct(r):>18} "
                     f"{r['seconds_per_image_per_sample']:>12.4f} {r['seconds_per_image']:>8.3f}")
    lines += within_lines(summary)
    p = summary["protocol"]
    lines += [f"threshold {p['threshold']} (prob >= threshold, original image size); {AVERAGING}; split "
              f"{p['split']}, {p['image_selection']}; R = {p['repeats']} repeats; seed {p['seed']}"]
    return "\n".join(lines)
