"""The protocol of the package docstring (``gradcam_analysis``): check the layers, sample one trajectory, and
compute every layer's Grad-CAM at the chosen steps, and the prior view."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...config import Config
from ...errors import LesiondiffError
from ...models import Denoiser
from .cam import CamTarget, aux_logit, layer_cams, scale_to_max
from .layers import CamViews, check_layers, probe_layers
from .trajectory import DEFAULT_CAM_STEPS, Trajectory, choose_steps, sample_trajectory, timestep_batch


@dataclass
class GradCamResult:
    """Everything ``write_gradcam`` draws and summarises. Arrays are at the network size H x W.

    cams[layer] [K,H,W] in [0,1] (each map divided by its own maximum), peaks[layer] [K] the raw maxima,
    scores [K] the target value at each chosen step, region [H,W] bool (R, or all True when the prediction was
    empty), image [C,H,W] in [-1,1] the network input, prior_cam [H,W] with prior_peak / prior_logit at
    trajectory step prior_step.
    """

    views: CamViews
    trajectory: Trajectory
    cam_steps: list[int]
    cams: dict[str, np.ndarray]
    peaks: dict[str, np.ndarray]
    scores: np.ndarray
    region: np.ndarray
    region_empty: bool
    target: str
    threshold: float
    image: np.ndarray
    prior_cam: np.ndarray | None = None
    prior_peak: float | None = None
    prior_logit: float | None = None
    prior_step: int | None = None

    @property
    def cam_timesteps(self) -> list[int]:
        return [int(self.trajectory.timesteps[k]) for k in self.cam_steps]


def gradcam_analysis(model: Denoiser, cfg: Config, image: torch.Tensor, views: CamViews, steps: int = 20,
                     cam_steps: int = DEFAULT_CAM_STEPS, cam_timesteps: list[int] | None = None,
                     sampler: str = "ddim", seed: int = 0, threshold: float | None = None,
                     progress: bool = True) -> GradCamResult:
    """The protocol of the package docstring for ``image`` [C,H,W] (or [1,C,H,W]) in [-1,1] at the network size.

    ``model`` is left as it is: the analysis runs on a copy (eval mode, gradients on, default memory layout), so
    MONAI's hooks never touch the caller's model.
    """
    from ...diffusion.schedules import alphas_cumprod

    if not views.grid_layers:
        raise LesiondiffError("no layers for the Grad-CAM grid: pass --layers")
    device = next(model.parameters()).device
    work = copy.deepcopy(model).eval().requires_grad_(True).to(memory_format=torch.contiguous_format)
    x_image = (image if image.dim() == 4 else image[None]).to(device).float().contiguous()
    threshold = cfg.sample.threshold if threshold is None else float(threshold)
    # check the layers and the prior target before sampling, so a typo costs one forward pass
    blank, t_last = torch.zeros_like(x_image[:, :1]), cfg.diffusion.num_train_timesteps - 1
    layers = views.layers + ([views.prior] if views.prior and views.prior not in views.layers else [])
    check_layers(work, layers, probe_layers(work, blank, t_last, x_image))
    if views.prior_target:
        with torch.no_grad():
            aux_logit(work(blank, timestep_batch(t_last, blank), x_image), views.prior_target)

    generator = torch.Generator().manual_seed(int(seed))
    traj, kind = sample_trajectory(work, cfg, x_image, steps, sampler, generator)
    chosen = choose_steps(traj.timesteps, cam_steps, cam_timesteps)
    region = traj.final_prob >= threshold
    region_empty = not region.any()
    if region_empty:
        region = np.ones_like(region)
    x_t = torch.from_numpy(traj.x_t)[:, None, None].to(device)  # [N,1,1,H,W]

    target = CamTarget(work, x_image, alphas_cumprod(cfg.diffusion).to(device)).eval()
    target.region = torch.from_numpy(region.astype(np.float32))[None, None].to(device)
    at = layer_cams(target, views.layers)
    raw = []
    scores = []
    for k in tqdm(chosen, desc="grad-cam", unit="step", leave=False, disable=not progress):
        maps, score = at(x_t[k], int(traj.timesteps[k]))
        raw.append(maps)
        scores.append(score)
    raw = np.stack(raw, axis=1)  # [L,K,H,W]
    cams, peaks = {}, {}
    for name, maps in zip(views.layers, raw):
        scaled = [scale_to_max(m) for m in maps]
        cams[name] = np.stack([s for s, _ in scaled])
        peaks[name] = np.array([p for _, p in scaled])

    result = GradCamResult(views, traj, chosen, cams, peaks, np.array(scores), region, bool(region_empty), kind,
                           threshold, x_image[0].cpu().numpy())
    if views.prior:
        k = chosen[-1]
        target.aux_key = views.prior_target
        maps, logit = layer_cams(target, [views.prior])(x_t[k], int(traj.timesteps[k]))
        result.prior_cam, result.prior_peak = scale_to_max(maps[0])
        result.prior_logit, result.prior_step = logit, k
    return result
