"""PGDiffSeg: the method's own loss, the prior-supervised diffusion objective ``eps_prior`` (Eq. 10).

Where the method lives:
- the network (dual flows, parameter-shared attention, the prior branch): ``models/pgdiffseg.py``;
- the loss: this file;
- the fast samplers it is evaluated with (DDIM, DPM-Solver, UniPC): ``diffusion/samplers.py``;
- Grad-CAM of the prior branch and the flows: ``analysis/gradcam/`` (``lesiondiff analyze gradcam``);
- the settings: ``presets/pgdiffseg.yaml`` and ``presets/ablations/pgdiffseg.yaml``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion.objectives import OBJECTIVES, LossOutput, Objective, soft_dice_loss
from ..errors import LesiondiffError
from ..models.base import Denoiser, DenoiserOutput


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
