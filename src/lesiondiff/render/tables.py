"""Text tables of an evaluation summary: the printed table ``lesiondiff evaluate`` shows, PalScDiff's sampling
rounds (Table 4) and DiffSeg's outputs (Table 1) as Markdown, and the lines of the lesion-image, calibration and
failure-detection figures. Numbers in (a summary dict, ``engine/evaluate.py``), text out."""

from __future__ import annotations

from ..errors import LesiondiffError
from ..metrics import LOWER_IS_BETTER, METRIC_NAMES

PALSCDIFF_METRICS: tuple[str, ...] = ("accuracy", "precision", "dice", "iou")  # the columns of its Table 4

COLUMN_NAMES = {"accuracy": "ACC %", "precision": "Precision %", "dice": "Dice %", "iou": "IoU %",
                "recall": "Recall %", "specificity": "Specificity %", "hd95": "HD95 px"}

FUSION_NAMES = {"majority": "majority vote", "mean": "mean fusion", "staple": "STAPLE",
                "densecrf": "mean + DenseCRF", "crf_rounds": "DenseCRF rounds (DiffSeg)"}

SPREAD_ROW = "spread (max - min over rounds)"

def image_level_lines(summary: dict) -> list[str]:
    """The printed lines of the lesion-image figures and the image-level decision (summaries that have them)."""
    if "image_level" not in summary:
        return []
    il, lesion = summary["image_level"], summary["lesion_images"]
    lines = []
    if lesion and "dice" in lesion:
        lines.append(f"lesion images only (ground truth non-empty, n = {il['lesion_images']}): Dice "
                     f"{lesion['dice']['mean']:.3f} ±{lesion['dice']['std']:.3f}, IoU {lesion['iou']['mean']:.3f} "
                     f"±{lesion['iou']['std']:.3f} (fused, per image)")
    text = (f"image level (lesion present = any foreground in the fused mask): detection sensitivity "
            f"{il['detected']}/{il['lesion_images']}, specificity {il['predicted_empty']}/{il['empty_images']} "
            "(lesion-free images predicted empty)")
    if "normal_images" in il:
        text += f"; normal images predicted empty {il['normal_predicted_empty']:.1%} of {il['normal_images']}"
    lines.append(text)
    lines.append(f"lesion / no-lesion decision: {summary.get('postprocess', 'none recorded')}")
    return lines

def ensemble_name(summary: dict) -> str:
    """What the fused masks are, from ``prediction_settings``: "majority vote", "STAPLE + DenseCRF", ..."""
    settings = summary.get("prediction_settings") or {}
    method = settings.get("fusion")
    name = FUSION_NAMES.get(method, method or "fused (fusion not recorded)")
    return name + (" + DenseCRF" if settings.get("crf") else "")

def samples_are(summary: dict) -> str:
    """What the S samples of an image are, as predict recorded it from its sampler (``samples_are`` in
    ``predict.json``), or a hint for predictions without that record."""
    settings = summary.get("prediction_settings") or {}
    return settings.get("samples_are") or ("not recorded: independent draws for every sampler except "
                                           "class_difference, whose sample k is its k-th timestep")

def _require_rounds(summary: dict) -> list[dict]:
    if not summary.get("rounds"):
        raise LesiondiffError("this summary has no 'rounds' section (written before it existed); run lesiondiff "
                              "evaluate again")
    return summary["rounds"]

def _scale(key: str) -> float:
    return 1.0 if key in LOWER_IS_BETTER else 100.0  # fractions as %, hd95 stays in pixels

def rounds_table(summary: dict, metrics: tuple[str, ...] = PALSCDIFF_METRICS) -> list[dict]:
    """PalScDiff's Table 4 as rows: ``{"which": "round 1", <metric>: mean, <metric>_std: std, ...}`` for
    each round, then the ensemble (``"which"`` is its fusion, e.g. "majority vote"), then
    ``{"which": SPREAD_ROW, <metric>: max - min of the round means, <metric>_std: None}``.

    Means, stds and spreads are per-image figures (mean +- population std over images) in %, except hd95,
    in pixels. Raises ``LesiondiffError`` for summaries written before rounds existed.
    """
    rounds = _require_rounds(summary)

    def row(which: str, stats: dict) -> dict:
        return {"which": which, **{k: stats[k]["mean"] * _scale(k) for k in metrics},
                **{f"{k}_std": stats[k]["std"] * _scale(k) for k in metrics}}

    spread = summary["rounds_spread"]
    return [*(row(f"round {r['round']}", r["all"]) for r in rounds),
            row(ensemble_name(summary), summary["fused"]["all"]),
            {"which": SPREAD_ROW, **{k: spread[k]["range"] * _scale(k) for k in metrics},
             **{f"{k}_std": None for k in metrics}}]

