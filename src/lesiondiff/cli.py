"""The ``lesiondiff`` command line: data, train, compare, ablate, cv, predict, evaluate, report, analyze, demo, bench,
presets.

Errors meant for the user (bad files, unknown keys, missing checkpoints) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from .errors import LesiondiffError


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.steps=500 data.size=64 (values parsed as YAML)")


def _add_run_options(p: argparse.ArgumentParser, unit: str) -> None:
    """The training and sampling settings every ``unit`` (run, fold) of an experiment shares."""
    p.add_argument("--size", type=int, default=128, help=f"network input size for every {unit}")
    p.add_argument("--seed", type=int, default=0, help=f"training and sampling seed for every {unit}")
    p.add_argument("--samples", type=int, default=None, help="S per image (default: the preset's)")
    p.add_argument("--sampler", default=None, help="diffusion runs (default: the preset's); feed-forward: oneshot")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    p.add_argument("--max-steps", type=int, default=1_000_000, help=f"step cap per {unit} (the budget usually ends it)")
    p.add_argument("--device", default=None)
    _add_recipe(p)


def _add_recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="training recipe laid over the preset: fast (default: warm-up, "
                   "cosine, AdamW 3e-4, flips) or paper (each paper's own optimiser settings)")


def _has_default(action: argparse.Action) -> bool:
    """A default worth showing: not None, False, empty or suppressed (0 and 0.0 are shown)."""
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (list, str)) and not d))


class _DefaultsFormatter(argparse.HelpFormatter):
    """--help shows each option's default, unless it is empty or the help text already speaks of it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (_has_default(action) and "default" not in text
                and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            text += " (default: %(default)s)"
        return text


