"""``lesiondiff train`` and ``lesiondiff presets``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import LesiondiffError
from .common import add_overrides, add_recipe, config_from_args


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
    tr = sub.add_parser("train", help="train a preset on a manifest")
    tr.add_argument("--preset", default=None, help="ensemdiff, unet, ... (see: lesiondiff presets)")
    tr.add_argument("--config", default=None, help="a YAML config file instead of a preset")
    tr.add_argument("--manifest", default=None)
    tr.add_argument("--out", required=True, help="run directory")
    tr.add_argument("--mode", choices=["diffusion", "feedforward"], default=None,
                    help="feedforward: train the architecture with random noise as x_t and Dice + BCE")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--device", default=None, help="cpu or cuda (default: cuda, then mps, then cpu)")
    add_recipe(tr)
    add_overrides(tr)
    sub.add_parser("presets", help="list presets")
    en = sub.add_parser("ensemble", help="make an ensemble folder of trained runs, which predict reads as one run",
                        description="Write OUT/ensemble.json (the member runs and their training budgets, summed) "
                                    "and OUT/config.yaml (the first member's, with S = the number of members). "
                                    "predict --run OUT samples member i of S from run i mod M.")
    en.add_argument("--out", required=True, help="the ensemble folder")
    en.add_argument("runs", nargs="+", metavar="RUN", help="two or more distinct trained run folders")


def cmd_train(args) -> int:
    from ..config import Config
    from ..engine.runs import train_run

    if args.resume:
        cfg_path = Path(args.out) / "config.yaml"
        cfg = Config.load(cfg_path).override(list(args.overrides))
    else:
        if not (args.manifest or args.config):
            raise LesiondiffError("train needs --manifest (or a --config that names data.manifest)")
        cfg = config_from_args(args)
    summary = train_run(cfg, args.out, device=args.device, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # several processes (accelerate launch): the main one reports
        print(json.dumps(summary, indent=2))
    return 130 if summary["status"] == "interrupted" else 0


def cmd_presets(args) -> int:
    from ..presets import load_preset, preset_names

    width = max(map(len, preset_names()))
    for name in preset_names():
        cfg = load_preset(name)
        print(f"{name:<{width}}  model {cfg.model.name}, {cfg.diffusion.mode}, objective "
              f"{'feedforward' if cfg.diffusion.feedforward else cfg.diffusion.objective}, "
              f"sampler {cfg.sample.sampler}")
    return 0


def cmd_ensemble(args) -> int:
    from ..engine.ensemble import make_ensemble

    record = make_ensemble(args.out, args.runs)
    print(f"wrote {Path(args.out) / 'ensemble.json'}: {len(record['members'])} members, training budget "
          f"{record['budget_s']:g} s of {record['clock']} time in all")
    return 0


COMMANDS = {"train": cmd_train, "presets": cmd_presets, "ensemble": cmd_ensemble}
