"""Training objectives: ``(model, batch, t, noise) -> LossOutput(total, parts)``, and timestep samplers.

batch: {"image": [B,C,H,W] in [-1,1], "mask": [B,1,H,W] in {-1,+1}, ...}; t: [B] integer timesteps; noise:
[B,1,H,W] standard normal, or [B,C,H,W] like the image for objectives whose ``noise_like`` is "image" (the
Trainer draws it that shape). Parts are detached scalars logged by name.

Timestep samplers ``(batch_size, generator) -> t [B]`` say which t the Trainer trains on: ``uniform`` (Ho et
al. 2020) or ``fingerprint``, which emphasises the timesteps where the masks' information is being lost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DiffusionConfig
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput
from ..registry import Registry
from .samplers import CLASS_DIFFERENCE_DEFAULTS
from .schedules import training_scheduler
from .staging import STAGE_DEFAULTS, STAGE_NAMES, Stages

OBJECTIVES = Registry("objective")


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def soft_dice_per_image(logits: torch.Tensor, target01: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of each image [B] (``soft_dice_loss`` before the batch mean)."""
    p = torch.sigmoid(logits).flatten(1)
    y = target01.flatten(1)
    return 1 - (2 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)


def soft_dice_loss(logits: torch.Tensor, target01: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image (smoothing ``eps`` so empty masks give a finite, small loss), averaged."""
    return soft_dice_per_image(logits, target01, eps).mean()


def dice_bce(logits: torch.Tensor, target01: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Equal-weight soft Dice + binary cross-entropy, as the feed-forward runs of the Analysing study."""
    dice = soft_dice_loss(logits, target01)
    bce = F.binary_cross_entropy_with_logits(logits, target01)
    return dice + bce, {"dice": dice.detach(), "bce": bce.detach()}


class Objective:
    """Base: holds the forward process; subclasses implement ``__call__``.

    ``weights``: the objective's loss weights, ``defaults`` updated by ``diffusion.objective_options``; an
    option the objective does not know is an error.
    """

    defaults: dict[str, float] = {}

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.cfg = cfg
        self.scheduler = training_scheduler(cfg)
        options = dict(cfg.objective_options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise LesiondiffError(f"diffusion.objective_options: {unknown[0]!r} is not an option of objective "
                                  f"{cfg.objective!r} (known: {known})")
        try:
            self.weights = {**self.defaults, **{k: float(v) for k, v in options.items()}}
        except (TypeError, ValueError):
            raise LesiondiffError(f"diffusion.objective_options must be numbers, got {options}") from None

    def noisy(self, mask: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0 = mask)."""
        abar = self.scheduler.alphas_cumprod.to(mask.device, mask.dtype)[t].view(-1, 1, 1, 1)
        return abar.sqrt() * mask + (1 - abar).sqrt() * noise

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        raise NotImplementedError


@OBJECTIVES.register("eps_mse")
class EpsMSE(Objective):
    """L = || eps - eps_theta(x_t, t, image) ||^2 (Ho et al. 2020), the loss of EnsemDiff, SegDiff, MedSegDiff."""

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), t, batch["image"])
        mse = F.mse_loss(out.eps, noise)
        return LossOutput(mse, {"mse": mse.detach()})


@OBJECTIVES.register("x0_hybrid")
class X0Hybrid(Objective):
    """For x0-predicting designs: MSE between tanh(x0/2) and the mask in diffusion space, plus Dice + BCE."""

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), t, batch["image"])
        mse = F.mse_loss(out.x0_diffusion_space(), batch["mask"])
        seg, parts = dice_bce(out.x0, (batch["mask"] > 0).float())
        return LossOutput(mse + seg, {"mse": mse.detach(), **parts})


def symmetric_bernoulli_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel KL(p||q) + KL(q||p) of Bernoulli(p = sigmoid(a)) and Bernoulli(q = sigmoid(b)), from logits.

    Closed form: (p - q) * (a - b), since log(p / (1-p)) = a. Non-negative, 0 exactly where a = b, and finite
    for any logits (no log of a saturated probability).
    """
    return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)


def distillation_bce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE of sigmoid(logits) against the detached soft target q = sigmoid(target_logits), minus the
    target's own entropy H(q): that is KL(q || p). The gradient is BCE's (H(q) is a constant once q is
    detached), and the value is 0 when the two agree (plain soft-target BCE would bottom out at H(q) > 0)."""
    target_logits = target_logits.detach()
    q = torch.sigmoid(target_logits)
    return (F.binary_cross_entropy_with_logits(logits, q, reduction="none")
            - F.binary_cross_entropy_with_logits(target_logits, q, reduction="none"))


def branch_alignment(a: torch.Tensor, b: torch.Tensor, w_kl: float = 1.0, w_bce: float = 1.0) -> tuple[
        torch.Tensor, dict[str, torch.Tensor]]:
    """PalScDiff's alignment loss between two branches' mask logits a, b [B,1,H,W] (pixel means):
    ``w_kl * symKL(a, b) + w_bce * (BCE(a | sg(b)) + BCE(b | sg(a))) / 2`` with the BCE terms as in
    ``distillation_bce``. 0 for identical predictions, positive otherwise."""
    kl = symmetric_bernoulli_kl(a, b).mean()
    bce = (distillation_bce(a, b).mean() + distillation_bce(b, a).mean()) / 2
    return w_kl * kl + w_bce * bce, {"align_kl": kl.detach(), "align_bce": bce.detach()}


@OBJECTIVES.register("eps_bce_align")
class EpsBCEAlign(Objective):
    """PalScDiff: L = ||eps - eps_theta||^2 + w_bce BCE(x0 logits, mask) + alignment (``branch_alignment``)
    between the two IBPA branches' x0 logits (``aux["x0_branch0"]``, ``aux["x0_branch1"]``).

    The paper's equations were lost in extraction; its text says the diffusion loss holds the noise MSE and a
    BCE on the predicted mask, and the alignment loss combines KL divergence and BCE between the branches. The
    exact forms here are ours: the BCE is on the model's x0 logits (the mean of the branches; ``models/
    palscdiff.py``), the KL is the symmetric Bernoulli KL per pixel, and each branch is pulled by BCE towards
    the other's detached prediction. A one-branch model (the ablation baseline) gets no alignment term.
    Weights (``diffusion.objective_options``, all 1 by default, not given in the paper): ``bce``, ``align_kl``,
    ``align_bce``.
    """

    defaults = {"bce": 1.0, "align_kl": 1.0, "align_bce": 1.0}

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), t, batch["image"])
        if out.eps is None or out.x0 is None:
            raise LesiondiffError("objective eps_bce_align needs a design that predicts both eps and x0 "
                                  "(e.g. palscdiff)")
        w = self.weights
        mse = F.mse_loss(out.eps, noise)
        bce = F.binary_cross_entropy_with_logits(out.x0, (batch["mask"] > 0).float())
        total, parts = mse + w["bce"] * bce, {"mse": mse.detach(), "bce": bce.detach()}
        if "x0_branch0" in out.aux and "x0_branch1" in out.aux:
            align, align_parts = branch_alignment(out.aux["x0_branch0"], out.aux["x0_branch1"], w["align_kl"],
                                                  w["align_bce"])
            total = total + align
            parts.update(align_parts)
        return LossOutput(total, parts)


def prior_losses(prior_logit: torch.Tensor, prior_mask: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """PGDiffSeg's prior-supervision terms (Eqs. 7-9) for one batch.

    prior_logit [B,1]: "is there a lesion?" logits, against 1 where the mask has any foreground (BUSI's normal
    images give the negatives). prior_mask [B,1,h,w]: auxiliary mask logits at a coarse size, against the mask
    area-averaged down to h x w (a soft target: the fraction of each coarse cell that is lesion). Returns the
    unweighted ``cls`` (BCE), ``prior_dice`` (soft Dice loss) and ``prior_bce`` terms.
    """
    target01 = (mask > 0).float()
    present = (target01.flatten(1).amax(1, keepdim=True) > 0).float()
    small = F.adaptive_avg_pool2d(target01, prior_mask.shape[-2:])
    return {"cls": F.binary_cross_entropy_with_logits(prior_logit, present),
            "prior_dice": soft_dice_loss(prior_mask, small),
            "prior_bce": F.binary_cross_entropy_with_logits(prior_mask, small)}


@OBJECTIVES.register("eps_prior")
class EpsPrior(Objective):
    """PGDiffSeg (Eq. 10): L = ||eps - eps_theta||^2 + w_bce BCE(x0 logits, mask) + w_cls BCE(prior class)
    + w_prior_dice Dice(prior mask) + w_prior_bce BCE(prior mask) (``prior_losses``).

    The paper's total loss adds the noise MSE (Eq. 19), the classification BCE (Eq. 7) and the prior mask's
    Dice and BCE (Eqs. 8-9); its weights were lost in extraction, so all default to 1. ``bce`` trains the x0
    head the preset samples through (``models/pgdiffseg.py``); set it to 0 and ``diffusion.prediction=epsilon``
    for the paper's eps-only training and sampling. A design without a prior branch (``prior: false``) gets
    no prior terms. Weights: ``diffusion.objective_options``.
    """

    defaults = {"bce": 1.0, "cls": 1.0, "prior_dice": 1.0, "prior_bce": 1.0}

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), t, batch["image"])
        if out.eps is None:
            raise LesiondiffError("objective eps_prior needs a design that predicts eps (e.g. pgdiffseg)")
        w = self.weights
        mse = F.mse_loss(out.eps, noise)
        total, parts = mse, {"mse": mse.detach()}
        if out.x0 is not None and w["bce"]:
            bce = F.binary_cross_entropy_with_logits(out.x0, (batch["mask"] > 0).float())
            total, parts["bce"] = total + w["bce"] * bce, bce.detach()
        if "prior_logit" in out.aux and "prior_mask" in out.aux:
            for name, value in prior_losses(out.aux["prior_logit"], out.aux["prior_mask"], batch["mask"]).items():
                total, parts[name] = total + w[name] * value, value.detach()
        return LossOutput(total, parts)


@OBJECTIVES.register("staged")
class Staged(Objective):
    """UniSegDiff's staged training (shared paper 002, Eq. 1; stages and weights: ``diffusion/staging.py``).

    Each sample of the batch is noised at its own t as usual; the network is given the remapped timestep
    (T - 1 above ``high``, 0 below ``low``), and its loss is ``alpha_stage * MSE(eps decoder, noise) +
    beta_stage * (soft Dice + BCE)(x0 decoder, mask)``, averaged over the batch. Needs a design whose output
    carries both eps and x0 (``unisegdiff``). Options: ``staging.STAGE_DEFAULTS``.
    """

    defaults = dict(STAGE_DEFAULTS)

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__(cfg)
        self.stages = Stages.from_options(cfg, self.weights)

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        out: DenoiserOutput = model(self.noisy(batch["mask"], noise, t), self.stages.network_t(t), batch["image"])
        if out.eps is None or out.x0 is None:
            raise LesiondiffError("objective staged needs a design that predicts both eps and x0 (e.g. unisegdiff)")
        target01 = (batch["mask"] > 0).float()
        mse = (out.eps.float() - noise).pow(2).flatten(1).mean(1)
        dice = soft_dice_per_image(out.x0, target01)
        bce = F.binary_cross_entropy_with_logits(out.x0, target01, reduction="none").flatten(1).mean(1)
        alpha, beta = self.stages.weights(t)
        total = (alpha * mse + beta * (dice + bce)).mean()
        parts = {"mse": mse.mean().detach(), "dice": dice.mean().detach(), "bce": bce.mean().detach()}
        stage = self.stages.stage_of(t)
        for k, name in enumerate(STAGE_NAMES):  # each stage's share of the batch, to see the draw in log.csv
            parts[f"frac_{name}"] = (stage == k).float().mean()
        return LossOutput(total, parts)


@OBJECTIVES.register("class_eps")
class ClassEps(Objective):
    """DiffSeg's class-conditional image diffusion loss ("DiffSeg: A Segmentation Model for Skin Lesions Based
    on Diffusion Difference", Eq. 1), weakly supervised: image-level classes are the only labels.

    Needs batch["healthy"] [B,C,H,W] in [-1,1] (the image with its lesion inpainted away, or the image itself
    when its mask is empty; ``data.healthy``) and batch["lesion"] [B] bool (the row's mask is non-empty), and a
    model with ``noise_prediction(x_t, t, cls)`` (``diffseg``). For each row, with probability ``p_healthy``
    x_0 = batch["healthy"] with class c0, else x_0 = batch["image"] with its own class (c1 where
    batch["lesion"], else c0); then L = mean || eps - f(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, c, t) ||^2.
    The paper writes the norm unsquared; the squared one (Ho et al. 2020) is what "equivalent to maximising
    the variational bound" refers to. batch["mask"] is never read.

    Noise: ``noise_like = "image"`` makes the Trainer draw ``noise`` like the image [B,C,H,W] from its seeded
    generator. Called with mask-shaped noise (another caller), image-shaped noise is drawn from torch's
    global RNG instead. The healthy/original coin is drawn from torch's global RNG (objectives get no
    generator): the Trainer seeds it with train.seed and saves and restores it in checkpoints, so runs
    reproduce and resume exactly.

    Timesteps: the paper's "noise addition count t = 100" cannot be the schedule length, since it samples at
    t = 60..150; we read Eq. 1's expectation over abar_t as the standard t ~ U{0..T-1} with the run's
    schedule (linear betas, T = diffusion.num_train_timesteps = 1000), and inference at t = 60..150 (sampler
    ``class_difference``). ``t_min``/``t_max`` (0: T) restrict training to [t_min, t_max): the drawn t is
    mapped affinely, t' = t_min + floor(t (t_max - t_min) / T), which keeps a uniform draw (near) uniform and
    the Trainer's generator stream unchanged. Options (``diffusion.objective_options``): ``p_healthy`` (0.5),
    ``t_min`` (0), ``t_max`` (0), and the sampler's settings (``CLASS_DIFFERENCE_DEFAULTS``), which this
    objective ignores.
    """

    defaults = {"p_healthy": 0.5, "t_min": 0.0, "t_max": 0.0, **CLASS_DIFFERENCE_DEFAULTS}
    noise_like = "image"

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__(cfg)
        w, big_t = self.weights, cfg.num_train_timesteps
        self.t_min, self.t_max = int(w["t_min"]), int(w["t_max"]) or big_t
        if w["t_min"] != self.t_min or w["t_max"] != int(w["t_max"]) or not 0 <= self.t_min < self.t_max <= big_t:
            raise LesiondiffError(f"objective class_eps: t_min and t_max must be whole timesteps with "
                                  f"0 <= t_min < t_max <= T = {big_t} (t_max 0: T), got {w['t_min']:g}, {w['t_max']:g}")
        if not 0.0 <= w["p_healthy"] <= 1.0:
            raise LesiondiffError(f"objective class_eps: p_healthy must be in [0, 1], got {w['p_healthy']:g}")

    def training_t(self, t: torch.Tensor) -> torch.Tensor:
        """The drawn t in [0, T) mapped onto [t_min, t_max)."""
        span, big_t = self.t_max - self.t_min, self.cfg.num_train_timesteps
        return t if span == big_t else self.t_min + torch.div(t * span, big_t, rounding_mode="floor")

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        if "healthy" not in batch or "lesion" not in batch:
            raise LesiondiffError("objective class_eps needs healthy images and lesion labels in the batch: set "
                                  "data.healthy (e.g. data.healthy=biharmonic)")
        if not hasattr(model, "noise_prediction"):
            raise LesiondiffError(f"objective class_eps needs a class-conditional image model (diffseg), not "
                                  f"{type(model).__name__}")
        image = batch["image"]
        if noise.shape != image.shape:
            noise = torch.randn(image.shape).to(image.device, image.dtype)
        b = image.shape[0]
        healthy_row = (torch.rand(b) < self.weights["p_healthy"]).to(image.device)
        x0 = torch.where(healthy_row.view(-1, 1, 1, 1), batch["healthy"].to(image.dtype), image)
        cls = torch.where(healthy_row, 0, batch["lesion"].to(image.device).long())
        t = self.training_t(t)
        eps = model.noise_prediction(self.noisy(x0, noise, t), t, cls)
        mse = F.mse_loss(eps.float(), noise.float())
        return LossOutput(mse, {"mse": mse.detach(), "frac_c1": cls.float().mean()})


@OBJECTIVES.register("feedforward")
class FeedForward(Objective):
    """Feed-forward training of a diffusion architecture: x_t is replaced by pure noise and t by T-1, and the
    head's x0 logits are trained with Dice + BCE (Analysing Diffusion Segmentation, experiment E1). Its loss has
    no options; the named objective's ``objective_options`` are ignored in this mode."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__(dataclasses.replace(cfg, objective_options={}))

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        t_last = torch.full_like(t, self.cfg.num_train_timesteps - 1)
        out: DenoiserOutput = model(noise, t_last, batch["image"])
        total, parts = dice_bce(out.x0, (batch["mask"] > 0).float())
        return LossOutput(total, parts)


