"""A shipped model's card: ``card.json`` (the numbers, read by ``lesiondiff models`` and the shipped-model test)
and ``MODEL_CARD.md`` (for people), written from the evaluation of the exported model itself on its test split.

Failure modes are read off the model's own test predictions: lesions it misses, lesion-free images it marks,
how Dice falls with lesion size (terciles of the ground-truth area as a share of the image), and its worst
images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.dataset import mask_paths
from ..data.io import read_masks
from ..data.manifest import Manifest
from ..engine.evaluate import fused_metrics
from ..io_utils import atomic_write_text

PROTOCOL = ("per image at the original size, fused mask thresholded at 0.5, mean over the test images; lesion "
            "images: ground truth non-empty; ECE per image (10 bins) averaged")


def lesion_areas(manifest: str, split: str) -> dict[str, float]:
    """Ground-truth foreground as a share of the image, by id, for the split's images with a lesion."""
    out = {}
    for row in Manifest.read(manifest).rows(split=split):
        paths = mask_paths(row)
        if paths:
            mask = read_masks(paths)
            if mask.any():
                out[row["id"]] = float(mask.mean())
    return out


def failure_modes(pred_dir: Path) -> list[str]:
    """Plain sentences on where the model fails, from an evaluated prediction folder of a manifest split."""
    rows = fused_metrics(pred_dir)
    summary = json.loads((pred_dir / "summary.json").read_text(encoding="utf-8"))
    areas = lesion_areas(summary["manifest"], summary["split"])
    lesion = [r for r in rows if r["id"] in areas]
    free = [r for r in rows if r["id"] not in areas]
    dice = {r["id"]: float(r["dice"]) for r in rows}
    lines = []
    missed = [r for r in lesion if dice[r["id"]] == 0.0]
    lines.append(f"{len(missed)} of {len(lesion)} lesion images get no overlap at all (Dice 0)"
                 + (f": {', '.join(sorted(r['id'] for r in missed)[:6])}" if missed else "") + ".")
    if free:
        marked = [r for r in free if dice[r["id"]] == 0.0]
        lines.append(f"{len(marked)} of {len(free)} lesion-free images get a (false) lesion marked.")
    if len(lesion) >= 6:
        order = sorted(lesion, key=lambda r: areas[r["id"]])
        thirds = np.array_split(np.arange(len(order)), 3)
        parts = [f"{100 * np.mean([dice[order[i]['id']] for i in t]):.1f} % (lesion up to "
                 f"{100 * areas[order[t[-1]]['id']]:.1f} % of the image)" for t in thirds]
        lines.append("Dice by lesion size, smallest third to largest: " + "; ".join(parts) + ".")
    labels = sorted({r["label"] for r in lesion if r["label"]})
    if len(labels) > 1:
        lines.append("Dice by label: " + "; ".join(
            f"{lab} {100 * np.mean([dice[r['id']] for r in lesion if r['label'] == lab]):.1f} %" for lab in labels)
            + ".")
    worst = sorted(lesion, key=lambda r: dice[r["id"]])[:3]
    lines.append("Worst lesion images: " + ", ".join(f"{r['id']} ({100 * dice[r['id']]:.1f} %)" for r in worst) + ".")
    return lines


def test_figures(summary: dict) -> dict:
    """The card's test numbers from an evaluation summary."""
    il = summary["image_level"]
    return {"images": summary["n_images"], "lesion_images": il["lesion_images"],
            "lesion_free_images": il["empty_images"], "lesion_dice": summary["lesion_images"]["dice"]["mean"],
            "lesion_iou": summary["lesion_images"]["iou"]["mean"], "dice": summary["fused"]["all"]["dice"]["mean"],
            "lesion_free_predicted_empty": il["specificity"] if il["empty_images"] else None,
            "detection_sensitivity": il["detection_sensitivity"],
            "ece": summary["calibration"]["ece_per_image"]["mean"], "protocol": PROTOCOL}


def per_image_dice(pred_dir: Path) -> dict[str, float]:
    return {r["id"]: float(r["dice"]) for r in fused_metrics(pred_dir)}