def _show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and every sub-command's parser the defaults-showing help formatter."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings and _has_default(action):
            action.help = "default: %(default)s"  # an option without help text still shows its default
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesiondiff", description="Diffusion-model segmentation of lesions in 2D medical images.",
        epilog="Run 'lesiondiff COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="index a dataset folder, score image difficulty or generate phantoms")
    data = data.add_subparsers(dest="data_command", required=True)
    idx = data.add_parser("index", help="recognise a folder's layout and write a manifest with splits",
                          description="Index one dataset folder, or several into one unified manifest (one model "
                                      "over many datasets, UniSegDiff): then each folder's rows carry its dataset "
                                      "name, ids and cases are prefixed '<dataset>_', and the splits and folds are "
                                      "stratified by dataset and label, so every dataset has its share of each.")
    idx.add_argument("path", nargs="+", help="dataset folder(s)")
    idx.add_argument("-o", "--output", required=True, help="manifest CSV to write")
    idx.add_argument("--overwrite", action="store_true", help="replace --output when it exists")
    idx.add_argument("--layout", default=None, help="force a layout instead of detecting it (for every folder)")
    idx.add_argument("--ratios", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                     help="split ratios (default: 0.7 0.15 0.15; 0.7 0.1 0.2 when the rows are slices of 3D "
                          "volumes, PGDiffSeg's DCE-MRI split; always by patient/case)")
    idx.add_argument("--slices-dir", default=None, metavar="DIR",
                     help="folder for the 2D slice PNGs cut from 3D volumes (NIfTI, DICOM series) "
                          "(default: <manifest stem>_slices/ beside the manifest)")
    idx.add_argument("--slices", choices=["all", "lesion"], default="all",
                     help="slices of 3D volumes to keep: all (empty ones are negatives) or lesion (with foreground)")
    idx.add_argument("--seed", type=int, default=0)
    idx.add_argument("--folds", type=int, default=0, help="also assign k folds to the non-test rows")
    idx.add_argument("--skip-bad", action="store_true",
                     help="skip unreadable or mismatched pairs (counted and listed) instead of stopping")
    idx.add_argument("--no-check", action="store_true", help="do not decode every image and mask while indexing")
    idx.add_argument("--train-only", nargs="+", default=[], metavar="LABEL",
                     help="put every row with one of these labels in train, never val/test (PalScDiff: normal); "
                          "the other rows keep their split")
    dif = data.add_parser("difficulty", help="score each image's difficulty and group it (PalScDiff curriculum)",
                          description="Add difficulty_* columns to a manifest: area, boundary contrast, shape "
                                      "complexity, boundary/area and rater disagreement, their combined rank score "
                                      "and a curriculum group (0 easy pool, 1-3 hard groups of rising difficulty).")
    dif.add_argument("--manifest", required=True)
    dif.add_argument("--out", default=None, help="manifest to write (default: rewrite --manifest in place)")
    dif.add_argument("--split", default="train", choices=["train", "val", "test", "all"],
                     help="rows to score (all: every row)")
    dif.add_argument("--size", type=int, default=256, help="working resolution in px")
    dif.add_argument("--band", type=int, default=4, help="width in px at --size of the bands for boundary contrast")
    dif.add_argument("--easy-fraction", type=float, default=0.5, help="share of lesion rows in the easy pool")
    dif.add_argument("--weights", nargs="+", default=[], metavar="NAME=W",
                     help="score weights, e.g. disagreement=0 where extra mask files are further lesions, "
                          "not raters; unnamed scores keep their default (boundary_ratio 0, the others 1)")
    syn = data.add_parser("synth", help="generate the synthetic ultrasound phantom set (generic layout)")
    syn.add_argument("--n", type=int, default=200)
    syn.add_argument("--out", required=True)
    syn.add_argument("--size", type=int, default=128)
    syn.add_argument("--seed", type=int, default=0)

    tr = sub.add_parser("train", help="train a preset on a manifest")
    tr.add_argument("--preset", default=None, help="ensemdiff, unet, ... (see: lesiondiff presets)")
    tr.add_argument("--config", default=None, help="a YAML config file instead of a preset")
    tr.add_argument("--manifest", default=None)
    tr.add_argument("--out", required=True, help="run directory")
    tr.add_argument("--mode", choices=["diffusion", "feedforward"], default=None,
                    help="feedforward: train the architecture with random noise as x_t and Dice + BCE")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--device", default=None, help="cpu or cuda (default: cuda, then mps, then cpu)")
    _add_recipe(tr)
    _add_overrides(tr)

    cp = sub.add_parser("compare", help="feed-forward vs diffusion training of presets on one budget (Table 1 form)",
                        description="Train, predict and evaluate every preset x mode on the same manifest, split, "
                                    "size, seed and time budget; write compare.csv, compare.md and compare.png. "
                                    "Rerunning the same command skips finished work and resumes interrupted runs.")
    cp.add_argument("--presets", required=True, help="comma-separated, e.g. ensemdiff,segdiff,medsegdiff,unet")
    cp.add_argument("--modes", default="diffusion,feedforward", help="comma-separated: diffusion,feedforward")
    cp.add_argument("--manifest", required=True)
    cp.add_argument("--budget-minutes", type=float, required=True, help="training wall-clock budget per run")
    cp.add_argument("--out", required=True, help="comparison folder (one subfolder per preset-mode)")
    cp.add_argument("--size", type=int, default=128, help="network input size for every run")
    cp.add_argument("--seed", type=int, default=0, help="training and sampling seed for every run")
    cp.add_argument("--samples", type=int, default=5, help="S predictions per image, in both modes")
    cp.add_argument("--sampler", default=None, help="diffusion runs (default: each preset's); feed-forward: oneshot")
    cp.add_argument("--steps", type=int, default=None, help="diffusion sampling steps (default: each preset's)")
    cp.add_argument("--split", default="test")
    cp.add_argument("--max-steps", type=int, default=1_000_000, help="step cap per run (the budget usually ends it)")
    cp.add_argument("--figure-images", type=int, default=3, help="images in compare.png (0: no figure)")
    cp.add_argument("--device", default=None)
    _add_recipe(cp)
    _add_overrides(cp)

    ab = sub.add_parser("ablate", help="train a preset's ablation arms on one budget (PalScDiff Table 2 form)",
                        description="Train, predict and evaluate each arm of a preset's ablation (and optional "
                                    "reference presets) on the same manifest, split, size, seed, time budget and "
                                    "sampling; write ablation.csv and ablation.md. Rerunning the same command skips "
                                    "finished work and resumes interrupted runs.")
    ab.add_argument("--preset", required=True, help="a preset with an ablation definition, e.g. palscdiff")
    ab.add_argument("--manifest", required=True)
    ab.add_argument("--budget-minutes", type=float, required=True, help="training wall-clock budget per run")
    ab.add_argument("--out", required=True, help="ablation folder (one subfolder per run)")
    ab.add_argument("--baselines", default="", help="comma-separated reference presets, e.g. ensemdiff,unet")
    ab.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    ab.add_argument("--split", default="test")
    _add_run_options(ab, "run")
    _add_overrides(ab)

    cv = sub.add_parser("cv", help="k-fold cross-validation of a preset, per dataset (UniSegDiff Table 3 form)",
                        description="For each fold k of the manifest: train the preset on the other folds' rows "
                                    "(data.fold=k), predict and evaluate fold k; then write cv.json and cv.md with "
                                    "mDice and mIoU per fold, per dataset and overall, and their mean ± std over "
                                    "folds. The test split is held out. Rerunning the same command skips finished "
                                    "work and resumes interrupted runs.")
    cv.add_argument("--preset", required=True, help="ensemdiff, unet, ... (see: lesiondiff presets)")
    cv.add_argument("--manifest", required=True, help="a manifest with folds (lesiondiff data index ... --folds K)")
    cv.add_argument("--folds", type=int, default=None, metavar="K",
                    help="run folds 0..K-1 (default: every fold of the manifest)")
    cv.add_argument("--budget-minutes", type=float, required=True, help="training wall-clock budget per fold")
    cv.add_argument("--out", required=True, help="cross-validation folder (one subfolder per fold)")
    _add_run_options(cv, "fold")
    _add_overrides(cv)

    pr = sub.add_parser("predict", help="sample, fuse and write masks with uncertainty maps")
    pr.add_argument("--run", required=True)
    pr.add_argument("inputs", nargs="*", metavar="INPUT_OR_OVERRIDE",
                    help="image files or folders, and config overrides section.key=value as for train (e.g. "
                         "sample.steps=10 sample.start=prior)")
    pr.add_argument("--manifest", default=None)
    pr.add_argument("--split", default=None, help="train, val, test or fold:K (a fold's rows; default: every row)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--samples", type=int, default=None)
    pr.add_argument("--sampler", default=None, help="ddpm, ddim, dpmsolver, dpmsolver++, unipc, oneshot, staged (unisegdiff), class_difference (diffseg-weak)")
    pr.add_argument("--steps", type=int, default=None)
    pr.add_argument("--fusion", default=None, help="mean, majority, staple, densecrf (mean + DenseCRF) or crf_rounds (DiffSeg)")
    pr.add_argument("--crf", action="store_true", help="refine the fused probability with DenseCRF")
    pr.add_argument("--threshold", type=float, default=None)
    pr.add_argument("--prediction", choices=["epsilon", "x0"], default=None,
                    help="the head the sampler steps with, for designs that predict both (palscdiff; default: the run's)")
    pr.add_argument("--seed", type=int, default=None)
    pr.add_argument("--checkpoint", default="best", help="best or last")
    pr.add_argument("--device", default=None)
    pr.add_argument("--set", action="append", default=[], metavar="section.key=value",
                    help="a config override, the same as a positional section.key=value; repeatable")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace predictions in --out made by another run or with other settings (without it such "
                         "a folder is refused; one made with the same settings is resumed)")
    pr.add_argument("--no-postprocess", action="store_true",
                    help="ignore the run's postprocess.json (the lesion / no-lesion rule)")

    pp = sub.add_parser("postprocess", help="choose the run's lesion / no-lesion post-processing on the validation "
                                            "split (largest component, minimum area or probability)",
                        description="Predict the split with the run's sampling settings (or read --pred), score "
                                    "every rule of the grid by mean per-image Dice over all the split's images "
                                    "and write the best to RUN/postprocess.json; predict applies it from then on.")
    pp.add_argument("--run", required=True)
    pp.add_argument("--manifest", required=True)
    pp.add_argument("--split", default="val", help="the split to choose on (never the test split)")
    pp.add_argument("--pred", default=None, help="existing predictions of that split (made without the rule)")
    pp.add_argument("--device", default=None)
    _add_overrides(pp)

    ev = sub.add_parser("evaluate", help="score predictions, or any folder of masks, against a manifest split")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", help="a lesiondiff predict folder")
    source.add_argument("--masks", metavar="DIR",
                        help="a folder of mask files from any tool, matched to the manifest's ids by file name "
                             "(case1.png, case1_mask.png, case1_seg.nii.gz, ...)")
    ev.add_argument("--threshold", type=float, default=None,
                    help="--masks: read grey values as probabilities (value / maximum >= threshold) instead of "
                         "as labels (> 0, 8-bit grey > 127)")
    ev.add_argument("--missing", choices=["error", "empty"], default="error",
                    help="--masks: split images without a mask file stop the evaluation (error) or count as "
                         "empty predictions (empty)")
    ev.add_argument("--manifest", required=True)
    ev.add_argument("--split", default=None, help="train, val, test or fold:K (the rows of fold K); default: the "
                    "split predict was given (predict.json), else test")
    ev.add_argument("--out", default=None, help="where metrics.csv and summary.json go (default: --pred)")

    rp = sub.add_parser("report", help="write report.html from a run, its predictions and their evaluation")
    rp.add_argument("--run", default=None)
    rp.add_argument("--pred", default=None)
    rp.add_argument("--evaluation", default=None,
                    help="folder with the evaluation's summary.json (default: --pred, where evaluate writes it)")
    rp.add_argument("--manifest", default=None)
    rp.add_argument("--split", default="test")
    rp.add_argument("--out", required=True)

    de = sub.add_parser("demo", help="phantoms -> train -> predict -> evaluate -> report, on the CPU in minutes")
    de.add_argument("--out", default="lesiondiff-demo")
    de.add_argument("--preset", default="ensemdiff")
    de.add_argument("--n", type=int, default=200, help="phantom images")
    de.add_argument("--minutes", type=float, default=3.5, help="training budget")
    de.add_argument("--size", type=int, default=64, help="network input size")
    de.add_argument("--device", default=None)
    _add_recipe(de)
    _add_overrides(de)

    be = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    sp = be.add_parser("speed", help="training and sampling speed on this device")
    sp.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    sp.add_argument("--samples", type=int, default=10)
    sp.add_argument("--batch", type=int, default=8)
    sp.add_argument("--preset", default="ensemdiff")
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--no-monai", action="store_true", help="skip MONAI's DiffusionModelUNet reference")
    sp.add_argument("--device", default=None)
    sp.add_argument("--json", default=None, help="also write the results as JSON")

    an = sub.add_parser("analyze", help="analyses of runs and data sets").add_subparsers(
        dest="analyze_command", required=True)
    fp = an.add_parser("fingerprint", help="timestep fingerprints: mask recoverability per data set; mask error, "
                       "loss and gradient norm per timestep per run")
    fp.add_argument("--manifest", action="append", default=[],
                    help="a manifest to fingerprint (repeatable); runs are analysed on the first one's split")
    fp.add_argument("--name", action="append", default=[], help="display name per --manifest (default: its dataset "
                    "column or file stem)")
    fp.add_argument("--run", action="append", default=[], help="a run directory for model curves (repeatable)")
    fp.add_argument("--split", default="test")
    fp.add_argument("--size", type=int, default=128, help="px for the data-set fingerprint (runs use their own size)")
    fp.add_argument("--every", type=int, default=10, help="analyse t = 0, every, 2 every, ... < T")
    fp.add_argument("--max-images", type=int, default=None, help="use N rows evenly spaced over the split")
    fp.add_argument("--sigma", type=float, default=2.0, help="Gaussian smoothing of x_t in px at --size")
    fp.add_argument("--window", type=float, default=50, help="moving average of the slope, in timesteps")
    fp.add_argument("--seed", type=int, default=0)
    fp.add_argument("--batch-size", type=int, default=8)
    fp.add_argument("--grad-batches", type=int, default=2, help="batches averaged for the gradient norm")
    fp.add_argument("--device", default=None)
    fp.add_argument("--checkpoint", default="best", help="best or last")
    fp.add_argument("--out", required=True)
    sw = an.add_parser("samplers", help="Dice against the number of network evaluations (NFE) per sampler, each "
                       "setting repeated with other noise (PGDiffSeg Figs. 10-11)")
    sw.add_argument("--run", required=True, help="a trained run directory")
    sw.add_argument("--manifest", default=None, help="manifest to score on (default: the run's own)")
    sw.add_argument("--split", default="test")
    sw.add_argument("--samplers", default="ddpm,ddim,dpmsolver,dpmsolver++,unipc", help="comma-separated samplers")
    sw.add_argument("--nfe", default="5,10,20,50,100", help="comma-separated numbers of steps (= NFE)")
    sw.add_argument("--reference-nfe", type=int, default=1000,
                    help="steps of the DDPM reference (the horizontal line); 0: no reference")
    sw.add_argument("--repeats", type=int, default=5, help="samples per image and setting, drawn in one batch")
    sw.add_argument("--max-images", type=int, default=None, help="use N rows evenly spaced over the split")
    sw.add_argument("--tolerance", type=float, default=1.0,
                    help="Dice percentage points below the reference that still count as reaching it")
    sw.add_argument("--checkpoint", default="best", help="best or last")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--device", default=None)
    sw.add_argument("--out", required=True, help="output folder; a rerun skips the settings it already holds")

    gc = an.add_parser("gradcam", help="Grad-CAM of chosen layers at chosen steps of one sampling trajectory "
                       "(PGDiffSeg Figs. 6-8, 13)")
    gc.add_argument("--run", required=True, help="a trained (diffusion) run directory")
    gc.add_argument("--image", default=None, help="the image file to explain")
    gc.add_argument("--manifest", default=None, help="or: a manifest, with --id")
    gc.add_argument("--id", default=None, help="the manifest row to explain")
    gc.add_argument("--layers", default=None, help="comma-separated module names (grid rows, as in "
                    "model.named_modules(); --list-layers shows them); default: the model's cam_layers")
    gc.add_argument("--psa-pairs", default=None, metavar="BEFORE:AFTER,...",
                    help="layer pairs for psa.png (default: the model's; none: no psa.png)")
    gc.add_argument("--prior-layer", default=None, help="layer for prior.png (default: the model's; none: no prior.png)")
    gc.add_argument("--prior-target", default=None, help="aux output key of the prior view's [B,1] logit")
    gc.add_argument("--steps", type=int, default=20, help="sampling steps (= NFE) of the trajectory")
    gc.add_argument("--cam-steps", type=int, default=6, help="Grad-CAM at K steps evenly spaced from t near T to 0")
    gc.add_argument("--cam-timesteps", default=None, metavar="T,...",
                    help="or: these timesteps, each taken at the nearest step of the trajectory")
    gc.add_argument("--sampler", default="ddim", help="ddim, ddpm, dpmsolver, dpmsolver++ or unipc")
    gc.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's, as predict)")
    gc.add_argument("--threshold", type=float, default=None, help="final region R: probability >= this")
    gc.add_argument("--checkpoint", default="best", help="best or last")
    gc.add_argument("--device", default=None)
    gc.add_argument("--list-layers", action="store_true", help="print every module's name and output, then stop")
    gc.add_argument("--out", default=None, help="output folder (required unless --list-layers)")

    sub.add_parser("presets", help="list presets")
    return _show_defaults(parser)


