"""Timestep fingerprints: how the information in a noisy mask x_t fades with t, for a data set and for a model.

After Analysing Diffusion Segmentation for Medical Images (sec. 4.2-4.3: mask error of a conditioned and an
"unconditioned" model per timestep, per-timestep training loss, data-set fingerprints) and UniSegDiff (Fig. 1:
gradient norm per timestep). Every curve uses the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
with x0 the mask in {-1,+1}, and one noise draw eps per image, seeded, that is reused at every t: the curves
then move only with t, not with fresh noise, and come out smooth without averaging many draws.

Data set (no model): ``recoverability`` is the per-image Dice of threshold_0(Gaussian_sigma(x_t)) against x0,
averaged over masks (empty vs empty scores 1); ``recoverability_slope`` is its smoothed -d/dt, high where
the mask's information is being lost. Model (a trained run, EMA weights, eval mode): ``mask_error_conditioned``
MSE(clip(x0_hat, -1, 1), x0) given the image; ``mask_error_unconditioned`` the same with the image replaced by
zeros, i.e. the same trained model asked for mask completion (not a separately trained unconditioned model, as
the paper's E3 is); ``loss_eps`` MSE(eps_hat, eps) and ``loss_x0`` MSE(x0_hat, x0) unclipped, with the other
estimate derived through the forward process; ``grad_norm`` the L2 norm over all parameters of the gradient of
the run's own training objective at that t. Feed-forward runs have no timesteps and are skipped.

Outputs (``write_fingerprint``): fingerprint.csv (long format: source, curve, t, value, n_images),
fingerprint.json (settings and protocol), mask_error.png, loss_per_timestep.png, grad_norm.png (with runs)
and dataset_fingerprint.png.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..build import build_objective
from ..config import Config, DiffusionConfig
from ..data.dataset import SplitData, load_rows, mask_paths
from ..data.io import read_masks
from ..data.manifest import dataset_name, split_rows
from ..data.transforms import preprocess_mask
from ..diffusion.recoverability import (
    DEFAULT_WINDOW,
    recoverability_curve,
    recoverability_slope,
    seeded_noise,
)
from ..diffusion.schedules import alphas_cumprod
from ..engine.predict import load_run
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..models import Denoiser, DenoiserOutput
from ..render.fingerprint_figures import dataset_fingerprint_figure, model_curves_figure

MODEL_CURVES = ("mask_error_conditioned", "mask_error_unconditioned", "loss_eps", "loss_x0", "grad_norm")
DATASET_CURVES = ("recoverability", "recoverability_slope")


@dataclass
class Curves:
    """Per-timestep curves of one source (a data set or a run): ``values[name]`` [K] at ``timesteps`` [K]."""

    source: str
    timesteps: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    n_images: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [{"source": self.source, "curve": name, "t": int(t), "value": float(v),
                 "n_images": self.n_images[name]} for name, curve in self.values.items()
                for t, v in zip(self.timesteps, curve)]


def first_t(condition: np.ndarray, timesteps) -> int | None:
    """The first t where ``condition`` [K] holds, or None."""
    hits = np.flatnonzero(condition)
    return int(np.asarray(timesteps)[hits[0]]) if len(hits) else None


def dataset_fingerprint(masks: torch.Tensor, source: str, cfg: DiffusionConfig, every: int = 10,
                        sigma: float = 2.0, seed: int = 0, window: float = DEFAULT_WINDOW) -> Curves:
    """``recoverability`` and ``recoverability_slope`` of ``masks`` at t = 0, every, 2 every, ... < T."""
    ts = np.arange(0, cfg.num_train_timesteps, every)
    curve = recoverability_curve(masks, alphas_cumprod(cfg), ts, sigma, seed)
    n = len(masks)
    values = {"recoverability": curve, "recoverability_slope": recoverability_slope(curve, ts, window)}
    return Curves(source, ts, values, {name: n for name in values})


def load_masks(rows: list[dict], size: int, desc: str = "reading masks") -> torch.Tensor:
    """The union mask of every row, resized to ``size`` as ``preprocess_mask`` does: bool [N,size,size]. Images
    are not read; a row without mask files is all background."""
    out = []
    for row in tqdm(rows, desc=desc, unit="mask", leave=False):
        paths = mask_paths(row)
        out.append(preprocess_mask(read_masks(paths), size)[0] > 0 if paths
                   else torch.zeros(size, size, dtype=torch.bool))
    return torch.stack(out) if out else torch.zeros(0, size, size, dtype=torch.bool)


# ---- model curves -------------------------------------------------------------------------------------------
def _estimates(model: Denoiser, out: DenoiserOutput, x_t: torch.Tensor, abar: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) in diffusion space, the one the head does not predict derived from x_t = sqrt(abar) x0
    + sqrt(1 - abar) eps."""
    if model.prediction == "epsilon":
        eps_hat = out.eps
        return (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt(), eps_hat
    x0_hat = out.x0_diffusion_space()
    return x0_hat, (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error [B]."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def model_curves(model: Denoiser, cfg: Config, data: SplitData, source: str, every: int = 10, seed: int = 0,
                 batch_size: int = 8, grad_batches: int = 2, progress: bool = True) -> Curves:
    """The five ``MODEL_CURVES`` of ``model`` (built from ``cfg``) on ``data`` at t = 0, every, ... < T.

    Errors and losses are per-image means, averaged over all images; ``grad_norm`` is averaged over the first
    ``grad_batches`` batches of ``batch_size`` images, with a copy of the model in eval mode (no dropout);
    ``grad_batches`` 0 leaves it out.
    """
    if cfg.diffusion.feedforward:
        raise LesiondiffError(f"{source}: a feed-forward run has no timesteps to fingerprint")
    device = next(model.parameters()).device
    model.eval()
    objective = build_objective(cfg.diffusion)  # its forward process noises x0 here, as in training
    ts = np.arange(0, cfg.diffusion.num_train_timesteps, every)
    abar = alphas_cumprod(cfg.diffusion).to(device)
    n = len(data)
    noise = seeded_noise(n, tuple(data.masks.shape[1:]), torch.Generator().manual_seed(seed))
    starts = list(range(0, n, batch_size))
    grad_starts = starts[:grad_batches]
    sums = {name: np.zeros(len(ts)) for name in MODEL_CURVES}
    bar = tqdm(total=len(ts) * (len(starts) + len(grad_starts)), desc=f"fingerprint {source}", unit="eval",
               leave=False, disable=not progress)
    with torch.inference_mode():
        for start in starts:
            index = torch.arange(start, min(start + batch_size, n))
            batch = data.batch(index, device)
            x0, eps = batch["mask"].repeat(2, 1, 1, 1), noise[index].to(device).repeat(2, 1, 1, 1)
            # one network call per t for both halves: the images, then the same images replaced by zeros
            condition = model.encode(torch.cat([batch["image"], torch.zeros_like(batch["image"])]))
            half = len(index)
            for k, t in enumerate(ts):
                tt = torch.full((2 * half,), int(t), device=device, dtype=torch.long)
                x_t = objective.noisy(x0, eps, tt)
                x0_hat, eps_hat = _estimates(model, model.denoise(x_t, tt, condition), x_t, abar[t])
                error = _mse(x0_hat.clamp(-1, 1), x0)
                sums["mask_error_conditioned"][k] += float(error[:half].sum())
                sums["mask_error_unconditioned"][k] += float(error[half:].sum())
                sums["loss_eps"][k] += float(_mse(eps_hat[:half], eps[:half]).sum())
                sums["loss_x0"][k] += float(_mse(x0_hat[:half], x0[:half]).sum())
                bar.update(1)

    grad_model = copy.deepcopy(model).eval().requires_grad_(True)
    params = list(grad_model.parameters())
    n_grad = 0
    for start in grad_starts:
        index = torch.arange(start, min(start + batch_size, n))
        batch = data.batch(index, device)
        eps = noise[index].to(device)
        n_grad += len(index)
        for k, t in enumerate(ts):
            tt = torch.full((len(index),), int(t), device=device, dtype=torch.long)
            loss = objective(grad_model, batch, tt, eps)
            grads = torch.autograd.grad(loss.total, params, allow_unused=True)
            sums["grad_norm"][k] += float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None)))
            bar.update(1)
    bar.close()
    names = [name for name in MODEL_CURVES if name != "grad_norm" or grad_starts]
    values = {name: sums[name] / (len(grad_starts) if name == "grad_norm" else n) for name in names}
    return Curves(source, ts, values, {name: n_grad if name == "grad_norm" else n for name in names})


