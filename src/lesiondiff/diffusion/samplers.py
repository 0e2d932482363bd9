"""Samplers: ``(model, image, num_samples, steps, generator) -> probs [B,S,1,H,W] in [0,1]``.

All S samples of an image run as one batch, and the image condition is encoded once (``model.encode``) and
reused for every sample and every step. The reverse-process updates come from diffusers schedulers (DDPM,
DDIM, DPM-Solver, DPM-Solver++, UniPC), configured with the same betas the model was trained with.

Choices made here where the papers are silent (configurable through the constructor):
- timesteps use "trailing" spacing, so a 10-step run starts at t = T-1 (pure noise), as the training
  distribution does; "leading" spacing would start at t = 900 and never see pure noise;
- the x0 estimate is clipped to [-1, 1] at every step (masks live in {-1,+1});
- the final sample x_0 in [-1,1] is mapped to a probability by (x_0 + 1) / 2, clipped to [0,1].

The generic samplers live here; each paper's own sampler is in ``methods/`` (UniSegDiff's ``staged``, DiffSeg's
``class_difference``, the refiner's ``refine``). ``lesiondiff.build.build_sampler`` builds any of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)

from ..config import DiffusionConfig
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput
from ..registry import Registry
from .schedules import alphas_cumprod, scheduler_config

SAMPLERS = Registry("sampler")


def model_output(model: Denoiser, out: DenoiserOutput, scale: float = 1.0) -> torch.Tensor:
    """What the scheduler steps with: eps for epsilon designs, x0 in the (input-scaled) diffusion space for x0
    designs."""
    return out.eps if model.prediction == "epsilon" else scale * out.x0_diffusion_space()


def start_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, so a seed gives the same noise on any device."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


# Measured on a 2-core CPU (benchmarks/speed.py): 10 samples in one batch cost 0.60x of 10 single runs at 64 px
# and 0.80x at 128 px, but 1.32x at 256 px, where a batch no longer fits the caches. Batches are therefore cut
# into chunks of at most this many pixels unless ``max_batch`` says otherwise.
AUTO_BATCH_PIXELS = 10 * 128 * 128


def auto_max_batch(height: int, width: int) -> int:
    return max(1, AUTO_BATCH_PIXELS // (height * width))


INDEPENDENT_SAMPLES = "independent draws, each from its own noise"


class Sampler:
    """Base class. ``__call__`` encodes the image once and hands the S samples to ``run`` in chunks.

    ``max_batch``: the most samples per network evaluation (0: ``auto_max_batch``). All starting noise is drawn
    before chunking, so deterministic samplers give the same result for any ``max_batch``.
    """

    scales_input = True  # works in the input-scaled space of diffusion.input_scale (the generic samplers do)

    def __init__(self, cfg: DiffusionConfig, max_batch: int = 0) -> None:
        self.cfg = cfg
        self.max_batch = max_batch

    @torch.inference_mode()
    def __call__(
        self,
        model: Denoiser,
        image: torch.Tensor,
        num_samples: int = 1,
        steps: int = 20,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        b, _, h, w = image.shape
        encoded = model.encode(image)
        x = start_noise((b * num_samples, 1, h, w), generator, image.device)
        owner = torch.arange(b, device=image.device).repeat_interleave(num_samples)  # image of each sample
        chunk = self.max_batch or auto_max_batch(h, w)
        probs = torch.cat([
            self.run(model, x[i:i + chunk], model.take_condition(encoded, owner[i:i + chunk]), steps, generator)
            for i in range(0, b * num_samples, chunk)
        ])
        return probs.clamp(0, 1).reshape(b, num_samples, 1, h, w)

    def run(self, model: Denoiser, x: torch.Tensor, condition, steps: int, generator) -> torch.Tensor:
        raise NotImplementedError

    def visited_timesteps(self, steps: int) -> list[int] | None:
        """The timesteps a ``steps``-step run of this sampler evaluates the network at, noisiest first (what
        ``diffusion.timestep_sampling: aligned`` trains on); None for a sampler without a fixed sequence."""
        return None

    def max_steps(self) -> int | None:
        """The most ``steps`` this sampler can take: the trained timesteps T (a scheduler strides over them), or
        None for a sampler that ignores ``steps``."""
        return self.cfg.num_train_timesteps

    def check_steps(self, steps: int, option: str = "--steps") -> None:
        """A one-line error when ``steps`` is more than :meth:`max_steps` (before any weights load)."""
        most = self.max_steps()
        if most is not None and steps > most:
            raise LesiondiffError(f"{option} {steps}: the run was trained with {most} timesteps "
                                  f"(diffusion.num_train_timesteps), so it can take at most {most} sampling steps")

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        """What sampling one image costs: ``passes``, the network steps one after another (the latency; a batch
        cut into chunks to fit the caches, ``max_batch``, still counts as one step), and ``evaluations``, the
        network evaluations over all samples (the work; a batch of n counts n)."""
        return {"passes": steps, "evaluations": steps * num_samples}

    def samples_note(self, num_samples: int) -> str:
        """What the S samples of one image are, for tables that score them one by one ("round k")."""
        return INDEPENDENT_SAMPLES


class SchedulerSampler(Sampler):
    """The reverse process through a diffusers scheduler: set_timesteps(steps), then step at every t."""

    scheduler_cls: type = DDIMScheduler
    extra: dict = {}

    def __init__(self, cfg: DiffusionConfig, max_batch: int = 0, timestep_spacing: str = "trailing",
                 **overrides) -> None:
        super().__init__(cfg, max_batch)
        scaled = {k: cfg.input_scale for k in ("clip_sample_range", "sample_max_value") if k in self.extra}
        self.kwargs = {**scheduler_config(cfg), "timestep_spacing": timestep_spacing, **self.extra, **scaled,
                       **overrides}

    def make_scheduler(self, model: Denoiser):
        prediction_type = "epsilon" if model.prediction == "epsilon" else "sample"
        return self.scheduler_cls(prediction_type=prediction_type, **self.kwargs)

    def run(self, model: Denoiser, x: torch.Tensor, condition, steps: int, generator,
            on_step: Callable[[int, torch.Tensor, DenoiserOutput], None] | None = None) -> torch.Tensor:
        """``on_step(t, x_t, output)``, if given, sees every step before the update (e.g. to record a
        trajectory, ``analysis/gradcam/trajectory.py``)."""
        scheduler = self.make_scheduler(model)
        scheduler.set_timesteps(steps, device=x.device)
        for t in scheduler.timesteps:
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            out = model.denoise(x, tt, condition)
            if on_step is not None:
                on_step(int(t), x, out)
            x = scheduler.step(model_output(model, out, self.cfg.input_scale), t, x,
                               **self.step_kwargs(generator)).prev_sample
        return (x / self.cfg.input_scale + 1) / 2

    def visited_timesteps(self, steps: int) -> list[int]:
        scheduler = self.scheduler_cls(prediction_type="sample", **self.kwargs)
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]

    def step_kwargs(self, generator) -> dict:
        return {}


@SAMPLERS.register("ddpm")
class DDPMSampler(SchedulerSampler):
    """Ancestral sampling (Ho et al. 2020); with steps < T it strides over the trained timesteps."""

    scheduler_cls = DDPMScheduler
    extra = {"clip_sample": True, "clip_sample_range": 1.0}

    def step_kwargs(self, generator) -> dict:
        return {"generator": generator}


@SAMPLERS.register("ddim")
class DDIMSampler(SchedulerSampler):
    """Deterministic DDIM (eta = 0; Song et al. 2021): randomness only from the starting noise."""

    scheduler_cls = DDIMScheduler
    extra = {"clip_sample": True, "clip_sample_range": 1.0}


@SAMPLERS.register("dpmsolver")
class DPMSolverSampler(SchedulerSampler):
    """DPM-Solver (Lu et al. 2022), second-order multistep, noise-prediction form."""

    scheduler_cls = DPMSolverMultistepScheduler
    extra = {"algorithm_type": "dpmsolver", "solver_order": 2, "final_sigmas_type": "sigma_min"}

    def make_scheduler(self, model: Denoiser):
        """The scheduler, without diffusers' FutureWarning on ``algorithm_type="dpmsolver"``, shown on every
        image. diffusers deprecates the noise-prediction DPM-Solver in favour of DPM-Solver++, a different solver
        (the ``dpmsolver++`` sampler); the scheduler has no other spelling of this one, so that one warning is
        ignored here, where it is built, and nothing else is."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*algorithm_type dpmsolver is deprecated",
                                    category=FutureWarning)
            return super().make_scheduler(model)


