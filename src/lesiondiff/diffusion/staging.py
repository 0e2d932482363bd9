"""UniSegDiff's three stages of the timestep axis (shared paper 002, sec. 2.2), shared by the staged training
objective (``objectives.py``, ``staged``) and the staged sampler (``samplers.py``, ``staged``).

With T = 1000 and the paper's thresholds ``high`` = 600 and ``low`` = 300:

    stage            timesteps             network sees   main target   loss weights alpha : beta
    rapid            t >= high (t > 599)   t = T - 1      x0            1 : 3
    probabilistic    low <= t < high       t              both          1 : 1
    refinement       t < low (t <= 299)    t = 0          eps           3 : 1

The loss of a sample is ``alpha * L_noise + beta * (L_dice + L_ce)`` (the paper's Eq. 1), L_noise on the eps
decoder and Dice + CE on the x0 decoder. The paper gives only the ratios; we scale each stage's pair to sum to
2 (0.5 : 1.5, 1 : 1, 1.5 : 0.5), so every stage carries the same total weight and the probabilistic stage is
the plain sum. ``high``, ``low`` and the six weights are ``diffusion.objective_options`` (``STAGE_DEFAULTS``),
so the paper's threshold ablation (its Table 5) can be rerun.

The forward process (which x_t a sample gets, and the conversions between eps and x0) always uses the true t;
only the timestep given to the network is remapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DiffusionConfig
from ..errors import LesiondiffError

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
