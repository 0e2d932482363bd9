"""What the command modules share: option groups, the help formatter that shows defaults, the up-front
checks of numeric options, names and outputs, and the config a train-like command builds."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LesiondiffError


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.steps=500 data.size=64 (values parsed as YAML)")


def add_run_options(p: argparse.ArgumentParser, unit: str) -> None:
    """The training and sampling settings every ``unit`` (run, fold) of an experiment shares."""
    p.add_argument("--size", type=int, default=128, help=f"network input size for every {unit}")
    p.add_argument("--seed", type=int, default=0, help=f"training and sampling seed for every {unit}")
    p.add_argument("--samples", type=int, default=None, help="S per image (default: the preset's)")
    p.add_argument("--sampler", default=None, help="diffusion runs (default: the preset's); feed-forward: oneshot")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    p.add_argument("--max-steps", type=int, default=1_000_000, help=f"step cap per {unit} (the budget usually ends it)")
    p.add_argument("--device", default=None)
    add_recipe(p)


def add_recipe(p: argparse.ArgumentParser) -> None:
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


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and every sub-command's parser the defaults-showing help formatter."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings and _has_default(action):
            action.help = "default: %(default)s"  # an option without help text still shows its default
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                show_defaults(sub)
    return parser


def add_run_source(p: argparse.ArgumentParser, required: bool = True, several: bool = False) -> None:
    """``--run DIR`` or ``--model NAME`` (a shipped model, ``lesiondiff models``): either names the run read.
    ``several``: each may be given more than once, and several runs are read as one ensemble."""
    source = p.add_mutually_exclusive_group(required=required)
    more = " (give several to read them as one ensemble, member i from run i mod M)" if several else ""
    action = "append" if several else "store"
    source.add_argument("--run", default=None, metavar="DIR", action=action,
                        help=f"a trained run folder, or an ensemble folder (lesiondiff ensemble){more}")
    source.add_argument("--model", default=None, metavar="NAME", action=action,
                        help=f"a model that ships with lesiondiff (lesiondiff models), instead of --run{more}")


def run_source(args) -> Path | list[Path]:
    """The run folder ``--run`` or ``--model`` names; several (``add_run_source(several=True)``): their list."""
    from ..shipped import run_folder

    if isinstance(args.run, list) or isinstance(args.model, list):
        folders = [run_folder(r, None) for r in args.run or []] + [run_folder(None, m) for m in args.model or []]
        return folders[0] if len(folders) == 1 else folders
    return run_folder(args.run, args.model)


def config_from_args(args) -> Config:  # noqa: F821  (imported below)
    from ..config import Config
    from ..presets import load_preset

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


def names(text: str | None) -> list[str]:
    """A comma-separated option as a list, blanks dropped: "a, b," -> ["a", "b"]."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def ints(text: str | None, option: str, example: str) -> list[int]:
    """A comma-separated option of integers; anything else is a one-line error naming the option."""
    try:
        return [int(p) for p in names(text)]
    except ValueError:
        raise LesiondiffError(f"{option} {text!r}: expected comma-separated integers, e.g. {example}") from None


# Numeric options checked before any command runs, each a one-line error naming the option: attribute ->
# (option, config key) for an option that sets a config key, whose range is the key's own declaration
# (config.range_of), or (option, lowest, highest, lowest excluded, highest excluded) for an option of the command
# line alone (None: unbounded on that side).
ARG_RANGES: dict[str, tuple] = {
    "samples": ("--samples", "sample.samples"),
    "steps": ("--steps", "sample.steps"),
    "seed": ("--seed", "sample.seed"),
    "max_steps": ("--max-steps", "train.steps"),
    "size": ("--size", "data.size"),
    "threshold": ("--threshold", "sample.threshold"),
    "budget_minutes": ("--budget-minutes", 0, None, True, False),
    "n": ("--n", 1, None, False, False),
    "folds": ("--folds", 0, None, False, False),
    "figure_images": ("--figure-images", 0, None, False, False),
    "easy_fraction": ("--easy-fraction", 0, 1, True, True),
    "band": ("--band", 1, None, False, False),
    "port": ("--port", 1, 65535, False, False),
    "max_upload_mb": ("--max-upload-mb", 0, None, True, False),
}


def option_range(entry: tuple) -> tuple:
    """(option, range) of an :data:`ARG_RANGES` entry, a config key's range read from its declaration."""
    from ..config import range_of

    option, *rest = entry
    return option, (range_of(rest[0]) if isinstance(rest[0], str) else tuple(rest))


def check_args(args) -> None:
    """The numeric options within range, the sampler and fusion names known and the outputs writable (a folder
    where a folder is meant, a file where a file is), before anything loads."""
    from ..config import out_of_range
    from ..io_utils import check_output_dir, check_output_file

    if getattr(args, "output", None) is not None:  # data index
        check_output_file(args.output, "--output", overwrite=args.overwrite)
    if getattr(args, "out", None) is not None:
        if getattr(args, "data_command", None) == "difficulty":
            check_output_file(args.out, "--out")
        else:
            check_output_dir(args.out, "--out")

    for attr, entry in ARG_RANGES.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        option, rng = option_range(entry)
        wanted = out_of_range(value, *rng)
        if wanted:
            raise LesiondiffError(f"{option} must be {wanted}, got {value if isinstance(value, int) else f'{value:g}'}")
    if getattr(args, "ratios", None) is not None and (min(args.ratios) < 0 or sum(args.ratios) <= 0):
        raise LesiondiffError(f"--ratios must be three non-negative shares with a positive sum, got {args.ratios}")
    if getattr(args, "device", None):
        from ..engine.device import check_device

        check_device(args.device)
    if getattr(args, "fusion", None) is not None:
        from ..fusion import FUSERS

        if args.fusion not in FUSERS:
            raise LesiondiffError(f"--fusion {args.fusion!r}: unknown; known: {', '.join(FUSERS.names())}")
    if getattr(args, "sampler", None) is not None:
        from ..build import sampler_names

        if args.sampler not in sampler_names():
            raise LesiondiffError(f"--sampler {args.sampler!r}: unknown; known: {', '.join(sampler_names())}")
