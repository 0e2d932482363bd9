"""``lesiondiff analyze`` (fingerprint, samplers, gradcam) and ``lesiondiff bench``."""

from __future__ import annotations

from pathlib import Path

from .common import add_run_source, ints, names, run_source


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
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
    add_run_source(sw)
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
    add_run_source(gc)
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
    gc.add_argument("--threshold", type=float, default=None,
                    help="probability threshold of the region R that Grad-CAM explains: R is where the "
                         "trajectory's final sample, mapped to [0, 1], is >= this (default: the run's "
                         "sample.threshold, as predict uses)")
    gc.add_argument("--checkpoint", default="best", help="best or last")
    gc.add_argument("--device", default=None)
    gc.add_argument("--list-layers", action="store_true", help="print every module's name and output, then stop")
    gc.add_argument("--out", default=None, help="output folder (required unless --list-layers)")


def cmd_bench(args) -> int:
    from ..analysis.bench import run_speed

    run_speed(sizes=args.sizes, samples=args.samples, batch=args.batch, preset=args.preset, repeats=args.repeats,
              monai=not args.no_monai, device=args.device, json_path=args.json)
    return 0


def _cmd_analyze_samplers(args) -> int:
    from ..analysis.sampler_sweep import OUTPUTS, format_table, sweep_samplers

    nfe = ints(args.nfe, "--nfe", "5,10,20")
    summary = sweep_samplers(
        run_source(args), args.out, manifest=args.manifest, split=args.split, samplers=names(args.samplers), nfe=nfe,
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
        from ..analysis.gradcam.run import write_gradcam
        from ..analysis.gradcam.summary import format_table as gradcam_table

        cam_timesteps = ints(args.cam_timesteps, "--cam-timesteps", "999,500,0") or None
        summary = write_gradcam(
            args.out, run_source(args), image=args.image, manifest=args.manifest, id_=args.id, layers=args.layers,
            psa_pairs=args.psa_pairs, prior_layer=args.prior_layer, prior_target=args.prior_target, steps=args.steps,
            cam_steps=args.cam_steps, cam_timesteps=cam_timesteps, sampler=args.sampler, seed=args.seed,
            threshold=args.threshold, checkpoint=args.checkpoint, device=args.device, list_layers=args.list_layers)
        if args.list_layers:
            print(summary["layers"])
            return 0
        print(gradcam_table(summary), end="")
        print(f"wrote {', '.join(summary['files'])} to {args.out}")
        return 0
    from ..analysis.fingerprint import format_table, write_fingerprint

    summary = write_fingerprint(
        args.out, manifests=args.manifest, runs=args.run, names=args.name or None, split=args.split, size=args.size,
        every=args.every, max_images=args.max_images, sigma=args.sigma, seed=args.seed, window=args.window,
        device=args.device, checkpoint=args.checkpoint, batch_size=args.batch_size, grad_batches=args.grad_batches)
    print(format_table(summary))
    print(f"wrote {', '.join(Path(f).name for f in summary['files'])} to {args.out}")
    return 0


COMMANDS = {"bench": cmd_bench, "analyze": cmd_analyze}