def _config(args) -> Config:  # noqa: F821
    from .config import Config, load_preset

    if args.config:
        cfg = Config.load(args.config)
    else:
        cfg = load_preset(args.preset or "ensemdiff", getattr(args, "recipe", None))
    extra = list(args.overrides)
    if getattr(args, "manifest", None):
        extra.insert(0, f"data.manifest={args.manifest}")
    if getattr(args, "mode", None):
        extra.insert(0, f"diffusion.mode={args.mode}")
        if args.mode == "feedforward":
            extra[1:1] = ["sample.sampler=oneshot", "sample.samples=1"]
    return cfg.override(extra)


def _cmd_difficulty(args) -> int:
    from .data.difficulty import DEFAULT_WEIGHTS, format_summary, score_manifest
    from .data.manifest import Manifest

    weights = dict(DEFAULT_WEIGHTS)
    for item in args.weights:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise LesiondiffError(f"--weights takes NAME=NUMBER, got {item!r}") from None
    manifest = Manifest.read(args.manifest)
    split = None if args.split == "all" else args.split
    if not manifest.rows(split=split):
        raise LesiondiffError(f"{args.manifest}: no rows in split {args.split!r}")
    scored, summary = score_manifest(manifest, split=split, size=args.size, band=args.band,
                                     easy_fraction=args.easy_fraction, weights=weights)
    out = Path(args.out or args.manifest)
    scored.write(out)
    print(format_summary(summary))
    print(f"wrote {out}")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "difficulty":
        return _cmd_difficulty(args)
    if args.data_command == "synth":
        from .data.synthetic import generate

        out = generate(Path(args.out), n=args.n, size=args.size, seed=args.seed)
        print(f"wrote {args.n} phantom images ({args.size} px, seed {args.seed}) to {out} (generic layout)")
        return 0
    from .data.layouts import check_records, index_folder
    from .data.manifest import Manifest, assign_splits, merge_indexes, summarize
    from .data.volumes import is_slice_record, split_ratios

    output = Path(args.output)
    slices_dir = Path(args.slices_dir) if args.slices_dir else output.with_name(f"{output.stem}_slices")
    several = len(args.path) > 1
    results = [index_folder(Path(path), args.layout, slices=args.slices,
                            slices_dir=slices_dir / f"{k}-{Path(path).resolve().name}" if several else slices_dir,
                            on_error="skip" if args.skip_bad else "raise", progress=True)
               for k, path in enumerate(args.path)]
    result = merge_indexes(results) if several else results[0]
    names = list(dict.fromkeys(r.dataset for r in result.records))  # merged records keep the folders' order
    if several:
        for part, name in zip(results, names):
            print(f"dataset {name}: {len(part.records)} records, layout {part.layout}, from {part.root}")
    if not args.no_check:
        good, bad = check_records(result.records, on_error="skip" if args.skip_bad else "raise")
        result.records = good
        result.skipped.extend(bad)
    ratios = tuple(args.ratios) if args.ratios else split_ratios(result.records, (0.7, 0.15, 0.15))
    rows = assign_splits(result.records, ratios=ratios, seed=args.seed, k_folds=args.folds,
                         train_only_labels=args.train_only)
    manifest = Manifest.from_records(rows) if not isinstance(rows, Manifest) else rows
    manifest.write(output)
    print(summarize(manifest if not result.skipped else result))
    train_only = f"; label(s) {', '.join(args.train_only)} in train only" if args.train_only else ""
    volumes = {r.extra["volume"] for r in result.records if is_slice_record(r)}
    if volumes:
        print(f"slices: {sum(map(is_slice_record, result.records))} from {len(volumes)} volumes in {slices_dir}")
    strata = "dataset and label" if several else "label"
    print(f"split: seed {args.seed}, ratios {'/'.join(str(r) for r in ratios)}, stratified by {strata}, "
          f"grouped by case{f', {args.folds} folds' if args.folds else ''}{train_only}")
    if several:
        print(f"ids and cases: '<dataset>_<id>' for the {len(results)} datasets ({', '.join(names)})")
    print(f"wrote {args.output}")
    return 0