# ---- orchestration, files and figures ----------------------------------------------------------------------
def _unique(names: list[str]) -> list[str]:
    """Names made unique by appending -2, -3, ... to repeats."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _run_label(run: str | Path) -> str:
    """A run's name in plots: its folder, or ``<combination>`` for ``lesiondiff compare``'s ``<preset>-<mode>/train``."""
    path = Path(run).absolute()  # not resolve(): a symlink's own name is kept as the label
    return path.parent.name if path.name == "train" and path.parent.name else path.name


def write_fingerprint(out: str | Path, manifests: list[str] | tuple = (), runs: list[str] | tuple = (),
                      names: list[str] | None = None, split: str = "test", size: int = 128, every: int = 10,
                      max_images: int | None = None, sigma: float = 2.0, seed: int = 0,
                      window: float = DEFAULT_WINDOW, device: str | None = None, checkpoint: str = "best",
                      batch_size: int = 8, grad_batches: int = 2, progress: bool = True) -> dict:
    """Model curves of every run (on the split of ``manifests[0]``, else of the run's own manifest) and the
    data-set fingerprint of every manifest (else of the runs' manifests), under the noise schedule of the first
    diffusion run (else the default linear 1e-4..2e-2, T=1000); writes the files of the module docstring under
    ``out`` and returns what fingerprint.json holds."""

    if not manifests and not runs:
        raise LesiondiffError("analyze fingerprint needs --manifest or --run")
    if names and len(names) != len(manifests):
        raise LesiondiffError(f"{len(names)} --name for {len(manifests)} --manifest; give one name per manifest")
    if every < 1 or size < 8 or sigma < 0 or (max_images is not None and max_images < 1) or batch_size < 1:
        raise LesiondiffError("need --every >= 1, --size >= 8, --sigma >= 0, --max-images >= 1 and batch size >= 1")
    out = Path(out)
    settings = {"split": split, "size": size, "every": every, "max_images": max_images, "sigma": sigma,
                "seed": seed, "window": window, "checkpoint": checkpoint, "batch_size": batch_size,
                "grad_batches": grad_batches}
    curves: list[Curves] = []
    run_info, skipped = [], []
    schedule: DiffusionConfig | None = None
    run_manifests = []
    for run, source in zip(runs, _unique([_run_label(r) for r in runs])):
        cfg, model = load_run(run, checkpoint, device)
        manifest = manifests[0] if manifests else cfg.data.manifest
        run_manifests.append(manifest)
        info = {"source": source, "run": str(run), "preset": cfg.preset, "model": cfg.model.name,
                "mode": cfg.diffusion.mode, "prediction": model.prediction, "objective": cfg.diffusion.objective,
                "manifest": str(manifest), "size": cfg.data.size, "timesteps": cfg.diffusion.num_train_timesteps}
        if cfg.diffusion.feedforward:
            skipped.append({"source": source, "run": str(run), "reason": "feed-forward run: no timesteps"})
            continue
        schedule = schedule or cfg.diffusion
        _, rows = split_rows(manifest, split, max_images)
        data_cfg = dataclasses.replace(cfg.data, manifest=str(manifest))
        data = load_rows(rows, data_cfg, cfg.data.channels, desc=f"loading {source}")
        curves.append(model_curves(model, cfg, data, source, every, seed, batch_size, grad_batches, progress))
        run_info.append({**info, "n_images": len(data), "grad_images": curves[-1].n_images.get("grad_norm", 0)})
        del model
    schedule = schedule or DiffusionConfig()

    sources = list(manifests) or list(dict.fromkeys(run_manifests))
    datasets, masks_by = [], []
    for path in sources:
        manifest, rows = split_rows(path, split, max_images)
        masks_by.append((dataset_name(manifest, path), path, load_masks(rows, size, desc=f"reading {path}")))
    given = list(names) if names and manifests else [name for name, _, _ in masks_by]
    for name, (_, path, masks) in zip(_unique(given), masks_by):
        fp = dataset_fingerprint(masks, name, schedule, every, sigma, seed, window)
        curves.append(fp)
        r, s = fp.values["recoverability"], fp.values["recoverability_slope"]
        datasets.append({"source": name, "manifest": str(path), "n_images": len(masks),
                         "lesion_fraction": float(masks.float().mean()) if len(masks) else 0.0,
                         "t_below_0.9": first_t(r < 0.9, fp.timesteps),
                         "t_below_0.5": first_t(r < 0.5, fp.timesteps),
                         "t_steepest": int(fp.timesteps[int(np.argmax(s))])})
    for info in run_info:
        c = next(c for c in curves if c.source == info["source"])
        gap = c.values["mask_error_unconditioned"] - c.values["mask_error_conditioned"]
        info["t_image_helps"] = first_t(gap > 0.05, c.timesteps)

    files = _write_outputs(out, curves, run_info, datasets, settings, schedule)
    summary = {"settings": settings, "schedule": dataclasses.asdict(schedule), "protocol": PROTOCOL,
               "runs": run_info, "skipped": skipped, "datasets": datasets,
               "files": [str(f) for f in [*files, out / "fingerprint.json"]]}
    atomic_write_text(out / "fingerprint.json", json.dumps(summary, indent=2))
    return summary


PROTOCOL = {
    "noise": "one seeded standard-normal eps per image (in manifest order), reused at every t",
    "forward": "x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, x0 the mask in {-1,+1}",
    "recoverability": "per-image Dice of (Gaussian_sigma(x_t) > 0) vs x0 at the fingerprint size, mean over "
                      "masks; empty vs empty = 1",
    "recoverability_slope": "-d recoverability/dt (central differences), moving average over `window` timesteps",
    "mask_error_conditioned": "per-image MSE(clip(x0_hat, -1, 1), x0) with the image, EMA weights, eval mode",
    "mask_error_unconditioned": "the same trained model with the image replaced by zeros (mask completion), "
                                "not a separately trained unconditioned model",
    "loss_eps": "MSE(eps_hat, eps); x0 models: eps_hat = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar)",
    "loss_x0": "MSE(x0_hat, x0) unclipped; eps models: x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)",
    "grad_norm": "L2 norm over all parameters of the gradient of the run's training objective at fixed t, "
                 "mean over grad_batches batches, eval mode",
    "t_image_helps": "first t where the unconditioned mask error exceeds the conditioned one by more than 0.05",
}


def _write_outputs(out: Path, curves: list[Curves], runs: list[dict], datasets: list[dict], settings: dict,
                   schedule: DiffusionConfig) -> list[Path]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["source", "curve", "t", "value", "n_images"], lineterminator="\n")
    writer.writeheader()
    for c in curves:
        writer.writerows({**row, "value": f"{row['value']:.6g}"} for row in c.rows())
    atomic_write_text(out / "fingerprint.csv", buffer.getvalue())
    files = [out / "fingerprint.csv"]
    model = [c for c in curves if "mask_error_conditioned" in c.values]
    data = [c for c in curves if "recoverability" in c.values]
    s = settings
    common = f"{s['split']} split, seed {s['seed']}, every {s['every']} t"
    if model:
        n = ", ".join(f"{r['source']} n={r['n_images']}" for r in runs)
        raw = "no smoothing (one fixed noise per image for all t)"
        files.append(model_curves_figure(
            out / "mask_error.png", model, [("mask_error_conditioned", "mask_error_unconditioned")],
            ["mask error MSE(clip(x0_hat), x0)"], f"mask prediction error per timestep\n"
            f"{common}, {n} images, {raw}; dashed: image replaced by zeros"))
        files.append(model_curves_figure(
            out / "loss_per_timestep.png", model, [("loss_eps",), ("loss_x0",)],
            ["eps loss MSE(eps_hat, eps)", "x0 loss MSE(x0_hat, x0), unclipped"],
            f"loss per timestep\n{common}, {n} images, {raw}", log=(False, True)))
        grad = [c for c in model if "grad_norm" in c.values]
        if grad:
            g = ", ".join(f"{r['source']} ({r['objective']}) n={r['grad_images']}" for r in runs if r["grad_images"])
            files.append(model_curves_figure(
                out / "grad_norm.png", grad, [("grad_norm",)], ["||grad of training objective|| (L2, all parameters)"],
                f"gradient norm of each run's own objective per timestep (eval mode)\n{common}, {g} images, {raw}"))
    if data:
        files.append(dataset_fingerprint_figure(out / "dataset_fingerprint.png", data, datasets, settings, schedule))
    return files


def format_table(summary: dict) -> str:
    """A short text table: per data set where recoverability falls below 0.9 and 0.5; per run where the image
    starts to help."""
    s = summary["settings"]

    def fmt(v):
        return "never" if v is None else str(v)

    lines = [f"data-set fingerprint ({s['split']} split, {s['size']} px, sigma {s['sigma']:g} px, seed {s['seed']}, "
             f"every {s['every']} t):",
             f"  {'dataset':<20} {'n':>6} {'R<0.9 at t':>11} {'R<0.5 at t':>11} {'steepest t':>11}"]
    for d in summary["datasets"]:
        lines.append(f"  {d['source']:<20} {d['n_images']:>6} {fmt(d['t_below_0.9']):>11} "
                     f"{fmt(d['t_below_0.5']):>11} {d['t_steepest']:>11}")
    if summary["runs"]:
        lines.append("model curves (unconditioned = same model, image replaced by zeros):")
        lines.append(f"  {'run':<20} {'n':>6} {'image helps from t (gap > 0.05)':>32}")
        for r in summary["runs"]:
            lines.append(f"  {r['source']:<20} {r['n_images']:>6} {fmt(r['t_image_helps']):>32}")
    lines += [f"skipped {k['source']}: {k['reason']}" for k in summary["skipped"]]
    return "\n".join(lines)