@SAMPLERS.register("dpmsolver++")
class DPMSolverPPSampler(SchedulerSampler):
    """DPM-Solver++ (Lu et al. 2022), second-order multistep, data-prediction form with x0 clipped to [-1,1]."""

    scheduler_cls = DPMSolverMultistepScheduler
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": True, "sample_max_value": 1.0}


@SAMPLERS.register("unipc")
class UniPCSampler(SchedulerSampler):
    """UniPC (Zhao et al. 2023), predictor-corrector, with x0 clipped to [-1,1]."""

    scheduler_cls = UniPCMultistepScheduler
    extra = {"thresholding": True, "sample_max_value": 1.0}


@SAMPLERS.register("oneshot")
class OneShotSampler(Sampler):
    """One network evaluation from pure noise at t = T-1.

    For x0 designs (and feed-forward runs) the probability is sigmoid(x0 logits). For eps designs x0 is
    recovered as (x_t - sqrt(1 - abar) eps) / sqrt(abar) and mapped to [0,1]. ``steps`` is ignored.
    """

    def __init__(self, cfg: DiffusionConfig, max_batch: int = 0) -> None:
        super().__init__(cfg, max_batch)
        self.abar_last = alphas_cumprod(cfg)[-1]

    def run(self, model: Denoiser, x: torch.Tensor, condition, steps: int, generator) -> torch.Tensor:
        t_last = self.cfg.num_train_timesteps - 1
        tt = torch.full((x.shape[0],), t_last, device=x.device, dtype=torch.long)
        out = model.denoise(x, tt, condition)
        if model.prediction != "epsilon":
            return torch.sigmoid(out.x0)
        abar, b = self.abar_last.to(x.device), self.cfg.input_scale
        x0 = ((x - (1 - abar).sqrt() * out.eps) / abar.sqrt()).clamp(-b, b) / b
        return (x0 + 1) / 2

    def visited_timesteps(self, steps: int) -> list[int]:
        return [self.cfg.num_train_timesteps - 1]

    def max_steps(self) -> None:
        return None  # steps are ignored

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        return {"passes": 1, "evaluations": num_samples}