def write_card(out: Path, card: dict, summary: dict, pred_dir: Path, a) -> dict:
    """Fill ``card`` with the test evaluation ``summary`` (of the predictions in ``pred_dir``) of the exported
    model in ``out`` and write ``card.json`` and ``MODEL_CARD.md`` there."""
    s = summary["prediction_settings"]
    speed = s["speed"]
    dice = per_image_dice(pred_dir)
    card.update({
        "preset": card["training"]["preset"], "recipe": card["training"].get("recipe"), "size": s["size"],
        "budget": f"{a.minutes:g} CPU minutes of process time (train.clock=process), one thread, seed {a.seed}",
        "test": test_figures(summary),
        "sampling": {k: s[k] for k in ("sampler", "steps", "samples", "fusion", "threshold", "seed")}
        | {"s_per_image": speed["sampling_s"] / max(1, speed["images"]), "threads": speed.get("threads"),
           "device": speed["device"], "postprocess": s["postprocess"]["description"]},
        "check_dice": {r["id"]: dice[r["id"]] for r in card["check_rows"]},
    })
    atomic_write_text(out / "card.json", json.dumps(card, indent=2))
    atomic_write_text(out / "MODEL_CARD.md", card_markdown(card))
    return card


def card_markdown(c: dict) -> str:
    t, s, tr = c["test"], c["sampling"], c["training"]
    free = (f"{100 * t['lesion_free_predicted_empty']:.1f} % of {t['lesion_free_images']}"
            if t["lesion_free_images"] else "no lesion-free test images")
    lines = [
        f"# lesiondiff model `{c['name']}`", "",
        "Research software, not a medical device: not for diagnosis or any clinical decision.", "",
        "## Intended use",
        f"Segmenting lesions in {c['data']['name']} images like those it was trained on, for research: a mask, the "
        "fused probability and, for diffusion models, maps of where the samples disagree. Other scanners, "
        "sites or image types are out of its scope until it is evaluated on them.", "",
        "## Data and training",
        f"- Data: {c['data']['name']} (`{c['data']['folder']}`), indexed by `lesiondiff data index` with seed 0 "
        f"(70/15/15, stratified by label): {', '.join(f'{k} {v}' for k, v in c['data']['splits'].items())} images.",
        f"- Model: preset `{c['preset']}` ({c['candidate']}), recipe `{c['recipe']}`, {c['size']} px, "
        f"{tr['parameters']:,} parameters; {tr['step']} training steps in {c['budget']}; best validation "
        f"checkpoint (step {tr['best_step']}), EMA weights stored as float16.",
        "- Chosen by validation Dice (post-processing included) over the candidates: "
        + ", ".join(f"{k} {100 * v:.2f} %" for k, v in c["validation_dice"].items()) + "; the test split was "
        "not used to choose.",
        f"- Machine: {c['machine']['platform']}, {c['machine']['cpus']} CPU cores, torch {c['machine']['torch']}.",
        f"- Made by `{c['command']}` (benchmarks/ship_models.py's docstring says what each step does; a "
        "`--reuse` run was trained by the same protocol, `bench_runs.train`).", "",
        "## Test metrics",
        f"Protocol: {t['protocol']}; test split, {t['images']} images, seed {s['seed']}.", "",
        "| lesion-image Dice | lesion-image IoU | overall Dice | lesion-free predicted empty | detection "
        "sensitivity | ECE |", "| --- | --- | --- | --- | --- | --- |",
        f"| {100 * t['lesion_dice']:.2f} % ({t['lesion_images']}) | {100 * t['lesion_iou']:.2f} % | "
        f"{100 * t['dice']:.2f} % | {free} | {100 * t['detection_sensitivity']:.1f} % | {t['ece']:.4f} |", "",
        "## Sampling and speed",
        f"Sampler {s['sampler']}, {s['steps']} steps, S = {s['samples']}, fusion {s['fusion']}, threshold "
        f"{s['threshold']}; post-processing: {s['postprocess']}. {s['s_per_image']:.2f} s per image on "
        f"{s['device']} ({s['threads']} threads), the S samples included.", "",
        "## Known failure modes (from its own test predictions)",
        *[f"- {line}" for line in c["failure_modes"]], "",
        "## Use",
        f"`lesiondiff predict --model {c['name']} IMAGES --out OUT`; `lesiondiff serve --model {c['name']}`.", ""]
    return "\n".join(lines)