def rounds_cells(row: dict, metrics: tuple[str, ...] = PALSCDIFF_METRICS) -> list[str]:
    """The cells of one ``rounds_table`` row as text: "mean ± std" with 2 decimals (the paper's precision),
    or the value alone on the spread row."""
    return [f"{row[k]:.2f}" if row[f"{k}_std"] is None else f"{row[k]:.2f} ± {row[f'{k}_std']:.2f}"
            for k in metrics]

def ensemble_minus_best_text(summary: dict, metrics: tuple[str, ...] = PALSCDIFF_METRICS) -> str:
    """One sentence: the ensemble's mean minus the best round's, per metric, with which round was best."""
    gain, spread = summary["ensemble_minus_best_round"], summary["rounds_spread"]
    parts = []
    for k in metrics:
        unit = " px" if k in LOWER_IS_BETTER else ""
        parts.append(f"{COLUMN_NAMES[k].removesuffix(' %').removesuffix(' px')} {gain[k] * _scale(k):+.2f}{unit} "
                     f"(best: round {spread[k]['best_round']})")
    note = "; hd95: best = lowest, negative = ensemble better" if any(k in LOWER_IS_BETTER for k in metrics) else ""
    return (f"Ensemble ({ensemble_name(summary)}) minus the best single round (percentage points{note}): "
            + ", ".join(parts))

def rounds_protocol(summary: dict) -> str:
    """How the rounds table was computed: split, images, threshold, averaging, fusion and sampling."""
    settings = summary.get("prediction_settings") or {}
    sampling = ", ".join(f"{k} {settings[k]}" for k in ("sampler", "steps", "seed") if k in settings)
    return (f"split {summary['split']} of {summary['manifest']}, {summary['n_images']} images; threshold "
            f"{summary['threshold']} (prob >= threshold); each metric per image at the original image size, then "
            "mean ± population std over images; round k = the k-th of the S = "
            f"{len(summary['rounds'])} samples of every image ({samples_are(summary)}); ensemble: the S "
            f"samples fused by {ensemble_name(summary)}; spread: max - min of the round means"
            + (f"; {sampling}" if sampling else ""))

def format_rounds_markdown(summary: dict, metrics: tuple[str, ...] = PALSCDIFF_METRICS) -> str:
    """PalScDiff's Table 4 as a Markdown table (rows: round 1..S, the ensemble, the spread; columns: ACC %,
    Precision %, Dice %, IoU %), then the ensemble-minus-best-round sentence and a protocol line."""
    head = "| | " + " | ".join(COLUMN_NAMES[k] for k in metrics) + " |"
    lines = [head, "|---|" + "---:|" * len(metrics)]
    lines += [f"| {r['which']} | " + " | ".join(rounds_cells(r, metrics)) + " |"
              for r in rounds_table(summary, metrics)]
    return "\n".join([*lines, "", ensemble_minus_best_text(summary, metrics) + ".", "",
                      f"Protocol: {rounds_protocol(summary)}."])

OUTPUT_METRICS: tuple[str, ...] = ("dice", "precision", "recall", "iou")  # DiffSeg's Table 1 columns

OUTPUT_COLUMNS = {**COLUMN_NAMES, "iou": "IoU (Jaccard) %"}  # their headers, named as the paper does

def output_rows(summary: dict) -> list[tuple[str, dict]]:
    """The three ways of turning the S samples into a mask (the DiffSeg paper's Table 1 rows), as (label,
    per-image stats of the whole split): each sample alone (the ``single_sample`` view: every sample of every
    image scored, mean ± population std over those image-sample pairs), their per-pixel mean at the threshold
    (``mean_of_samples``) and the fused result (``fused``). Summaries without ``mean_of_samples`` give []."""
    if "mean_of_samples" not in summary:
        return []
    n = len(summary.get("rounds") or []) or (summary.get("prediction_settings") or {}).get("samples", "?")
    views = [(f"each sample alone (S = {n} per image)", "single_sample"),
             (f"mean of the samples, >= {summary['threshold']}", "mean_of_samples"),
             (ensemble_name(summary), "fused")]
    return [(label, summary[view]["all"]) for label, view in views]

