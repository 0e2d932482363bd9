"""What gradcam.json and gradcam.md hold: the settings, and per layer and step the share of the map's mass
inside the predicted region R and its peak."""

from __future__ import annotations

import numpy as np

from .cam import target_description
from .study import GradCamResult


def mass_in_region(cam: np.ndarray, region: np.ndarray) -> float | None:
    """Share of a map's mass inside ``region``; None for an all-zero map."""
    total = float(cam.sum())
    return float(cam[region].sum()) / total if total > 0 else None


def summarise(result: GradCamResult, meta: dict) -> dict:
    """What gradcam.json holds (without the file list)."""
    region_arg = None if result.region_empty else result.region
    ts = result.cam_timesteps

    def per_step(name: str) -> list[dict]:
        return [{"t": t, "mass_in_region": None if region_arg is None else mass_in_region(cam, region_arg),
                 "peak": float(peak)} for t, cam, peak in zip(ts, result.cams[name], result.peaks[name])]

    v = result.views
    prior = None
    if v.prior:
        prior = {"layer": v.prior, "target": f"aux[{v.prior_target!r}]", "t": int(result.trajectory.timesteps[
            result.prior_step]), "logit": result.prior_logit, "probability": float(1 / (1 + np.exp(-result.prior_logit))),
            "peak": result.prior_peak,
            "mass_in_region": None if region_arg is None else mass_in_region(result.prior_cam, region_arg)}
    return {
        **meta, "timesteps": [int(t) for t in result.trajectory.timesteps], "cam_timesteps": ts,
        "cam_steps": [int(k) for k in result.cam_steps], "layers": v.groups, "psa_pairs": [list(p) for p in v.psa],
        "target": {"kind": "x0_logits" if result.target == "x0" else "eps",
                   "description": target_description(result.target)},
        "threshold": result.threshold, "region_empty": result.region_empty,
        "region": "whole image (the final prediction is empty)" if result.region_empty else
                  f"final prediction >= {result.threshold:g}",
        "region_fraction": float(result.region.mean()), "final_foreground_fraction":
            float((result.trajectory.final_prob >= result.threshold).mean()),
        "scores": {str(t): float(s) for t, s in zip(ts, result.scores)},
        "normalisation": "ReLU(sum_c mean(grad_c) A_c), bilinear to the network size, divided by its own maximum "
                         "(the raw maximum is 'peak'); mass_in_region = share of the map's sum inside R (None when R "
                         "is the whole image or the map is all zero)",
        "cams": {name: per_step(name) for name in v.layers}, "prior": prior,
    }


def format_table(summary: dict) -> str:
    """gradcam.md: the settings, then per layer and step the share of the CAM's mass inside R and its peak."""
    s = summary
    ts = s["cam_timesteps"]
    lines = [f"# Grad-CAM along one sampling trajectory: {s.get('model', '')} {s.get('run', '')}", "",
             f"- image: {s.get('image', '')} (id {s.get('id', '')}, {s.get('size', '')} px)",
             f"- sampler: {s.get('sampler')} {s.get('steps')} steps, seed {s.get('seed')}; Grad-CAM at t = "
             f"{', '.join(map(str, ts))}",
             f"- target: {s['target']['description']}",
             f"- R: {s['region']} ({100 * s['region_fraction']:.1f}% of the image)", "",
             "Per cell: share of the CAM's mass inside R (peak = raw Grad-CAM maximum). A share above the R "
             f"fraction ({s['region_fraction']:.3f}) means the layer looks at R more than at the rest.", "",
             "| layer | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]

    def cell(entry: dict) -> str:
        share = "n/a" if entry["mass_in_region"] is None else f"{entry['mass_in_region']:.2f}"
        return f"{share} ({entry['peak']:.2g})"

    for name, entries in s["cams"].items():
        lines.append(f"| {name} | " + " | ".join(cell(e) for e in entries) + " |")
    lines += ["", "target value per step: " + ", ".join(f"t={t}: {v:.3g}" for t, v in s["scores"].items())]
    if s.get("prior"):
        p = s["prior"]
        share = "n/a" if p["mass_in_region"] is None else f"{p['mass_in_region']:.2f}"
        lines.append(f"prior: {p['layer']} for {p['target']} = {p['logit']:.3f} (p = {p['probability']:.2f}) at "
                     f"t = {p['t']}: share in R {share}, peak {p['peak']:.2g}")
    return "\n".join(lines) + "\n"
