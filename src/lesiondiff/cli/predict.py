"""``lesiondiff predict``, ``postprocess``, ``evaluate`` and ``report``: from a trained run to scored masks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import LesiondiffError
from .common import add_overrides, add_run_source, run_source


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
    pr = sub.add_parser("predict", help="sample, fuse and write masks with uncertainty maps")
    add_run_source(pr)
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
    pr.add_argument("--verify", action="store_true",
                    help="when resuming, check the finished images' files by their sha256, not only by their size")

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
    add_overrides(pp)

    ev = sub.add_parser("evaluate", help="score predictions, or any folder of masks, against a manifest split")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", help="a lesiondiff predict folder")
    source.add_argument("--masks", metavar="DIR",
                        help="a folder of mask files from any tool, matched to the manifest's ids by file name "
                             "(case1.png, case1_mask.png, case1_seg.nii.gz, ...)")
    ev.add_argument("--threshold", type=float, default=None,
                    help="--masks: read grey values as probabilities (value / maximum >= threshold). Without it "
                         "a mask must be binary (0/1, 0/255) or a label map (whole numbers 0..31), foreground > 0; "
                         "other grey values are refused")
    ev.add_argument("--missing", choices=["error", "empty"], default="error",
                    help="--masks: split images without a mask file stop the evaluation (error) or count as "
                         "empty predictions (empty)")
    ev.add_argument("--manifest", required=True)
    ev.add_argument("--split", default=None, help="train, val, test or fold:K (the rows of fold K); default: the "
                    "split predict was given (predict.json), else test")
    ev.add_argument("--out", default=None, help="where metrics.csv and summary.json go (default: --pred)")

    rp = sub.add_parser("report", help="write report.html from a run, its predictions and their evaluation")
    add_run_source(rp, required=False)
    rp.add_argument("--pred", default=None)
    rp.add_argument("--evaluation", default=None,
                    help="folder with the evaluation's summary.json (default: --pred, where evaluate writes it)")
    rp.add_argument("--manifest", default=None)
    rp.add_argument("--split", default="test")
    rp.add_argument("--out", required=True)


OVERRIDE = re.compile(r"^[a-z_]+\.[a-z_.]+=")


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments as (section.key=value overrides, inputs): an existing file or folder is an input even
    when its name looks like an override."""
    overrides = [i for i in items if OVERRIDE.match(i) and not Path(i).exists()]
    return overrides, [i for i in items if i not in overrides]


def cmd_predict(args) -> int:
    from ..engine.memory import check_run_memory
    from ..engine.predict import Predictor, collect_inputs

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
    check_run_memory(run_source(args), overrides)  # before any weights load
    predictor = Predictor.from_run(run_source(args), args.checkpoint, args.device, overrides,
                                   postprocess=not args.no_postprocess)
    for note in predictor.notes({"--sampler": args.sampler, "--steps": args.steps, "--prediction": args.prediction,
                                 "--fusion": args.fusion}):
        print(note)
    items = collect_inputs(args.inputs, args.manifest, args.split)
    rows = predictor.run(items, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite,
                         split=args.split if args.manifest else None, verify=args.verify)
    more = f" ({len(rows)} in all, with those predicted there before)" if len(rows) > len(items) else ""
    print(f"wrote {len(items)} predictions to {args.out}{more} (masks, probabilities, uncertainty maps, overlays)")
    return 0


def cmd_postprocess(args) -> int:
    from ..engine.postprocessing import choose_for_run, format_scores

    if args.split == "test":
        raise LesiondiffError("choose the post-processing on the validation split, not on test")
    rule, scores = choose_for_run(args.run, args.manifest, args.split, args.pred, args.device, list(args.overrides))
    print(format_scores(scores))
    print(f"chosen on split {args.split}: {rule.describe()}; wrote {Path(args.run) / 'postprocess.json'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..engine.evaluate import evaluate, format_table

    if args.masks:
        from ..engine.evaluate_masks import OUT_NAME, evaluate_masks

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
    from ..reporting.report import write_report

    summary = None
    folder = Path(args.evaluation) if args.evaluation else Path(args.pred) if args.pred else None
    if folder is not None and (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    elif args.evaluation:
        raise LesiondiffError(f"{folder / 'summary.json'}: not found; run lesiondiff evaluate --pred "
                              f"{args.pred or 'PRED_DIR'} --manifest {args.manifest or 'MANIFEST'} --split {args.split} "
                              f"--out {folder} first")
    run = run_source(args) if args.run or args.model else None
    path = write_report(args.out, run=run, pred_dir=args.pred, summary=summary, manifest=args.manifest,
                        split=args.split)
    print(f"wrote {path}")
    return 0


COMMANDS = {"predict": cmd_predict, "postprocess": cmd_postprocess, "evaluate": cmd_evaluate, "report": cmd_report}