def outputs_protocol(summary: dict) -> str:
    return (f"split {summary['split']} of {summary['manifest']}, {summary['n_images']} images; threshold "
            f"{summary['threshold']} (prob >= threshold); per image at the original size, mean ± population std "
            f"over images (each sample alone: over image-sample pairs); samples: {samples_are(summary)}")

def format_outputs_markdown(summary: dict, metrics: tuple[str, ...] = OUTPUT_METRICS) -> str:
    """``output_rows`` as a Markdown table (Dice, Precision, Recall, IoU (Jaccard), in %) with its protocol;
    "" when the summary has no ``mean_of_samples``."""
    rows = output_rows(summary)
    if not rows:
        return ""
    lines = ["| | " + " | ".join(OUTPUT_COLUMNS[k] for k in metrics) + " |", "|---|" + "---:|" * len(metrics)]
    lines += [f"| {label} | " + " | ".join(percent_cell(stats[k]) for k in metrics) + " |" for label, stats in rows]
    return "\n".join([*lines, "", f"Protocol: {outputs_protocol(summary)}."])

def percent_cell(stats: dict) -> str:
    """``mean ± std`` of a per-image summary of a [0,1] metric, in %."""
    return f"{stats['mean'] * 100:.2f} ± {stats['std'] * 100:.2f}"

def calibration_line(summary: dict) -> str:
    """One line with both ECE figures and how they were computed (old summaries: the per-image figure only)."""
    c = summary.get("calibration")
    if c is None:
        u = summary["uncertainty"]["ece"]
        return f"calibration: ECE per image {u['mean']:.4f} ± {u['std']:.4f} (10 bins, coherence map)"
    e = c["ece_per_image"]
    return (f"calibration: ECE per image {e['mean']:.4f} ± {e['std']:.4f} over {e['n']} images (mean ± population "
            f"std), pooled {c['ece_pooled']:.4f} over all {c['n_pixels']} pixels ({c['n_bins']} bins, mean of "
            f"{c['n_samples']} samples)")

