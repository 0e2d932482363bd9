"""``lesiondiff analyze gradcam``: a run and an image in; the figures, gradcam.json and gradcam.md out."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ...errors import LesiondiffError
from ...io_utils import atomic_write_text
from ...render.gradcam_figures import gradcam_figures
from .layers import candidate_layers, format_layers, probe_layers, resolve_views
from .study import GradCamResult, gradcam_analysis
from .summary import format_table, summarise
from .trajectory import DEFAULT_CAM_STEPS


def load_input(image: str | None = None, manifest: str | None = None, id_: str | None = None) -> tuple[str, str]:
    """(id, image path) from ``--image PATH`` or ``--manifest M --id ID``."""
    from ...data.manifest import Manifest
    from ...engine.predict import collect_inputs

    if bool(image) == bool(manifest):
        raise LesiondiffError("give either --image PATH or --manifest M --id ID")
    if image:
        return collect_inputs([image])[0]
    if not id_:
        raise LesiondiffError(f"{manifest}: --id is needed to pick the image")
    rows = Manifest.read(manifest).rows()
    row = next((r for r in rows if r["id"] == id_), None)
    if row is None:
        some = ", ".join(r["id"] for r in rows[:5])
        raise LesiondiffError(f"{manifest}: no row with id {id_!r} (ids include {some})")
    return id_, row["image"]


def write_gradcam(out: str | Path | None, run: str | Path, image: str | None = None, manifest: str | None = None,
                  id_: str | None = None, layers: str | list[str] | None = None, psa_pairs: str | list | None = None,
                  prior_layer: str | None = None, prior_target: str | None = None, steps: int = 20,
                  cam_steps: int = DEFAULT_CAM_STEPS, cam_timesteps: list[int] | None = None, sampler: str = "ddim",
                  seed: int | None = None, threshold: float | None = None, checkpoint: str = "best",
                  device: str | None = None, list_layers: bool = False, progress: bool = True) -> dict:
    """Load a run and an image, run ``gradcam_analysis`` and write the files of the package docstring under
    ``out``; returns what gradcam.json holds. The noise seed is the one ``lesiondiff predict`` uses for this
    image id (from the run's sample.seed, or ``seed``), so the trajectory is the sample ``predict --samples 1``
    draws with the same sampler and steps. ``list_layers``: return {"layers": text} listing every module (for
    the image, or a blank one at the run's size when none is given), and write nothing."""
    from ...data.io import read_image
    from ...data.transforms import preprocess_image
    from ...engine.predict import Predictor, load_run

    if list_layers and not (image or manifest):
        cfg, model = load_run(run, checkpoint, device)
        x = torch.zeros(cfg.data.channels, cfg.data.size, cfg.data.size)
    else:
        id_, path = load_input(image, manifest, id_)
        cfg, model = load_run(run, checkpoint, device)
        d = cfg.data
        x = preprocess_image(read_image(path), d.size, d.channels, d.intensity_window)
    if seed is not None:
        cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, seed=int(seed)))
    if list_layers:
        dev = next(model.parameters()).device
        x_t = torch.randn(1, 1, *x.shape[-2:], generator=torch.Generator().manual_seed(0)).to(dev)
        return {"layers": format_layers(probe_layers(model, x_t, cfg.diffusion.num_train_timesteps - 1,
                                                     x[None].to(dev)))}
    if not out:
        raise LesiondiffError("--out is needed (the folder for the figures and gradcam.json)")
    views = resolve_views(model, layers, psa_pairs, prior_layer, prior_target)
    if not views.grid_layers:
        x_t = torch.zeros(1, 1, *x.shape[-2:], device=next(model.parameters()).device)
        some = ", ".join(candidate_layers(probe_layers(model, x_t, 0, x[None].to(x_t.device))))
        raise LesiondiffError(f"{cfg.model.name} has no default Grad-CAM layers (cam_layers): pass --layers, e.g. "
                              f"{some} (--list-layers shows all)")
    image_seed = Predictor(cfg, model).image_seed(id_)
    result = gradcam_analysis(model, cfg, x, views, steps, cam_steps, cam_timesteps, sampler, image_seed, threshold,
                              progress)
    meta = {"run": str(run), "checkpoint": checkpoint, "model": cfg.model.name, "preset": cfg.preset, "id": id_,
            "image": str(path), "size": d.size, "seed": image_seed, "run_seed": cfg.sample.seed,
            "sampler": sampler, "steps": steps, "requested_timesteps": cam_timesteps,
            "prediction": model.prediction}
    return write_outputs(out, result, meta)


def write_outputs(out: str | Path, result: GradCamResult, meta: dict) -> dict:
    """The figures, gradcam.json and gradcam.md of ``result`` under ``out``; returns the json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(result, meta)
    files = gradcam_figures(out, result, summary)
    summary["files"] = [p.name for p in [*files, out / "gradcam.json", out / "gradcam.md"]]
    atomic_write_text(out / "gradcam.md", format_table(summary))
    atomic_write_text(out / "gradcam.json", json.dumps(summary, indent=2))
    return summary
