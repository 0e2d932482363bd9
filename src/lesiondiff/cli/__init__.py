"""The ``lesiondiff`` command line: data, train, compare, ablate, cv, predict, postprocess, evaluate, report,
models, serve, analyze, demo, bench, presets. One module per command group registers its parsers and commands.

Errors meant for the user (bad files, unknown keys, missing checkpoints) print one line and exit with status 2.
Config overrides (``section.key=value``) may stand anywhere on the line, after options too (:func:`parse`).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import LesiondiffError, ReportedByMain
from . import analyze, data, demo, experiments, models, predict, serve, train
from .common import check_args, show_defaults
from .predict import OVERRIDE

GROUPS = (data, train, experiments, predict, models, serve, demo, analyze)
COMMANDS = {name: command for group in GROUPS for name, command in group.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesiondiff", description="Diffusion-model segmentation of lesions in 2D medical images.",
        epilog="Run 'lesiondiff COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return show_defaults(parser)


# The positional list each command's trailing items go to: config overrides (train, compare, ablate, cv,
# postprocess, demo) or predict's images and overrides.
TRAILING = ("overrides", "inputs")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that ``section.key=value`` items after an option are kept.

    argparse fills a ``nargs="*"`` positional from one run of items only, so in ``train --preset unet
    data.size=32 --out runs/x train.steps=5`` the last item was "unrecognized". Such items are appended, in their
    order, to the command's overrides (or predict's inputs, which also take images: there any item that is not
    an option is kept). Anything else left over is argparse's usual "unrecognized arguments" error.
    """
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    target = next((name for name in TRAILING if isinstance(getattr(args, name, None), list)), None)
    kept = [e for e in extra if target is not None
            and (OVERRIDE.match(e) or (target == "inputs" and not e.startswith("-")))]
    rest = [e for e in extra if e not in kept]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    getattr(args, target).extend(kept)
    return args


def _printable_streams() -> None:
    """Under a locale that cannot encode the report's characters (an ASCII terminal, PYTHONUTF8=0 with LC_ALL=C),
    print them escaped rather than stopping with UnicodeEncodeError halfway through a command."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_streams()
    args = parse(build_parser(), argv)
    try:
        check_args(args)
        return COMMANDS[args.command](args)
    except LesiondiffError as exc:
        if not isinstance(exc, ReportedByMain):  # the main process of a launch prints it
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output was cut short on purpose (| head)
        return 0
    except OSError as exc:  # a file system refusal (permissions, disk full, read-only): one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