def format_table(summary: dict, keys: tuple[str, ...] = METRIC_NAMES) -> str:
    """The summary as a fixed-width text table, with its protocol line first.

    Rows: fused and single_sample over the split ("all"), per dataset (summaries with two or more datasets)
    and per label, mean_of_samples (summaries that have it) over the split and per label, then (summaries that have them) one row per sampling round over the split, the spread of
    the round means and the ensemble minus the best round, under the same columns.
    """
    lines = [summary["protocol"]]
    settings = summary.get("prediction_settings") or {}
    if settings:
        lines.append("predictions: " + ", ".join(f"{k} {v}" for k, v in settings.items() if k != "checkpoint"))
    datasets = summary.get("datasets") or {}
    datasets = datasets if len(datasets) > 1 else {}  # one dataset: its row would repeat "all"
    views = ("fused", "mean_of_samples", "single_sample") if "mean_of_samples" in summary else ("fused", "single_sample")
    one = settings.get("samples") == 1  # one sample: it is the fused mask, the other views would repeat it
    given = summary.get("source") == "masks"  # masks from another tool (evaluate_masks): no samples
    views = ("fused",) if one or given else views
    groups = {view: [(group, stats) for group, stats in summary[view].items()] for view in views}
    for view, key in (("fused", "fused"), ("single_sample", "samples")):
        if view not in groups:
            continue
        groups[view][1:1] = [(f"dataset {name}", d[key]) for name, d in datasets.items()]
    width = max([26, *(len(f"{view} / {g}") + 1 for view, rows in groups.items() for g, _ in rows)])
    header = f"{'view':<{width}}" + "".join(f"{k:>16}" for k in keys) + f"{'n':>6}"
    lines += [header, "-" * len(header)]

    def stats_line(name: str, stats: dict) -> str:
        cells = "".join(f"{stats[k]['mean']:>9.3f} ±{stats[k]['std']:>5.3f}" for k in keys)
        return f"{name:<{width}}{cells}{stats[keys[0]]['n'] + stats[keys[0]]['n_nan']:>6}"

    for view, rows in groups.items():
        lines += [stats_line(f"{view} / {group}", stats) for group, stats in rows]
    if one:
        lines.append("S = 1: the one sample is the fused mask (no mean-of-samples, single-sample or round rows)")
    if summary.get("rounds") and not one:
        lines.append("-" * len(header))
        lines += [stats_line(f"round {r['round']} / all", r["all"]) for r in summary["rounds"]]
        # the spread and the difference are single numbers: padded to the width of a "mean ± std" cell
        spread, gain = summary["rounds_spread"], summary["ensemble_minus_best_round"]
        lines.append(f"{'spread (max - min)':<{width}}"
                     + "".join(f"{spread[k]['range']:>9.3f}{'':7}" for k in keys).rstrip())
        lines.append(f"{'fused - best round':<{width}}" + "".join(f"{gain[k]:>+9.3f}{'':7}" for k in keys).rstrip())
        lines.append(f"rounds: round k = the k-th of the S = {len(summary['rounds'])} samples of every image "
                     f"({samples_are(summary)}); best round = highest mean (hd95: lowest)")
        lines.append(f"fused = the S samples fused by {ensemble_name(summary)} (prediction_settings fusion); "
                     "fused - best round > 0: the fusion beats every round (hd95: < 0)")
    if "mean_of_samples" in summary and not one:
        lines.append("mean_of_samples = the per-pixel mean of the S samples, binarised at the threshold")
    pooled = summary["pooled"]["fused"]
    lines.append(f"pooled over the split (fused): dice {pooled['pooled_dice']:.3f}, iou {pooled['pooled_iou']:.3f}")
    if given:
        lines.append("masks from another tool: no samples or probabilities, so no rounds, uncertainty or calibration")
        return "\n".join(lines + image_level_lines(summary) + trust_lines(summary))
    u = summary["uncertainty"]
    lines.append(f"uncertainty per image: GED {u['ged']['mean']:.3f} ±{u['ged']['std']:.3f} (d = 1 - IoU, "
                 "the S samples against the ground truth)")
    if "ged_diffseg" in u:
        lines.append(f"uncertainty per image: DiffSeg GED {u['ged_diffseg']['mean']:.3f} ±{u['ged_diffseg']['std']:.3f} "
                     "(Shuai et al. 2024, Eqs. 5-7: mean RMS pixel difference over all pairs of the S samples, no ground truth)")
    lines.append(calibration_line(summary))
    lines += image_level_lines(summary)
    lines += trust_lines(summary)
    return "\n".join(lines)

def trust_lines(summary: dict) -> list[str]:
    """The printed lines of failure detection, the pixel view and the accept / review marks (summaries that
    have them)."""
    lines = []
    fd = summary.get("failure_detection") or {}
    if fd.get("scores"):
        scores = ", ".join(f"{n} {v['aurc']:.4f} (e-AURC {v['eaurc']:.4f})" for n, v in fd["scores"].items())
        lines.append(f"which masks to trust (risk = 1 - fused Dice per image, {fd['n']} images; lower is better): "
                     f"AURC {scores}; optimal order {fd['optimal_aurc']:.4f}, random order {fd['random_aurc']:.4f}")
    px = summary.get("pixel_uncertainty")
    if px:
        lines.append(f"pixel uncertainty (entropy map vs the error map): UEO {px['ueo']:.3f} at tau {px['ueo_tau']} "
                     f"(per image, averaged), AUROC {px['auroc']:.4f} (pooled over pixels)")
    sel = summary.get("selective")
    if sel:
        dice = "none accepted" if sel["accepted_mean_dice"] is None else f"mean Dice {sel['accepted_mean_dice']:.4f}"
        met = {True: "met", False: "NOT met"}.get(sel["met"], "no target recorded" if sel.get("target_dice") is None
                                                 else "kept trivially (nothing accepted, every image to review)")
        lines.append(f"accept / review ({sel['score']}): {sel['accepted']} of {sel['images']} accepted "
                     f"({sel['coverage']:.1%}), {dice}; target {sel['target_dice']} at delta {sel['delta']}: {met}")
    return lines