def cmd_train(args) -> int:
    from .config import Config
    from .engine.train import train_run

    if args.resume:
        cfg_path = Path(args.out) / "config.yaml"
        cfg = Config.load(cfg_path).override(list(args.overrides))
    else:
        if not (args.manifest or args.config):
            raise LesiondiffError("train needs --manifest (or a --config that names data.manifest)")
        cfg = _config(args)
    summary = train_run(cfg, args.out, device=args.device, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # several processes (accelerate launch): the main one reports
        print(json.dumps(summary, indent=2))
    return 130 if summary["status"] == "interrupted" else 0


def _names(text: str | None) -> list[str]:
    """A comma-separated option as a list, blanks dropped: "a, b," -> ["a", "b"]."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _ints(text: str | None, option: str, example: str) -> list[int]:
    """A comma-separated option of integers; anything else is a one-line error naming the option."""
    try:
        return [int(p) for p in _names(text)]
    except ValueError:
        raise LesiondiffError(f"{option} {text!r}: expected comma-separated integers, e.g. {example}") from None


def _experiment(run, settings, wrote: str) -> int:
    """Run a multi-run experiment (compare, ablate, cv): print its table, then ``wrote``; 130 if interrupted."""
    result = run(settings)
    print(result["text"])
    if result["status"] == "interrupted":
        return 130
    print(wrote)
    return 0


def cmd_compare(args) -> int:
    from .engine.compare import CompareSettings, compare

    settings = CompareSettings(
        presets=_names(args.presets), modes=_names(args.modes), manifest=args.manifest,
        budget_minutes=args.budget_minutes, out=args.out, size=args.size, seed=args.seed, samples=args.samples,
        sampler=args.sampler, steps=args.steps, split=args.split, max_steps=args.max_steps,
        figure_images=args.figure_images, device=args.device, overrides=list(args.overrides), recipe=args.recipe)
    return _experiment(compare, settings, f"wrote {Path(args.out) / 'compare.csv'}, compare.md and compare.png; "
                                          "progress in compare.json")


def cmd_ablate(args) -> int:
    from .engine.ablate import AblateSettings, ablate

    settings = AblateSettings(
        preset=args.preset, manifest=args.manifest, budget_minutes=args.budget_minutes, out=args.out,
        baselines=_names(args.baselines), arms=_names(args.arms) if args.arms else None, size=args.size,
        seed=args.seed, samples=args.samples, sampler=args.sampler, steps=args.steps, split=args.split,
        max_steps=args.max_steps, device=args.device, overrides=list(args.overrides), recipe=args.recipe)
    return _experiment(ablate, settings, f"wrote {Path(args.out) / 'ablation.csv'} and ablation.md; progress in "
                                         "ablation.json")


def cmd_cv(args) -> int:
    from .engine.crossval import CVSettings, crossval

    settings = CVSettings(
        preset=args.preset, manifest=args.manifest, budget_minutes=args.budget_minutes, out=args.out,
        folds=args.folds, size=args.size, seed=args.seed, samples=args.samples, sampler=args.sampler,
        steps=args.steps, max_steps=args.max_steps, device=args.device, overrides=list(args.overrides),
        recipe=args.recipe)
    return _experiment(crossval, settings, f"wrote {Path(args.out) / 'cv.md'} and cv.json (per-fold figures, the "
                                           "aggregate and progress)")


OVERRIDE = re.compile(r"^[a-z_]+\.[a-z_.]+=")


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments as (section.key=value overrides, inputs): an existing file or folder is an input even
    when its name looks like an override."""
    overrides = [i for i in items if OVERRIDE.match(i) and not Path(i).exists()]
    return overrides, [i for i in items if i not in overrides]


def cmd_predict(args) -> int:
    from .engine.predict import Predictor, collect_inputs

    overrides = [f"{k}={v}" for k, v in (("sample.samples", args.samples), ("sample.sampler", args.sampler),
                                          ("sample.steps", args.steps), ("fusion.method", args.fusion),
                                          ("sample.threshold", args.threshold), ("sample.seed", args.seed),
                                          ("diffusion.prediction", args.prediction))
                 if v is not None]
    if args.crf:
        overrides.append("fusion.crf=true")
    given, args.inputs = _split_overrides(args.inputs)
    overrides += [*given, *args.set]
    if (args.manifest is None) != (args.split is None) and args.manifest is None:
        raise LesiondiffError("--split needs --manifest")
    predictor = Predictor.from_run(args.run, args.checkpoint, args.device, overrides,
                                   postprocess=not args.no_postprocess)
    for note in predictor.notes({"--sampler": args.sampler, "--steps": args.steps, "--prediction": args.prediction,
                                 "--fusion": args.fusion}):
        print(note)
    items = collect_inputs(args.inputs, args.manifest, args.split)
    rows = predictor.run(items, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite,
                         split=args.split if args.manifest else None)
    print(f"wrote {len(rows)} predictions to {args.out} (masks, probabilities, uncertainty maps, overlays)")
    return 0


def cmd_postprocess(args) -> int:
    from .engine.postprocessing import choose_for_run, format_scores

    if args.split == "test":
        raise LesiondiffError("choose the post-processing on the validation split, not on test")
    rule, scores = choose_for_run(args.run, args.manifest, args.split, args.pred, args.device, list(args.overrides))
    print(format_scores(scores))
    print(f"chosen on split {args.split}: {rule.describe()}; wrote {Path(args.run) / 'postprocess.json'}")
    return 0


def cmd_evaluate(args) -> int:
    from .engine.evaluate import evaluate, format_table

    if args.masks:
        from .engine.evaluate_masks import OUT_NAME, evaluate_masks

        summary = evaluate_masks(args.masks, args.manifest, args.split or "test", args.out, args.threshold,
                                 args.missing)
        print(format_table(summary))
        print(f"wrote {Path(args.out or Path(args.masks) / OUT_NAME) / 'metrics.csv'} and summary.json")
        return 0
    if args.threshold is not None or args.missing != "error":
        raise LesiondiffError("--threshold and --missing apply to --masks; predictions carry their own threshold")
    split = args.split
    if split is None:
        meta = Path(args.pred) / "predict.json"
        recorded = json.loads(meta.read_text(encoding="utf-8")).get("split") if meta.is_file() else None
        split = recorded or "test"
        print(f"split: {split} ({'the split predict was given' if recorded else 'the default'}; --split to choose)")
    summary = evaluate(args.pred, args.manifest, split, args.out)
    print(format_table(summary))
    print(f"wrote {Path(args.out or args.pred) / 'metrics.csv'}, summary.json, rounds.md and reliability.png")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    summary = None
    folder = Path(args.evaluation) if args.evaluation else Path(args.pred) if args.pred else None
    if folder is not None and (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    elif args.evaluation:
        raise LesiondiffError(f"{folder / 'summary.json'}: not found; run lesiondiff evaluate --pred "
                              f"{args.pred or 'PRED_DIR'} --manifest {args.manifest or 'MANIFEST'} --split {args.split} "
                              f"--out {folder} first")
    path = write_report(args.out, run=args.run, pred_dir=args.pred, summary=summary, manifest=args.manifest,
                        split=args.split)
    print(f"wrote {path}")
    return 0


# The demo trains for minutes, not hours, so it uses a small network (1.0 M parameters) and the x0
# parameterisation with Dice + BCE + MSE (objective x0_hybrid): an eps-MSE model of the same size reaches
# validation Dice ~0.27 in three CPU minutes on the phantoms, the x0 model ~0.7. Every key can be overridden.
DEMO_OVERRIDES = [
    "model.base_channels=16", "model.channel_mult=[1,2,4,8]", "diffusion.prediction=x0",
    "diffusion.objective=x0_hybrid", "train.steps=100000", "train.batch_size=16", "train.lr=1e-3",
    "train.val_every=100", "data.val_max_images=16",
]


def cmd_demo(args) -> int:
    from .config import load_preset
    from .data.layouts import index_folder
    from .data.manifest import Manifest, assign_splits
    from .data.synthetic import generate
    from .engine.evaluate import evaluate, format_table
    from .engine.predict import Predictor, collect_inputs
    from .engine.train import train_run
    from .report import write_report

    out = Path(args.out)
    t0 = time.perf_counter()
    data_dir = out / "phantoms"
    print(f"[1/5] generating {args.n} phantom ultrasound images in {data_dir}")
    generate(data_dir, n=args.n, size=128, seed=0)
    manifest_path = out / "manifest.csv"
    Manifest.from_records(assign_splits(index_folder(data_dir).records, seed=0)).write(manifest_path)
    run = out / "run"
    cfg = load_preset(args.preset, args.recipe).override([*DEMO_OVERRIDES, f"data.manifest={manifest_path}", f"data.size={args.size}",
                                             f"train.max_minutes={args.minutes}", *args.overrides])
    print(f"[2/5] training {args.preset} ({cfg.model.base_channels}-channel base, {cfg.diffusion.prediction} "
          f"prediction, objective {cfg.diffusion.objective}) at {args.size} px for up to {args.minutes} min")
    resume = (run / "checkpoints" / "last.safetensors").is_file()
    summary = train_run(cfg, run, device=args.device, resume=resume)
    if summary["status"] == "interrupted":
        print(summary["message"])
        return 130
    print(f"[3/5] sampling the test split: {cfg.sample.samples} samples per image, {cfg.sample.sampler} "
          f"{cfg.sample.steps} steps, {cfg.fusion.method} fusion")
    predictor = Predictor.from_run(run, "best", args.device)
    pred_dir = out / "predictions"
    predictor.run(collect_inputs([], str(manifest_path), "test"), pred_dir, checkpoint="best", overwrite=True)
    print("[4/5] evaluating")
    result = evaluate(pred_dir, manifest_path, "test")
    print(format_table(result))
    print("[5/5] writing the report")
    path = write_report(out, run=run, pred_dir=pred_dir, summary=result, manifest=manifest_path, split="test",
                        title="lesiondiff demo: synthetic ultrasound phantoms")
    print(f"done in {time.perf_counter() - t0:.0f} s: fused Dice {result['fused']['all']['dice']['mean']:.3f} on "
          f"{result['n_images']} test phantoms; open {path}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_speed

    run_speed(sizes=args.sizes, samples=args.samples, batch=args.batch, preset=args.preset, repeats=args.repeats,
              monai=not args.no_monai, device=args.device, json_path=args.json)
    return 0


def _cmd_analyze_samplers(args) -> int:
    from .analysis.sampler_sweep import OUTPUTS, format_table, sweep_samplers

    nfe = _ints(args.nfe, "--nfe", "5,10,20")
    summary = sweep_samplers(
        args.run, args.out, manifest=args.manifest, split=args.split, samplers=_names(args.samplers), nfe=nfe,
        reference_nfe=args.reference_nfe, repeats=args.repeats, max_images=args.max_images,
        checkpoint=args.checkpoint, seed=args.seed, device=args.device, tolerance=args.tolerance)
    print(format_table(summary))
    print(f"sampled {summary['sampled_settings']} settings (the others were in {args.out} already); wrote "
          f"{', '.join(OUTPUTS)} to {args.out}")
    return 0


def cmd_analyze(args) -> int:
    if args.analyze_command == "samplers":
        return _cmd_analyze_samplers(args)
    if args.analyze_command == "gradcam":
        from .analysis.gradcam import format_table as gradcam_table
        from .analysis.gradcam import write_gradcam

        cam_timesteps = _ints(args.cam_timesteps, "--cam-timesteps", "999,500,0") or None
        summary = write_gradcam(
            args.out, args.run, image=args.image, manifest=args.manifest, id_=args.id, layers=args.layers,
            psa_pairs=args.psa_pairs, prior_layer=args.prior_layer, prior_target=args.prior_target, steps=args.steps,
            cam_steps=args.cam_steps, cam_timesteps=cam_timesteps, sampler=args.sampler, seed=args.seed,
            threshold=args.threshold, checkpoint=args.checkpoint, device=args.device, list_layers=args.list_layers)
        if args.list_layers:
            print(summary["layers"])
            return 0
        print(gradcam_table(summary), end="")
        print(f"wrote {', '.join(summary['files'])} to {args.out}")
        return 0
    from .analysis.fingerprint import format_table, write_fingerprint

    summary = write_fingerprint(
        args.out, manifests=args.manifest, runs=args.run, names=args.name or None, split=args.split, size=args.size,
        every=args.every, max_images=args.max_images, sigma=args.sigma, seed=args.seed, window=args.window,
        device=args.device, checkpoint=args.checkpoint, batch_size=args.batch_size, grad_batches=args.grad_batches)
    print(format_table(summary))
    print(f"wrote {', '.join(Path(f).name for f in summary['files'])} to {args.out}")
    return 0


def cmd_presets(args) -> int:
    from .config import load_preset, preset_names

    for name in preset_names():
        cfg = load_preset(name)
        print(f"{name:<12} model {cfg.model.name}, {cfg.diffusion.mode}, objective "
              f"{'feedforward' if cfg.diffusion.mode == 'feedforward' else cfg.diffusion.objective}, "
              f"sampler {cfg.sample.sampler}")
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "compare": cmd_compare, "ablate": cmd_ablate, "cv": cmd_cv,
            "predict": cmd_predict, "postprocess": cmd_postprocess, "evaluate": cmd_evaluate, "report": cmd_report, "demo": cmd_demo,
            "bench": cmd_bench, "analyze": cmd_analyze, "presets": cmd_presets}


# Numeric options checked before any command runs: attribute -> (option, lowest, highest, lowest excluded,
# highest excluded); None: unbounded on that side. Each gives a one-line error naming the option.
ARG_RANGES = {
    "samples": ("--samples", 1, None, False, False),
    "steps": ("--steps", 1, None, False, False),
    "max_steps": ("--max-steps", 1, None, False, False),
    "size": ("--size", 8, None, False, False),
    "threshold": ("--threshold", 0, 1, True, True),
    "budget_minutes": ("--budget-minutes", 0, None, True, False),
    "n": ("--n", 1, None, False, False),
    "folds": ("--folds", 0, None, False, False),
    "figure_images": ("--figure-images", 0, None, False, False),
    "easy_fraction": ("--easy-fraction", 0, 1, True, True),
    "band": ("--band", 1, None, False, False),
}


def _check_args(args) -> None:
    """The numeric options within range, the sampler and fusion names known and the outputs writable (a folder
    where a folder is meant, a file where a file is), before anything loads."""
    from .config import out_of_range
    from .io_utils import check_output_dir, check_output_file

    if getattr(args, "output", None) is not None:  # data index
        check_output_file(args.output, "--output", overwrite=args.overwrite)
    if getattr(args, "out", None) is not None:
        if getattr(args, "data_command", None) == "difficulty":
            check_output_file(args.out, "--out")
        else:
            check_output_dir(args.out, "--out")

    for attr, (option, *rng) in ARG_RANGES.items():
        value = getattr(args, attr, None)
        wanted = None if value is None else out_of_range(value, *rng)
        if wanted:
            raise LesiondiffError(f"{option} must be {wanted}, got {value:g}")
    if getattr(args, "ratios", None) is not None and (min(args.ratios) < 0 or sum(args.ratios) <= 0):
        raise LesiondiffError(f"--ratios must be three non-negative shares with a positive sum, got {args.ratios}")
    if getattr(args, "device", None):
        from .engine.device import check_device

        check_device(args.device)
    if getattr(args, "fusion", None) is not None:
        from .fusion import FUSERS

        if args.fusion not in FUSERS:
            raise LesiondiffError(f"--fusion {args.fusion!r}: unknown; known: {', '.join(FUSERS.names())}")
    if getattr(args, "sampler", None) is not None:
        from .diffusion.samplers import SAMPLERS

        if args.sampler not in SAMPLERS:
            raise LesiondiffError(f"--sampler {args.sampler!r}: unknown; known: {', '.join(SAMPLERS.names())}")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        _check_args(args)
        return COMMANDS[args.command](args)
    except LesiondiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusal (permissions, disk full, read-only): one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
