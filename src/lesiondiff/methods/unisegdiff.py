"""UniSegDiff ("Boosting Unified Lesion Segmentation via a Staged Diffusion Model", Hu et al., MICCAI 2025):
the method's own training and inference pieces, the three stages of the timestep axis, the staged objective,
the staged sampler and CFENet's pre-training run.

Where the method lives:
- the network (frozen CFENet, DNet with Dual Cross-Attention, eps and x0 decoders): ``models/unisegdiff.py``;
- the stages, the loss (``staged``), the sampler (``staged``) and CFENet's pre-training config: this file
  (``lesiondiff train --preset unisegdiff`` trains CFENet first, then DNet, in one budget;
  ``engine/train.train_run``);
- STAPLE, its fusion of the S masks: ``fusion.py`` (``fusion.method=staple``);
- one model for many datasets: one manifest indexing several dataset folders (``lesiondiff data index A B C
  --folds 4``; ``data/layouts.py``), docs/methods.md;
- the settings: ``presets/unisegdiff.yaml`` and ``presets/ablations/unisegdiff.yaml``.

The stages (sec. 2.2), shared by the staged objective and the staged sampler.

With T = 1000 and the paper's thresholds ``high`` = 600 and ``low`` = 300:

    stage            timesteps             network sees   main target   loss weights alpha : beta
    rapid            t >= high (t > 599)   t = T - 1      x0            1 : 3
    probabilistic    low <= t < high       t              both          1 : 1
    refinement       t < low (t <= 299)    t = 0          eps           3 : 1

The loss of a sample is ``alpha * L_noise + beta * (L_dice + L_ce)`` (the paper's Eq. 1), L_noise on the eps
decoder and Dice + CE on the x0 decoder. The paper gives only the ratios; we scale each stage's pair to sum to
2 (0.5 : 1.5, 1 : 1, 1.5 : 0.5), so every stage carries the same total weight and the probabilistic stage is
the plain sum. ``high``, ``low`` and the six weights are ``diffusion.objective_options`` (``STAGE_DEFAULTS``),
which the sampler reads too, so the paper's threshold ablation (its Table 5) can be rerun. The sampler's own
settings, ``stride`` and ``final_eta``, are ``sample.options``.

The forward process (which x_t a sample gets, and the conversions between eps and x0) always uses the true t;
only the timestep given to the network is remapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import Config, DiffusionConfig
from ..diffusion.objectives import OBJECTIVES, LossOutput, Objective, soft_dice_per_image
from ..diffusion.samplers import SAMPLERS, Sampler, auto_max_batch, start_noise
from ..diffusion.schedules import alphas_cumprod
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput
from ..pretraining import PRETRAINING, segmenter_pretrain_config

RAPID, PROBABILISTIC, REFINEMENT = 0, 1, 2
STAGE_NAMES = ("rapid", "probabilistic", "refinement")
STAGE_DEFAULTS = {"high": 600.0, "low": 300.0,
                  "alpha_rapid": 0.5, "beta_rapid": 1.5,
                  "alpha_probabilistic": 1.0, "beta_probabilistic": 1.0,
                  "alpha_refinement": 1.5, "beta_refinement": 0.5}


@dataclass(frozen=True)
class Stages:
    """The stage thresholds and loss weights of a run (see the module docstring)."""

    num_train_timesteps: int = 1000
    high: int = 600
    low: int = 300
    alpha: tuple[float, float, float] = (0.5, 1.0, 1.5)
    beta: tuple[float, float, float] = (1.5, 1.0, 0.5)

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high < self.num_train_timesteps:
            raise LesiondiffError(f"staged diffusion needs 0 < low < high < T; got low={self.low}, "
                                  f"high={self.high}, T={self.num_train_timesteps}")

    @classmethod
    def from_options(cls, cfg: DiffusionConfig, options: dict[str, float] | None = None) -> Stages:
        """From ``STAGE_DEFAULTS`` updated by ``options`` (default: ``cfg.objective_options``, keys of
        ``STAGE_DEFAULTS`` only; other keys are ignored here)."""
        o = {**STAGE_DEFAULTS, **{k: float(v) for k, v in (options if options is not None
                                                             else cfg.objective_options or {}).items()
                                  if k in STAGE_DEFAULTS}}
        if o["high"] != int(o["high"]) or o["low"] != int(o["low"]):
            raise LesiondiffError(f"staged thresholds must be whole timesteps, got high={o['high']}, low={o['low']}")
        return cls(cfg.num_train_timesteps, int(o["high"]), int(o["low"]),
                   tuple(o[f"alpha_{n}"] for n in STAGE_NAMES), tuple(o[f"beta_{n}"] for n in STAGE_NAMES))

    def stage_of(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] -> stage index [B] (0 rapid, 1 probabilistic, 2 refinement)."""
        return torch.where(t >= self.high, RAPID, torch.where(t >= self.low, PROBABILISTIC, REFINEMENT))

    def network_t(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep the network is given: T - 1 in the rapid stage, 0 in the refinement stage, else t."""
        stage = self.stage_of(t)
        return torch.where(stage == RAPID, torch.full_like(t, self.num_train_timesteps - 1),
                           torch.where(stage == REFINEMENT, torch.zeros_like(t), t))

    def weights(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha [B], beta [B]) float32: the loss weights of each sample's stage."""
        stage = self.stage_of(t)
        alpha = torch.tensor(self.alpha, dtype=torch.float32, device=t.device)[stage]
        beta = torch.tensor(self.beta, dtype=torch.float32, device=t.device)[stage]
        return alpha, beta


@OBJECTIVES.register("staged")
class Staged(Objective):
    """UniSegDiff's staged training (Hu et al., MICCAI 2025, Eq. 1; stages and weights: ``Stages``).

    Each sample of the batch is noised at its own t as usual; the network is given the remapped timestep
    (T - 1 above ``high``, 0 below ``low``), and its loss is ``alpha_stage * MSE(eps decoder, noise) +
    beta_stage * (soft Dice + BCE)(x0 decoder, mask)``, averaged over the batch. Needs a design whose output
    carries both eps and x0 (``unisegdiff``). Options: ``STAGE_DEFAULTS``.
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


@SAMPLERS.register("staged")
class StagedSampler(Sampler):
    """UniSegDiff's staged inference (Hu et al., MICCAI 2025, sec. 2.2) for designs with eps and x0 decoders.

    Per image, with the stage thresholds of the run (``Stages``; 600 and 300 by default):
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

    scales_input = False  # its own schedule of timesteps and targets: diffusion.input_scale does not apply

    def max_steps(self) -> None:
        return None  # ``steps`` is ignored: the schedule fixes the calls

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


@PRETRAINING.register("unisegdiff")
def cfenet_config(cfg: Config) -> dict[str, Config]:
    """The config of the CFENet pre-training run: the feed-forward U-Net with CFENet's layout, Dice + BCE on the
    same data, for ``cfenet_fraction`` of the steps and of the time budget."""
    options = cfg.model.options or {}
    fraction = float(options.get("cfenet_fraction", 0.3))
    return {"cfenet": segmenter_pretrain_config(cfg, fraction,
                                                int(options.get("cfenet_channels") or cfg.model.base_channels),
                                                "cfenet")}
