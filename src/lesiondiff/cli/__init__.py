"""The ``lesiondiff`` command line: data, train, compare, ablate, cv, predict, postprocess, evaluate, report,
models, serve, analyze, demo, bench, presets. One module per command group registers its parsers and commands.

Errors meant for the user (bad files, unknown keys, missing checkpoints) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import LesiondiffError
from . import analyze, data, demo, experiments, models, predict, serve, train
from .common import check_args, show_defaults

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return COMMANDS[args.command](args)
    except LesiondiffError as exc:
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
