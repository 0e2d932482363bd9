"""``lesiondiff data``: index a dataset folder, score image difficulty, generate phantoms."""

from __future__ import annotations

from pathlib import Path

from ..errors import LesiondiffError


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
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


def _cmd_difficulty(args) -> int:
    from ..data.difficulty import DEFAULT_WEIGHTS, format_summary, score_manifest
    from ..data.manifest import Manifest

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
        from ..data.synthetic import generate

        out = generate(Path(args.out), n=args.n, size=args.size, seed=args.seed)
        print(f"wrote {args.n} phantom images ({args.size} px, seed {args.seed}) to {out} (generic layout)")
        return 0
    from ..data.index import index_datasets

    lines = index_datasets([Path(p) for p in args.path], Path(args.output), layout=args.layout, slices=args.slices,
                           slices_dir=Path(args.slices_dir) if args.slices_dir else None, skip_bad=args.skip_bad,
                           check=not args.no_check, ratios=tuple(args.ratios) if args.ratios else None,
                           seed=args.seed, folds=args.folds, train_only=args.train_only)
    print("\n".join(lines))
    print(f"wrote {args.output}")
    return 0


COMMANDS = {"data": cmd_data}