def build_objective(cfg: DiffusionConfig) -> Objective:
    name = "feedforward" if cfg.mode == "feedforward" else cfg.objective
    return OBJECTIVES.build(name, cfg=cfg)


TIMESTEP_SAMPLERS = Registry("timestep sampling")


class TimestepSampler:
    """Draws training timesteps t [B] (int64, in [0, T)) with probabilities ``probs`` [T] (float64, sum 1)."""

    def __init__(self, probs: torch.Tensor) -> None:
        self.probs = probs

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


@TIMESTEP_SAMPLERS.register("uniform")
class UniformTimesteps(TimestepSampler):
    """p(t) = 1/T, drawn by ``torch.randint(0, T, (B,), generator)``: the draw every run made before timestep
    samplers existed, so the generator stream, and with it exact resume, is unchanged."""

    def __init__(self, cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None) -> None:
        t = cfg.num_train_timesteps
        super().__init__(torch.full((t,), 1.0 / t, dtype=torch.float64))

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.probs), (batch_size,), generator=generator)


@TIMESTEP_SAMPLERS.register("fingerprint")
class FingerprintTimesteps(TimestepSampler):
    """t drawn (with replacement) from ``fingerprint_probabilities(slope, cfg.timestep_uniform_mix)``.

    The paper (Analysing Diffusion Segmentation, sec. 4.3) proposes weighting timesteps by the derivative of
    the mask error. We change how often each t is *sampled*, not the loss weight of a uniform draw: in
    expectation both equal weighting the loss at t by T p(t), but sampling spends the batch on the informative t
    (lower gradient variance than near-zero weights on most of a uniform batch) and keeps the objective's scale.
    ``slope`` [T] is -d(recoverability)/dt of the training masks (``diffusion.recoverability.training_slope``): a
    model-free stand-in for the derivative of the mask error, known before training starts.
    """

    def __init__(self, cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None) -> None:
        if cfg.mode == "feedforward":
            raise LesiondiffError("diffusion.timestep_sampling=fingerprint needs diffusion mode: feed-forward "
                                  "training has no timesteps")
        if slope is None:
            raise LesiondiffError("diffusion.timestep_sampling=fingerprint needs the training masks' "
                                  "recoverability slope (the Trainer computes it)")
        if len(slope) != cfg.num_train_timesteps:
            raise LesiondiffError(f"fingerprint slope has {len(slope)} values; expected one per timestep "
                                  f"({cfg.num_train_timesteps})")
        super().__init__(fingerprint_probabilities(slope, cfg.timestep_uniform_mix))

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.probs, batch_size, replacement=True, generator=generator)


