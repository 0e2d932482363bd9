"""``lesiondiff demo``: phantoms -> train -> predict -> evaluate -> report in minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

from .common import add_overrides, add_recipe


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
    de = sub.add_parser("demo", help="phantoms -> train -> predict -> evaluate -> report, on the CPU in minutes")
    de.add_argument("--out", default="lesiondiff-demo")
    de.add_argument("--preset", default="ensemdiff")
    de.add_argument("--n", type=int, default=200, help="phantom images")
    de.add_argument("--minutes", type=float, default=3.5, help="training budget")
    de.add_argument("--size", type=int, default=64, help="network input size")
    de.add_argument("--device", default=None)
    add_recipe(de)
    add_overrides(de)


def cmd_demo(args) -> int:
    from ..data.layouts import index_folder
    from ..data.manifest import Manifest
    from ..data.splits import assign_splits
    from ..data.synthetic import generate
    from ..engine.evaluate import evaluate
    from ..engine.predict import Predictor, collect_inputs
    from ..engine.runs import train_run
    from ..presets import load_overlay, load_preset
    from ..render.tables import format_table
    from ..reporting.report import write_report

    out = Path(args.out)
    t0 = time.perf_counter()
    data_dir = out / "phantoms"
    print(f"[1/5] generating {args.n} phantom ultrasound images in {data_dir}")
    generate(data_dir, n=args.n, size=128, seed=0)
    manifest_path = out / "manifest.csv"
    Manifest.from_records(assign_splits(index_folder(data_dir).records, seed=0)).write(manifest_path)
    run = out / "run"
    cfg = load_preset(args.preset, args.recipe).override([
        *load_overlay("demo"), f"data.manifest={manifest_path}", f"data.size={args.size}",
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


COMMANDS = {"demo": cmd_demo}
