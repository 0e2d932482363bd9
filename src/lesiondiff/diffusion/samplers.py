"""Samplers: ``(model, image, num_samples, steps, generator) -> probs [B,S,1,H,W] in [0,1]``.

All S samples of an image run as one batch, and the image condition is encoded once (``model.encode``) and
reused for every sample and every step. The reverse-process updates come from diffusers schedulers (DDPM,
DDIM, DPM-Solver, DPM-Solver++, UniPC), configured with the same betas the model was trained with.

Choices made here where the papers are silent (configurable through the constructor):
- timesteps use "trailing" spacing, so a 10-step run starts at t = T-1 (pure noise), as the training
  distribution does; "leading" spacing would start at t = 900 and never see pure noise;
- the x0 estimate is clipped to [-1, 1] at every step (masks live in {-1,+1});
- the final sample x_0 in [-1,1] is mapped to a probability by (x_0 + 1) / 2, clipped to [0,1].

``class_difference`` (DiffSeg) is not a reverse process: it noises the image once per output and compares a
class-conditional image model's noise predictions under two classes (see its docstring).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)

from ..config import DiffusionConfig
from ..data.transforms import gaussian_blur
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput
from ..registry import Registry
from .schedules import alphas_cumprod, scheduler_config
from .staging import Stages

SAMPLERS = Registry("sampler")


def model_output(model: Denoiser, out: DenoiserOutput) -> torch.Tensor:
    """What the scheduler steps with: eps for epsilon designs, x0 in diffusion space for x0 designs."""
    return out.eps if model.prediction == "epsilon" else out.x0_diffusion_space()


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
        self.kwargs = {**scheduler_config(cfg), "timestep_spacing": timestep_spacing, **self.extra, **overrides}

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
            x = scheduler.step(model_output(model, out), t, x, **self.step_kwargs(generator)).prev_sample
        return (x + 1) / 2

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
        abar = self.abar_last.to(x.device)
        x0 = ((x - (1 - abar).sqrt() * out.eps) / abar.sqrt()).clamp(-1, 1)
        return (x0 + 1) / 2

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        return {"passes": 1, "evaluations": num_samples}


@SAMPLERS.register("staged")
class StagedSampler(Sampler):
    """UniSegDiff's staged inference (shared paper 002, sec. 2.2) for designs with eps and x0 decoders.

    Per image, with the stage thresholds of the run (``diffusion/staging.py``; 600 and 300 by default):
    1. one x_{T-1} ~ N(0, I); one call of the x0 decoder (network t = T - 1) and a DDIM step straight to
       x_{high-1} (x_599);
    2. DDIM (eta = 0) every ``stride`` (30) timesteps from high-1 down to low-1 (599 -> 569 -> ... -> 299: ten
       calls), once through the x0 decoder and once through the eps decoder, both branches in one batch: two
       x_299;
    3. each branch's x_299 is sampled K times in one step to x_0 through the eps decoder (network t = 0, the
       refinement stage's remapping; the conversion to x_0 uses the true t = 299). S = 2K masks per image; the
       paper's S = 20. An odd S gives the x0 branch one more.
    The paper does not say where the K one-step samples of one x_299 differ, since the refinement step is
    deterministic. Ours: the last DDIM step into x_299 is stochastic with ``final_eta`` (1: the DDPM posterior
    variance, the usual DDIM eta) and is drawn K times per branch, so each of the K samples starts from its own
    x_299 of the branch's distribution. ``final_eta=0`` makes the K samples of a branch identical.
    x0 estimates are clipped to [-1, 1] at every step; the final x_0 maps to a probability as (x_0 + 1) / 2.
    ``steps`` is ignored: the schedule fixes the calls (``network_calls``: 12 passes, 1 + 2 x 10 + S
    evaluations per image with the defaults; the paper counts its schedule as 11 steps).
    """

    def __init__(self, cfg: DiffusionConfig, max_batch: int = 0, stride: int = 30, final_eta: float = 1.0) -> None:
        super().__init__(cfg, max_batch)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stages = Stages.from_options(cfg)
        self.abar = alphas_cumprod(cfg).double()
        self.stride, self.final_eta = stride, final_eta

    def middle_timesteps(self) -> list[int]:
        """The DDIM timesteps of stage 2: high-1, high-1-stride, ... while above low-1."""
        return list(range(self.stages.high - 1, self.stages.low - 1, -self.stride))

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        branches = 1 if num_samples == 1 else 2
        middle = len(self.middle_timesteps())
        return {"passes": 2 + middle, "evaluations": 1 + branches * middle + num_samples}

    def _denoise(self, model: Denoiser, x: torch.Tensor, t: int, condition, owner: torch.Tensor) -> DenoiserOutput:
        """One network pass over the rows of ``x`` (row r belongs to image ``owner[r]``), in chunks of at most
        ``max_batch`` rows, at network timestep ``network_t(t)``."""
        net_t = int(self.stages.network_t(torch.tensor([t]))[0])
        chunk = self.max_batch or auto_max_batch(*x.shape[-2:])
        outs = []
        for i in range(0, x.shape[0], chunk):
            xi = x[i:i + chunk]
            tt = torch.full((xi.shape[0],), net_t, device=x.device, dtype=torch.long)
            outs.append(model.denoise(xi, tt, model.take_condition(condition, owner[i:i + chunk])))
        return DenoiserOutput(eps=torch.cat([o.eps for o in outs]), x0=torch.cat([o.x0 for o in outs]))

    def _ab(self, t: int, x: torch.Tensor) -> torch.Tensor:
        return self.abar[t].to(x.device, torch.float32)

    def _estimates(self, x: torch.Tensor, t: int, out: DenoiserOutput, through_x0: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) estimates at t: rows where ``through_x0`` from the x0 decoder, the others from the eps
        decoder; x0 clipped to [-1, 1] and eps recomputed from it where it was derived from x0."""
        ab = self._ab(t, x)
        x0_from_eps = ((x - (1 - ab).sqrt() * out.eps) / ab.sqrt()).clamp(-1, 1)
        x0_direct = out.x0_diffusion_space()
        eps_from_x0 = (x - ab.sqrt() * x0_direct) / (1 - ab).sqrt()
        sel = through_x0.view(-1, 1, 1, 1)
        return torch.where(sel, x0_direct, x0_from_eps), torch.where(sel, eps_from_x0, out.eps)

    def _ddim(self, x0: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t_prev} from the (x0, eps) estimates at t (Song et al. 2021, Eq. 12)."""
        ab, ab_prev = self._ab(t, x0), self._ab(t_prev, x0)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp_min(0).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp_min(0).sqrt() * eps
        return x if noise is None else x + sigma * noise

    @torch.inference_mode()
    def __call__(self, model: Denoiser, image: torch.Tensor, num_samples: int = 20, steps: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = image.shape
        dev = image.device
        condition = model.encode(image)
        images = torch.arange(b, device=dev)
        counts = [(num_samples + 1) // 2, num_samples // 2]  # samples from the x0 and the eps branch
        counts = [c for c in counts if c > 0]
        t_top, rapid_end = self.cfg.num_train_timesteps - 1, self.stages.high - 1
        # 1. rapid segmentation: one x0 step from x_{T-1} to x_{high-1}
        x = start_noise((b, 1, h, w), generator, dev)
        out = self._denoise(model, x, t_top, condition, images)
        x0, eps = self._estimates(x, t_top, out, torch.ones(b, dtype=torch.bool, device=dev))
        x = self._ddim(x0, eps, t_top, rapid_end)
        # 2. probabilistic modelling: DDIM in both branches (branch-major rows: x0 branch first)
        n_branch = len(counts)
        owner = images.repeat(n_branch)
        through_x0 = torch.arange(n_branch, device=dev).repeat_interleave(b) == 0
        x = x.repeat(n_branch, 1, 1, 1)
        middle = self.middle_timesteps()
        for i, t in enumerate(middle):
            t_prev = max(t - self.stride, self.stages.low - 1)
            out = self._denoise(model, x, t, condition, owner)
            x0, eps = self._estimates(x, t, out, through_x0)
            if i < len(middle) - 1:
                x = self._ddim(x0, eps, t, t_prev)
                continue
            # the last step into x_{low-1}: drawn K times per branch (rows: branch, image, sample)
            reps = torch.cat([torch.full((b,), counts[k], dtype=torch.long, device=dev) for k in range(n_branch)])
            x0, eps = x0.repeat_interleave(reps, 0), eps.repeat_interleave(reps, 0)
            noise = start_noise(tuple(x0.shape), generator, dev)
            x = self._ddim(x0, eps, t, t_prev, self.final_eta, noise)
            owner = owner.repeat_interleave(reps)
        # 3. denoising refinement: one eps step from x_{low-1} to x_0
        t_end = self.stages.low - 1
        out = self._denoise(model, x, t_end, condition, owner)
        x0, _ = self._estimates(x, t_end, out, torch.zeros(x.shape[0], dtype=torch.bool, device=dev))
        probs = ((x0 + 1) / 2).clamp(0, 1)
        # rows are (branch, image, sample): regroup to [b, S] with the x0 branch's samples first
        per_image = [probs[sum(counts[:k]) * b:sum(counts[:k + 1]) * b].reshape(b, counts[k], 1, h, w)
                     for k in range(n_branch)]
        return torch.cat(per_image, dim=1)


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

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        n = len(self.timesteps(steps))
        return {"passes": n, "evaluations": n * num_samples}

    def run(self, model: Denoiser, x: torch.Tensor, condition, steps: int, generator) -> torch.Tensor:
        abar = self.abar.to(x.device)
        ts = self.timesteps(steps)
        if self.start == "prior":
            if not hasattr(model, "start_mask"):
                raise LesiondiffError(f"sample.start=prior needs a design with a prior mask (refiner), not "
                                      f"{type(model).__name__}")
            a = abar[ts[0]]
            x = a.sqrt() * model.start_mask(condition) + (1 - a).sqrt() * x
        for k, t in enumerate(ts):
            a = abar[t]
            out = model.denoise(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), condition)
            if out.x0 is not None:
                x0 = out.x0_diffusion_space().clamp(-1, 1)
            else:
                x0 = ((x - (1 - a).sqrt() * out.eps) / a.sqrt()).clamp(-1, 1)
            if k == len(ts) - 1:
                return (x0 + 1) / 2
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            a_next = abar[ts[k + 1]]
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        raise AssertionError("unreachable")

    def samples_note(self, num_samples: int) -> str:
        return (INDEPENDENT_SAMPLES if self.start == "noise" else
                f"independent draws, each from the prior's mask noised to t = {self.start_t} with its own noise")


# DiffSeg's inference settings (``class_difference``), read from ``diffusion.objective_options`` as the staged
# thresholds are, so that a run's config holds them and ``lesiondiff predict --set`` can change them; the
# ``class_eps`` objective accepts them as its options too. Numbers only (flags are 0/1).
CLASS_DIFFERENCE_DEFAULTS = {"t_first": 60.0, "t_stride": 10.0, "sigma": 1.0, "otsu": 1.0, "threshold": 0.1,
                             "temperature": 1.0, "shared_noise": 1.0}


@SAMPLERS.register("class_difference")
class ClassDifferenceSampler(Sampler):
    """DiffSeg's segmentation by diffusion difference ("DiffSeg: A Segmentation Model for Skin Lesions Based on
    Diffusion Difference", Eq. 2 and Sec. 4.1) for class-conditional image models (``models/diffseg.py``).

    For each image x_0 and each of S timesteps t_k = ``t_first + k * t_stride`` (k < S; the defaults give the
    paper's 60, 70, ..., 150 for S = 10, and S picks how many):
    1. x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, with eps [C,H,W] standard normal from ``generator`` (the
       Predictor seeds it from sample.seed and the image id). ``shared_noise`` (default 1): one eps per image
       for all S timesteps, so the outputs differ only in t, as the paper's outputs "at different noise addition
       levels" (its Fig. 4); 0 draws an independent eps per output;
    2. eps_c0 = f(x_t, c0, t) and eps_c1 = f(x_t, c1, t): all 2S rows of an image in one batch;
    3. d = sum over channels of |eps_c0 - eps_c1|, smoothed by a Gaussian of ``sigma`` px (0: none);
    4. Eq. 2's binarisation y = d > delta, with delta per map by Otsu's method (``otsu`` 1, the default;
       skimage's ``threshold_otsu``, foreground strictly above it) or the fixed ``threshold`` (``otsu`` 0; the
       paper gives no value). Its output is a probability:
           p = sigmoid((d - delta) / (temperature * std(d))),
       with std(d) the spread of that map, then pushed just past 0.5 on the side of the binarisation
       (p > 0.5 exactly where d > delta), so ``p >= 0.5`` is exactly y in floating point, and p keeps the order
       of d, which DenseCRF's unary (the paper's "noise difference") needs. A constant map (e.g. identical class
       embeddings) gives delta = d and an empty mask.
    Returns probs [B,S,1,H,W] in [0,1]. ``steps`` is ignored (one network pass per image): ``network_calls``
    is 1 pass of 2S evaluations per image (in chunks of at most ``max_batch`` rows). Settings: ``CLASS_DIFFERENCE_DEFAULTS``, from ``diffusion.objective_options``, overridden
    by constructor keywords.
    """

    def __init__(self, cfg: DiffusionConfig, max_batch: int = 0, **options: float) -> None:
        super().__init__(cfg, max_batch)
        unknown = sorted(set(options) - set(CLASS_DIFFERENCE_DEFAULTS))
        if unknown:
            raise ValueError(f"class_difference has no option {unknown[0]!r}")
        given = {k: v for k, v in (cfg.objective_options or {}).items() if k in CLASS_DIFFERENCE_DEFAULTS}
        o = {k: float(v) for k, v in {**CLASS_DIFFERENCE_DEFAULTS, **given, **options}.items()}
        if o["t_first"] != int(o["t_first"]) or o["t_stride"] != int(o["t_stride"]) or o["t_first"] < 0 \
                or o["t_stride"] < 1:
            raise LesiondiffError(f"class_difference timesteps: t_first must be a whole number >= 0 and t_stride "
                                  f"one >= 1, got {o['t_first']:g} and {o['t_stride']:g}")
        if o["sigma"] < 0 or o["temperature"] <= 0:
            raise LesiondiffError(f"class_difference needs sigma >= 0 and temperature > 0, got {o['sigma']:g} and "
                                  f"{o['temperature']:g}")
        self.t_first, self.t_stride = int(o["t_first"]), int(o["t_stride"])
        self.sigma, self.threshold, self.temperature = o["sigma"], o["threshold"], o["temperature"]
        self.otsu, self.shared_noise = bool(o["otsu"]), bool(o["shared_noise"])
        self.abar = alphas_cumprod(cfg)

    def timesteps(self, num_samples: int) -> list[int]:
        """The S timesteps t_k = t_first + k * t_stride, k < S."""
        ts = [self.t_first + k * self.t_stride for k in range(num_samples)]
        if ts and ts[-1] >= self.cfg.num_train_timesteps:
            raise LesiondiffError(f"class_difference: {num_samples} outputs need timesteps up to {ts[-1]}, beyond "
                                  f"the schedule's T = {self.cfg.num_train_timesteps}")
        return ts

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        return {"passes": 1, "evaluations": 2 * num_samples}

    def samples_note(self, num_samples: int) -> str:
        ts = self.timesteps(num_samples)
        listed = ", ".join(map(str, ts)) if len(ts) <= 3 else f"{ts[0]}, {ts[1]}, ..., {ts[-1]}"
        where = f"t = {listed}" + (" in order" if len(ts) > 1 else "")
        noise = "one shared noise image" if self.shared_noise else "its own noise"
        return f"one class-difference mask per timestep, {where}, each from {noise}"

    @torch.inference_mode()
    def difference(self, model: Denoiser, image: torch.Tensor, num_samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """The smoothed class difference d [B,S,H,W] >= 0 (steps 1-3 of the class docstring)."""
        if not hasattr(model, "noise_prediction"):
            raise LesiondiffError(f"sampler class_difference needs a class-conditional image model (diffseg); "
                                  f"{type(model).__name__} denoises masks")
        b, c, h, w = image.shape
        dev, s = image.device, num_samples
        ts = torch.tensor(self.timesteps(s), device=dev)
        x0 = model.encode(image).float()
        noise = start_noise((b, 1 if self.shared_noise else s, c, h, w), generator, dev).expand(b, s, c, h, w)
        abar = self.abar.to(dev, torch.float32)[ts].view(1, s, 1, 1, 1)
        x_t = abar.sqrt() * x0[:, None] + (1 - abar).sqrt() * noise  # [B,S,C,H,W]
        # rows per image: the S noisy images under c0, then the same S under c1
        x = torch.cat([x_t, x_t], 1).reshape(b * 2 * s, c, h, w)
        t_rows = ts.repeat(2 * b)
        cls = torch.arange(2, device=dev).repeat_interleave(s).repeat(b)
        chunk = self.max_batch or auto_max_batch(h, w)
        eps = torch.cat([model.noise_prediction(x[i:i + chunk], t_rows[i:i + chunk], cls[i:i + chunk])
                         for i in range(0, x.shape[0], chunk)]).float().reshape(b, 2, s, c, h, w)
        d = (eps[:, 0] - eps[:, 1]).abs().sum(2)
        if self.sigma > 0:
            d = gaussian_blur(d.reshape(b * s, h, w), self.sigma).reshape(b, s, h, w)
        return d

    def thresholds(self, d: torch.Tensor) -> torch.Tensor:
        """delta [B,S,1,1] float64 for maps d [B,S,H,W]: Otsu's per map, or the fixed ``threshold``."""
        if not self.otsu:
            return torch.full((*d.shape[:2], 1, 1), self.threshold, dtype=torch.float64, device=d.device)
        from skimage.filters import threshold_otsu

        maps = d.double().cpu().numpy()
        delta = np.array([[threshold_otsu(m) for m in row] for row in maps], dtype=np.float64)
        return torch.from_numpy(delta).to(d.device).view(*d.shape[:2], 1, 1)

    def probability(self, d: torch.Tensor) -> torch.Tensor:
        """Maps d [B,S,H,W] -> probs [B,S,H,W] in [0,1] with ``probs >= 0.5`` exactly ``d > delta``."""
        delta = self.thresholds(d)
        spread = d.flatten(2).std(-1).view(*d.shape[:2], 1, 1).clamp_min(torch.finfo(d.dtype).tiny)
        p = torch.sigmoid((d - delta.to(d.dtype)) / (self.temperature * spread))
        half = torch.tensor(0.5, dtype=p.dtype, device=p.device)
        above, below = torch.nextafter(half, torch.ones_like(half)), torch.nextafter(half, torch.zeros_like(half))
        return torch.where(d.double() > delta, p.clamp_min(above), p.clamp_max(below))

    @torch.inference_mode()
    def __call__(self, model: Denoiser, image: torch.Tensor, num_samples: int = 10, steps: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.probability(self.difference(model, image, num_samples, generator)).unsqueeze(2)


def build_sampler(name: str, cfg: DiffusionConfig, max_batch: int = 0, **options) -> Sampler:
    """Feed-forward runs always use the one-shot sampler: they were never trained on intermediate x_t.
    ``options`` (e.g. the ``sample`` section's ``start`` and ``start_t``) reach the samplers that take them."""
    if cfg.mode == "feedforward":
        name = "oneshot"
    factory = SAMPLERS.get(name)
    accepted = inspect.signature(factory).parameters
    return factory(cfg=cfg, max_batch=max_batch, **{k: v for k, v in options.items() if k in accepted})


def sample_options(sample) -> dict:
    """The ``sample`` section's settings that only some samplers take (``build_sampler``'s ``options``)."""
    return {"start": sample.start, "start_t": sample.start_t}
