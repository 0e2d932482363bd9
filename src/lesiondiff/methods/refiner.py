"""The diffusion refiner on a trained feed-forward segmenter (after SegRefiner, HiDiff and PGRD): its few-step
sampler and its prior's pre-training run.

Where the method lives:
- the network (frozen prior U-Net, light correction denoiser whose last layer starts at zero):
  ``models/refiner.py``;
- its training loss: ``x0_hybrid`` (``diffusion/objectives.py``);
- the sampler (``refine``: from noise or from the prior's own mask) and the prior's pre-training config: this
  file (``lesiondiff train --preset refiner`` trains the prior first, then the refiner, in one budget);
- the lesion / no-lesion decision chosen on validation: ``postprocess.py``;
- the settings: ``presets/refiner.yaml``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import Config, DiffusionConfig
from ..diffusion.samplers import INDEPENDENT_SAMPLES, SAMPLERS, Sampler
from ..diffusion.schedules import alphas_cumprod
from ..errors import LesiondiffError
from ..models.base import Denoiser
from ..pretraining import PRETRAINING, segmenter_pretrain_config


@SAMPLERS.register("refine")
class RefineSampler(Sampler):
    """Few-step deterministic DDIM (eta = 0) through the x0 estimate, from pure noise or from a prior's mask.

    For the refiner (``models/refiner.py``). ``start="noise"``: x_{T-1} ~ N(0, I), as every other sampler.
    ``start="prior"`` (SegRefiner's starting point): the model's ``start_mask`` (the prior's binarised mask in
    {-1,+1}) noised to ``start_t``, x = sqrt(abar) m + sqrt(1 - abar) eps, so the samples begin near the prior's
    answer and the steps refine it. ``steps`` network passes at t_k = round(t_0 (steps - k) / steps), k = 0 ..
    steps-1, each followed by the DDIM update to the next t_k (the last one to x_0 itself, i.e. the final x0
    estimate). x0 is the design's x0 head (or derived from eps), clipped to [-1, 1]; the result maps to a
    probability as (x_0 + 1) / 2, which for an x0 head is sigmoid(logits). The S samples differ through their
    starting noise only.
    """

    def __init__(self, cfg: DiffusionConfig, max_batch: int = 0, start: str = "noise", start_t: int = 500) -> None:
        super().__init__(cfg, max_batch)
        if start not in ("noise", "prior"):
            raise LesiondiffError(f"sample.start must be noise or prior, got {start!r}")
        if not 0 < start_t < cfg.num_train_timesteps:
            raise LesiondiffError(f"sample.start_t must lie in 1..{cfg.num_train_timesteps - 1}, got {start_t}")
        self.start, self.start_t = start, start_t
        self.abar = alphas_cumprod(cfg)

    def timesteps(self, steps: int) -> list[int]:
        top = self.cfg.num_train_timesteps - 1 if self.start == "noise" else self.start_t
        steps = max(1, steps)
        return sorted({round(top * (steps - k) / steps) for k in range(steps)}, reverse=True)

    def visited_timesteps(self, steps: int) -> list[int]:
        return self.timesteps(steps)

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        n = len(self.timesteps(steps))
        return {"passes": n, "evaluations": n * num_samples}

    def run(self, model: Denoiser, x: torch.Tensor, condition, steps: int, generator) -> torch.Tensor:
        abar, b = self.abar.to(x.device), self.cfg.input_scale  # b: input scaling (diffusion.input_scale)
        ts = self.timesteps(steps)
        if self.start == "prior":
            if not model.has_prior_mask:
                raise LesiondiffError(f"sample.start=prior needs a design with a prior mask (refiner), not "
                                      f"{type(model).__name__}")
            a = abar[ts[0]]
            x = a.sqrt() * b * model.start_mask(condition) + (1 - a).sqrt() * x
        for k, t in enumerate(ts):
            a = abar[t]
            out = model.denoise(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), condition)
            if out.x0 is not None:
                x0 = b * out.x0_diffusion_space().clamp(-1, 1)
            else:
                x0 = ((x - (1 - a).sqrt() * out.eps) / a.sqrt()).clamp(-b, b)
            if k == len(ts) - 1:
                return (x0 / b + 1) / 2
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            a_next = abar[ts[k + 1]]
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        raise AssertionError("unreachable")

    def samples_note(self, num_samples: int) -> str:
        return (INDEPENDENT_SAMPLES if self.start == "noise" else
                f"independent draws, each from the prior's mask noised to t = {self.start_t} with its own noise")


@PRETRAINING.register("refiner")
def prior_config(cfg: Config) -> dict[str, Config]:
    """The prior's training run: the feed-forward U-Net with the model section's layout, Dice + BCE on the
    same data, for ``prior_fraction`` of the steps and of the time budget. With ``prior_folds`` = F, F + 1 runs
    share that fraction equally: the full prior ("prior") and fold prior k ("prior-fold-<k>") on the training
    images outside fold k (``data.train_folds`` [F, k])."""
    options = cfg.model.options or {}
    fraction, folds = float(options.get("prior_fraction", 0.6)), int(options.get("prior_folds", 0) or 0)
    share = fraction / (folds + 1)
    runs = {"prior": segmenter_pretrain_config(cfg, share, cfg.model.base_channels, "prior")}
    for k in range(folds):
        run = segmenter_pretrain_config(cfg, share, cfg.model.base_channels, f"prior-fold-{k}")
        runs[f"prior-fold-{k}"] = dataclasses.replace(run, data=dataclasses.replace(run.data, train_folds=[folds, k]))
    return runs
