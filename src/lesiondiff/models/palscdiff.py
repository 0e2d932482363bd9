"""PalScDiff: MedSegDiff with Inter-branch Prediction Alignment (IBPA) heads.

PalScDiff, a conditional diffusion framework for breast-lesion segmentation on BUSI (Yang and Tong, J.
Intelligent & Fuzzy Systems 2024). The conditional denoiser is the MedSegDiff baseline (``medsegdiff.py``: a
condition encoder joined by dynamic conditional encoding, FF-Parser). IBPA replaces its single output layer by
two parallel prediction heads that share every encoder and decoder feature but none of their own parameters.
Each head is, as the paper describes it, a grouped 1x1 convolution, batch normalisation and a non-linearity,
followed by the output convolution.

What each head predicts (the paper's equations were lost in extraction; this is our reading): two channels,
the noise eps (trained by the noise MSE) and the clean-mask logits x0 (trained by BCE, the paper's "BCE on the
predicted mask"; MedSegDiff's separate calibration output plays this role in the baseline). Predicting x0
directly instead of deriving it from eps keeps BCE and the alignment loss finite at large t, where
(x_t - sqrt(1 - abar) eps) / sqrt(abar) divides by sqrt(abar) ~ 0.006.

The output is ``DenoiserOutput(eps, x0, aux)`` with both eps and x0 filled, so one trained model can be sampled
through either: ``diffusion.prediction`` says which one the sampler steps with. ``aux`` holds each branch's
``eps_branch{k}`` and ``x0_branch{k}`` [B,1,H,W] for the alignment loss (``methods/palscdiff.py``,
``eps_bce_align``).

Options (``model.options``):
- ``branches``: 2 (IBPA) or 1 (the ablation baseline: MedSegDiff's own output layer, GroupNorm-SiLU-conv, with
  the same two channels, so the baseline differs from IBPA only in the heads and the alignment loss);
- ``branch_fusion``: how the two branches make the output: ``mean`` (default: eps averaged, x0 the logit of
  the mean probability), ``first`` or ``second`` (one branch alone);
- ``head_groups`` (4): groups of the 1x1 convolution; ``head_norm``: ``batch`` (the paper) or ``group``
  (independent of the batch: a safer choice for batch size 1); ``head_activation``: ``silu`` or ``relu``;
- the MedSegDiff options ``dce_levels`` and ``ff_size``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, DenoiserOutput
from .medsegdiff import MedSegDiff

BRANCH_FUSIONS = ("mean", "first", "second")
OUT_CHANNELS = 2  # eps, x0 logits


class IBPAHead(nn.Module):
    """features [B,C,H,W] -> [B, out_channels, H, W]: grouped 1x1 conv, norm, activation, 3x3 output conv."""

    def __init__(self, channels: int, out_channels: int = OUT_CHANNELS, groups: int = 4, norm: str = "batch",
                 activation: str = "silu") -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"head_norm must be 'batch' or 'group', got {norm!r}")
        if activation not in ("silu", "relu"):
            raise ValueError(f"head_activation must be 'silu' or 'relu', got {activation!r}")
        groups = math.gcd(int(groups), channels)
        self.mix = nn.Conv2d(channels, channels, 1, groups=groups)
        self.norm = nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(groups, channels)
        self.act = nn.SiLU() if activation == "silu" else nn.ReLU()
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.norm(self.mix(h))))


def mean_probability_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logit((sigmoid(a) + sigmoid(b)) / 2), computed in log space so that large logits stay finite."""
    log_p = torch.logaddexp(F.logsigmoid(a), F.logsigmoid(b))
    log_q = torch.logaddexp(F.logsigmoid(-a), F.logsigmoid(-b))
    return log_p - log_q


@MODELS.register("palscdiff")
class PalScDiff(MedSegDiff):
    predicts_both = True

    def __init__(self, image_channels: int, prediction: str = "epsilon", base_channels: int = 32,
                 branches: int = 2, branch_fusion: str = "mean", head_groups: int = 4, head_norm: str = "batch",
                 head_activation: str = "silu", **kwargs) -> None:
        """``kwargs``: MedSegDiff's options and the UNetBody layout."""
        if branches not in (1, 2):
            raise ValueError(f"branches must be 1 (baseline) or 2 (IBPA), got {branches}")
        if branch_fusion not in BRANCH_FUSIONS:
            raise ValueError(f"branch_fusion must be one of {', '.join(BRANCH_FUSIONS)}, got {branch_fusion!r}")
        super().__init__(image_channels, prediction, base_channels,
                         out_channels=OUT_CHANNELS if branches == 1 else 0, **kwargs)
        self.branch_fusion = branch_fusion
        self.heads = nn.ModuleList(
            IBPAHead(base_channels, OUT_CHANNELS, head_groups, head_norm, head_activation)
            for _ in range(branches if branches > 1 else 0))

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: list[torch.Tensor]) -> DenoiserOutput:
        h = self.body_output(x_t, t, condition)
        if not self.heads:
            return DenoiserOutput(eps=h[:, :1], x0=h[:, 1:])
        ys = [head(h) for head in self.heads]
        aux = {}
        for k, y in enumerate(ys):
            aux[f"eps_branch{k}"], aux[f"x0_branch{k}"] = y[:, :1], y[:, 1:]
        if self.branch_fusion == "mean":
            eps = (ys[0][:, :1] + ys[1][:, :1]) / 2
            x0 = mean_probability_logit(ys[0][:, 1:], ys[1][:, 1:])
        else:
            y = ys[0] if self.branch_fusion == "first" else ys[1]
            eps, x0 = y[:, :1], y[:, 1:]
        return DenoiserOutput(eps=eps, x0=x0, aux=aux)
