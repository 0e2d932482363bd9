"""``lesiondiff compare``, ``ablate`` and ``cv``: multi-run experiments on one budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .common import add_overrides, add_recipe, add_run_options, names


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
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
    add_recipe(cp)
    add_overrides(cp)

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
    add_run_options(ab, "run")
    add_overrides(ab)

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
    add_run_options(cv, "fold")
    add_overrides(cv)


def run_experiment(run, settings, wrote: str) -> int:
    """Run a multi-run experiment (compare, ablate, cv): print its table, then ``wrote``; 130 if interrupted."""
    result = run(settings)
    print(result["text"])
    if result["status"] == "interrupted":
        return 130
    print(wrote)
    return 0


def settings_from(cls, args, **given):
    """An experiment's settings dataclass, each field from the argument of the same name (``--budget-minutes``
    -> ``budget_minutes``, the positional overrides -> ``overrides``); ``given`` wins."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, "overrides": list(args.overrides), **given})


def cmd_compare(args) -> int:
    from ..experiments.compare import CompareSettings, compare

    settings = settings_from(CompareSettings, args, presets=names(args.presets), modes=names(args.modes))
    return run_experiment(compare, settings, f"wrote {Path(args.out) / 'compare.csv'}, compare.md and compare.png; "
                                             "progress in compare.json")


def cmd_ablate(args) -> int:
    from ..experiments.ablate import AblateSettings, ablate

    settings = settings_from(AblateSettings, args, baselines=names(args.baselines),
                             arms=names(args.arms) if args.arms else None)
    return run_experiment(ablate, settings, f"wrote {Path(args.out) / 'ablation.csv'} and ablation.md; progress in "
                                            "ablation.json")


def cmd_cv(args) -> int:
    from ..experiments.crossval import CVSettings, crossval

    return run_experiment(crossval, settings_from(CVSettings, args),
                          f"wrote {Path(args.out) / 'cv.md'} and cv.json (per-fold figures, the aggregate and progress)")


COMMANDS = {"compare": cmd_compare, "ablate": cmd_ablate, "cv": cmd_cv}