def fingerprint_probabilities(slope: torch.Tensor | np.ndarray, mix: float = 0.1) -> torch.Tensor:
    """p(t) = (1 - mix) * s(t) / sum(s) + mix / T with s = max(slope, 0), float64 [T] summing to 1.

    ``mix`` keeps every t at probability >= mix / T (the network must still denoise everywhere); negative slopes
    (noise in the curve) count as 0; a slope that is 0 everywhere gives the uniform distribution.
    """
    if not 0.0 <= mix <= 1.0:
        raise LesiondiffError(f"diffusion.timestep_uniform_mix must be in [0, 1], got {mix}")
    s = torch.as_tensor(np.asarray(slope, dtype=np.float64)).clamp_min(0)
    if not torch.isfinite(s).all():
        raise LesiondiffError("fingerprint slope has non-finite values")
    n = len(s)
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if s.sum() <= 0:
        return uniform
    p = (1 - mix) * s / s.sum() + mix * uniform
    return p / p.sum()


def build_timestep_sampler(cfg: DiffusionConfig, slope: torch.Tensor | np.ndarray | None = None) -> TimestepSampler:
    """The sampler ``cfg.timestep_sampling`` names; ``slope`` [T] is needed by ``fingerprint`` only."""
    return TIMESTEP_SAMPLERS.build(cfg.timestep_sampling, cfg=cfg, slope=slope)
