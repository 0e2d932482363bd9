"""``lesiondiff predict``, ``postprocess``, ``evaluate`` and ``report``: from a trained run to scored masks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import LesiondiffError
from .common import add_overrides, add_run_source, run_source


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
    pr = sub.add_parser("predict", help="sample, fuse and write masks with uncertainty maps",
                        description="Under accelerate launch the processes share the inputs and write one --out "
                                    "folder; --part I/N predicts part I of N as one of N separate commands (an "
                                    "array job), and --merge OUT writes the table of their finished parts.")
    add_run_source(pr, required=False, several=True)
    pr.add_argument("inputs", nargs="*", metavar="INPUT_OR_OVERRIDE",
                    help="image files or folders, and config overrides section.key=value as for train (e.g. "
                         "sample.steps=10 sample.start=prior)")
    pr.add_argument("--manifest", default=None)
    pr.add_argument("--split", default=None, help="train, val, test or fold:K (a fold's rows; default: every row)")
    pr.add_argument("--out", default=None, help="the prediction folder (required)")
    pr.add_argument("--part", default=None, metavar="I/N",
                    help="predict part I of N of the inputs (positions I, I+N, ... in their order), as one of N "
                         "separate commands into one --out (e.g. a SLURM array job); the last part to finish "
                         "writes predictions.csv and predict.json")
    pr.add_argument("--merge", default=None, metavar="OUT",
                    help="write predictions.csv and predict.json of the finished parts in OUT (refused while a "
                         "part's images are missing); takes no run or inputs")
    pr.add_argument("--samples", type=int, default=None)
    pr.add_argument("--sampler", default=None, help="ddpm, ddim, dpmsolver, dpmsolver++, unipc, oneshot, staged (unisegdiff), class_difference (diffseg-weak)")
    pr.add_argument("--steps", type=int, default=None)
    pr.add_argument("--fusion", default=None, help="mean, majority, staple, densecrf (mean + DenseCRF) or crf_rounds (DiffSeg)")
    pr.add_argument("--crf", action="store_true", help="refine the fused probability with DenseCRF")
    pr.add_argument("--threshold", type=float, default=None,
                    help="probability threshold of the fused mask (sample.threshold, in (0, 1); default: the "
                         "run's, 0.5 unless it says otherwise): <id>_mask.png is fused probability >= this. "
                         "The same cut binarises each sample for majority, staple and crf_rounds fusion, "
                         "sample.maps=masks and the agreement and lesion_fraction scores; evaluate --pred "
                         "scores at it")
    pr.add_argument("--prediction", choices=["epsilon", "x0"], default=None,
                    help="the head the sampler steps with, for designs that predict both (palscdiff; default: the run's)")
    pr.add_argument("--seed", type=int, default=None)
    pr.add_argument("--tta", choices=["none", "flips", "d4"], default=None,
                    help="test-time augmentation: member k sees the image under the k-th flip (flips: 4 views) or "
                         "flip and quarter turn (d4: 8), mapped back; give --samples as a multiple of the views")
    pr.add_argument("--mc-dropout", action="store_true",
                    help="MC dropout: leave the network's dropout on while sampling (a run trained with "
                         "model.dropout > 0), so each of the S members draws its own mask")
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

    cb = sub.add_parser("calibrate", help="choose the run's accept / review threshold on a calibration split, with "
                                          "a finite-sample guarantee on the accepted images' mean Dice",
                        description="Predict the split with the run's settings (and its lesion / no-lesion rule), "
                                    "score the masks, and choose the threshold on a per-image score (Learn then "
                                    "Test, selective.py) so that, with probability >= 1 - delta, the images a "
                                    "prediction accepts have a mean Dice >= the target. Writes RUN/selective.json; "
                                    "predict then marks every image accept or review.")
    cb.add_argument("--run", required=True)
    cb.add_argument("--manifest", required=True)
    cb.add_argument("--split", default="val", help="the calibration split (never test; at least 20 images)")
    cb.add_argument("--target-dice", type=float, default=0.8, help="the mean Dice the accepted images must reach")
    cb.add_argument("--delta", type=float, default=0.1, help="the guarantee holds with probability 1 - delta")
    cb.add_argument("--score", default=None, help="agreement, lesion_fraction, entropy or band_entropy (default: "
                                                  "agreement when the predictions have it, else entropy)")
    cb.add_argument("--pred", default=None, help="existing predictions of that split made from this run")
    cb.add_argument("--device", default=None)
    add_overrides(cb)

    av = sub.add_parser("average", help="make a U-Net + diffusion average (mask from w p_unet + (1 - w) p_draws, "
                                        "maps and scores from the draws), w chosen on a validation split",
                        description="Write OUT/average.json and OUT/config.yaml; predict --run OUT and serve read it "
                                    "as one model. Without --weight, both runs predict --split and every w of 0, "
                                    "0.1, ..., 1 is scored by mean per-image Dice (threshold 0.5).")
    av.add_argument("--out", required=True, help="the average folder")
    av.add_argument("--feedforward", required=True, metavar="RUN", help="a trained feed-forward run (unet)")
    av.add_argument("--diffusion", required=True, metavar="RUN", help="a trained diffusion run")
    av.add_argument("--manifest", default=None, help="to choose the weight on --split")
    av.add_argument("--split", default="val", help="the split to choose the weight on (never test)")
    av.add_argument("--weight", type=float, default=None, help="use this weight instead of choosing one")
    av.add_argument("--device", default=None)

    ev = sub.add_parser("evaluate", help="score predictions, or any folder of masks, against a manifest split")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", help="a lesiondiff predict folder")
    source.add_argument("--masks", metavar="DIR",
                        help="a folder of mask files from any tool, matched to the manifest's ids by file name "
                             "(case1.png, case1_mask.png, case1_seg.nii.gz, ...)")
    ev.add_argument("--threshold", type=float, default=None,
                    help="--masks only: read every mask file's grey values as probabilities, foreground where "
                         "value / 255 >= this (in (0, 1); 16-bit and 1-bit files are scaled to 0..255 first), "
                         "e.g. soft outputs saved as 8-bit PNG. Without it a mask must be binary (0/1, 0/255) "
                         "or a label map (whole numbers 0..31), foreground > 0, and other grey values are "
                         "refused. Not for --pred: predictions are scored at the probability threshold "
                         "predict used (predict --threshold)")
    ev.add_argument("--missing", choices=["error", "empty"], default="error",
                    help="--masks: split images without a mask file stop the evaluation (error) or count as "
                         "empty predictions (empty)")
    ev.add_argument("--scores", default=None, metavar="CSV",
                    help="--masks: per-image scores of those masks (columns id and any of agreement, "
                         "lesion_fraction, entropy, band_entropy) to rank them: adds AURC and e-AURC")
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
    from ..engine.device import process_rank
    from ..engine.memory import check_run_memory
    from ..engine.predict import Predictor, collect_inputs
    from ..engine.sharding import merge_parts, parse_part

    if args.merge is not None:
        given = [o for o, v in (("--run", args.run), ("--model", args.model), ("--out", args.out),
                                ("--part", args.part), ("--manifest", args.manifest)) if v] + args.inputs
        if given:
            raise LesiondiffError(f"--merge OUT takes the folder alone (and --verify); not {', '.join(given)}")
        rows = merge_parts(args.merge, verify=args.verify)
        print(f"wrote predictions.csv and predict.json of {len(rows)} images to {args.merge}")
        return 0
    if args.out is None:
        raise LesiondiffError("predict needs --out (the prediction folder)")
    if not (args.run or args.model):
        raise LesiondiffError("predict needs --run DIR or --model NAME")
    part = parse_part(args.part) if args.part is not None else None  # before anything loads

    overrides = [f"{k}={v}" for k, v in (("sample.samples", args.samples), ("sample.sampler", args.sampler),
                                          ("sample.steps", args.steps), ("fusion.method", args.fusion),
                                          ("sample.threshold", args.threshold), ("sample.seed", args.seed),
                                          ("diffusion.prediction", args.prediction), ("sample.tta", args.tta))
                 if v is not None]
    if args.crf:
        overrides.append("fusion.crf=true")
    if args.mc_dropout:
        overrides.append("sample.mc_dropout=true")
    given, args.inputs = _split_overrides(args.inputs)
    overrides += [*given, *args.set]
    if (args.manifest is None) != (args.split is None) and args.manifest is None:
        raise LesiondiffError("--split needs --manifest")
    source = run_source(args)
    check_run_memory(source[0] if isinstance(source, list) else source, overrides)  # before any weights load
    predictor = Predictor.from_run(source, args.checkpoint, args.device, overrides,
                                   postprocess=not args.no_postprocess)
    rank, world = process_rank()  # the processes of an accelerate launch: the main one (rank 0) reports
    say = print if rank == 0 else (lambda *_: None)
    for note in predictor.notes({"--sampler": args.sampler, "--steps": args.steps, "--prediction": args.prediction,
                                 "--fusion": args.fusion}):
        say(note)
    items = collect_inputs(args.inputs, args.manifest, args.split, log=say)
    rows = predictor.run(items, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite, log=say,
                         split=args.split if args.manifest else None, verify=args.verify, part=part)
    if part is not None:
        print(f"part {part[0]}/{part[1]}: wrote {predictor.predicted_now} predictions to {args.out}"
              + (f"; merged the parts ({len(rows)} images in predictions.csv)" if rows else ""))
        return 0
    by = f" with {world} processes" if world > 1 else ""
    more = f" ({len(rows)} in all, with those predicted there before)" if len(rows) > len(items) else ""
    say(f"wrote {len(items)} predictions to {args.out}{by}{more} (masks, probabilities, uncertainty maps, overlays)")
    return 0


def cmd_postprocess(args) -> int:
    from ..engine.postprocessing import choose_for_run, format_scores

    if args.split == "test":
        raise LesiondiffError("choose the post-processing on the validation split, not on test")
    rule, scores = choose_for_run(args.run, args.manifest, args.split, args.pred, args.device, list(args.overrides))
    print(format_scores(scores))
    print(f"chosen on split {args.split}: {rule.describe()}; wrote {Path(args.run) / 'postprocess.json'}")
    return 0


def cmd_calibrate(args) -> int:
    from ..engine.calibrate import calibrate_run
    from ..engine.calibration import FILE

    record = calibrate_run(args.run, args.manifest, args.split, args.target_dice, args.delta, args.score,
                           args.pred, args.device, list(args.overrides))
    if record["threshold"] is None:
        print(f"no threshold could be certified on {record['n']} images of split {args.split} (the "
              f"{record['min_accepted']} most trusted images already fail the bound): every image will be marked "
              "review")
    else:
        print(f"score {record['score']}: accept when its confidence >= {record['threshold']:.6g}; on split "
              f"{args.split}: {record['coverage']:.1%} of {record['n']} images accepted, their mean Dice "
              f"{record['accepted_mean_dice']:.4f} (upper bound of the accepted risk {record['upper_risk_bound']:.4f}"
              f" < {1 - record['target_dice']:.4f})")
    print(f"guarantee: {record['guarantee']}; method: {record['method']}")
    print(f"wrote {Path(args.run) / FILE}")
    return 0


def cmd_average(args) -> int:
    from ..engine.average import make_average, weight_scores
    from ..engine.predict import Predictor, collect_inputs

    out = Path(args.out)
    if args.weight is not None:
        record = make_average(out, args.feedforward, args.diffusion, args.weight)
    else:
        if not args.manifest:
            raise LesiondiffError("average needs --manifest (to choose the weight on --split) or --weight")
        if args.split == "test":
            raise LesiondiffError("choose the weight on the validation split, not on test")
        items = collect_inputs([], args.manifest, args.split)
        preds = {}
        for kind in ("feedforward", "diffusion"):
            preds[kind] = out / f"choose_{args.split.replace(':', '')}" / kind
            Predictor.from_run(getattr(args, kind), "best", args.device).run(items, preds[kind], checkpoint="best")
        scores = weight_scores(preds["feedforward"], preds["diffusion"], args.manifest, args.split)
        best = max(scores, key=lambda s: (round(s["dice"], 12), s["weight"]))
        for s in scores:
            print(f"w = {s['weight']:.1f}: mean Dice {s['dice']:.4f} ({s['n']} images of split {args.split})")
        record = make_average(out, args.feedforward, args.diffusion, best["weight"],
                              {"how": f"mean per-image Dice on split {args.split} of {args.manifest}, threshold 0.5",
                               "scores": scores})
    print(f"w = {record['weight']:g} (1: the U-Net alone, 0: the diffusion run alone); wrote {out / 'average.json'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..engine.evaluate import evaluate
    from ..render.tables import format_table

    if args.masks:
        from ..engine.evaluate_masks import OUT_NAME, evaluate_masks

        summary = evaluate_masks(args.masks, args.manifest, args.split or "test", args.out, args.threshold,
                                 args.missing, scores=args.scores)
        print(format_table(summary))
        print(f"wrote {Path(args.out or Path(args.masks) / OUT_NAME) / 'metrics.csv'} and summary.json")
        return 0
    if args.threshold is not None or args.missing != "error" or args.scores is not None:
        raise LesiondiffError("--threshold, --missing and --scores apply to --masks; predictions carry their own "
                              "threshold and scores")
    split = args.split
    if split is None:
        meta = Path(args.pred) / "predict.json"
        recorded = json.loads(meta.read_text(encoding="utf-8")).get("split") if meta.is_file() else None
        split = recorded or "test"
        print(f"split: {split} ({'the split predict was given' if recorded else 'the default'}; --split to choose)")
    summary = evaluate(args.pred, args.manifest, split, args.out)
    print(format_table(summary))
    print(f"wrote {Path(args.out or args.pred) / 'metrics.csv'}, summary.json, rounds.md, reliability.png, "
          "risk_coverage.png and pixel_roc.png")
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


COMMANDS = {"predict": cmd_predict, "postprocess": cmd_postprocess, "calibrate": cmd_calibrate,
            "average": cmd_average, "evaluate": cmd_evaluate, "report": cmd_report}
