"""A diffusion refiner on a trained feed-forward segmenter: prior logits + a learned correction.

After SegRefiner (Wang et al., NeurIPS 2023: diffusion that refines any model's coarse mask), HiDiff (Chen et
al. 2024: a segmentor and a binary diffusion refiner) and PGRD (diffusion of the residual to a coarse prior).
Data flow (``encode`` runs once per image, ``denoise`` at every sampling step):

    image --prior (feed-forward U-Net, frozen)--> logits L, decoder features P_1 (full res), P_2, P_4, ...
    [x_t, tanh(L / 2), image] --stem--> light time-conditioned U-Net; at level i, h <- h + W_i P_(2^i)
                                        --> correction C (last convolution zero at initialisation)
    x0 logits = L + C

- The prior is the project's feed-forward ``unet`` with the model section's layout (``base_channels``,
  ``channel_mult``, ...), trained first with Dice + BCE (``lesiondiff train --preset refiner`` runs both phases
  in one budget, the prior getting ``prior_fraction`` of it) or taken from a trained run
  (``model.options.prior_checkpoint``: a run folder or a checkpoint file). It stays frozen and in eval mode.
- The denoiser is light (``refine_channels``, ``refine_mult``): the prior has done the segmentation, the
  denoiser learns where to change it. Its input is the noisy mask, the prior's mask estimate and the image;
  the prior's decoder features enter at every level of its encoder by a 1x1 convolution (the pixel-aligned
  addition of UniSegDiff's feature fusion, without attention: the correction is local).
- Because the correction's last layer starts at zero, an untrained refiner predicts exactly the prior's logits
  whatever x_t is: every sample equals the prior's mask and their spread is 0. The Trainer validates such a
  design before its first step (``validate_at_start``), so the best-on-validation checkpoint is the prior
  itself unless training improves on it.
- ``start_mask`` gives samplers the prior's binarised mask in diffusion space, the SegRefiner-style starting
  point (the ``refine`` sampler with ``sample.start=prior``).

Options (``model.options``): ``prior_checkpoint`` (""), ``prior_fraction`` (0.6 of ``train.steps`` and of
``train.max_minutes`` for the prior's training; our choice, the papers train the two apart),
``refine_channels`` (16), ``refine_mult`` ([1, 2, 4]: three levels, at most as many as the prior has),
``image_input`` (true: the image is an input of the denoiser beside the prior's features), ``prior_noise``
(0: off) and ``prior_noise_cells`` (8).

``prior_noise``: the prior was trained on the very images the refiner then trains on, so there its mask is
nearly right and the correction has little to learn that carries over to unseen images (where the prior
errs). With ``prior_noise`` > 0 the refiner trains on corrupted prior logits, SegRefiner's idea of refining
perturbed masks: each training image's logits get a smooth random field added, Gaussian on a
``prior_noise_cells`` x ``prior_noise_cells`` grid upsampled bilinearly, with standard deviation
``prior_noise`` times a uniform [0, 1) draw per image, so that the refiner sees false blobs, holes and shifted
borders of every size. Evaluation and sampling use the prior's logits unchanged. Our choice of perturbation
(the paper perturbs masks by random dilation, erosion and polygon distortion).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import UNetBody
from .base import MODELS, Denoiser, DenoiserOutput
from .blocks import TimeEmbedding, grad_safe
from .unet import UNet


@MODELS.register("refiner")
class Refiner(Denoiser):
    prediction = "x0"
    pretrained_part = "prior"  # engine.runs.train_run: out/prior, model.options.prior_checkpoint
    validate_at_start = True
    has_prior_mask = True

    def __init__(self, image_channels: int, prediction: str = "x0", base_channels: int = 32,
                 channel_mult: list[int] = (1, 2, 4, 4), num_res_blocks: int = 1,
                 attention_levels: list[bool] = (False, False, False, True), num_groups: int = 8,
                 dropout: float = 0.0, prior_checkpoint: str = "", prior_fraction: float = 0.6,
                 refine_channels: int = 16, refine_mult: list[int] = (1, 2, 4), image_input: bool = True,
                 prior_noise: float = 0.0, prior_noise_cells: int = 8) -> None:
        super().__init__()
        if prediction != "x0":
            raise ValueError("the refiner predicts x0 (the prior's logits plus a correction)")
        if not 0.0 < prior_fraction < 1.0:
            raise ValueError(f"prior_fraction must be in (0, 1), got {prior_fraction}")
        if prior_noise < 0 or prior_noise_cells < 1:
            raise ValueError(f"prior_noise must be >= 0 and prior_noise_cells >= 1, got {prior_noise}, "
                             f"{prior_noise_cells}")
        self.prior_noise, self.prior_noise_cells = float(prior_noise), int(prior_noise_cells)
        refine_mult = list(refine_mult)
        if not 1 <= len(refine_mult) <= len(channel_mult):
            raise ValueError(f"refine_mult needs 1 to {len(channel_mult)} levels (the prior's), got {refine_mult}")
        self.prior = UNet(image_channels, "x0", base_channels, channel_mult=list(channel_mult),
                          num_res_blocks=num_res_blocks, attention_levels=list(attention_levels),
                          num_groups=num_groups, dropout=dropout)
        self.prior.requires_grad_(False)
        self.levels = len(refine_mult)
        self.image_input = image_input
        temb_dim = 4 * refine_channels
        self.time = TimeEmbedding(refine_channels, temb_dim)
        self.stem = nn.Conv2d(2 + (image_channels if image_input else 0), refine_channels, 3, padding=1)
        self.body = UNetBody(refine_channels, refine_mult, 1, [False] * (self.levels - 1) + [True], num_groups,
                             dropout, out_channels=1, temb_dim=temb_dim)
        prior_chans = [base_channels * m for m in channel_mult]
        self.merge = nn.ModuleList(nn.Conv2d(prior_chans[i], self.body.level_channels[i], 1)
                                   for i in range(self.levels))
        last = self.body.out[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.multiple = max(self.prior.body.multiple, self.body.multiple)

    def train(self, mode: bool = True) -> Refiner:
        """The prior stays in eval mode: it is frozen."""
        super().train(mode)
        self.prior.eval()
        return self

    def encode(self, image: torch.Tensor) -> dict:
        """image -> {"logits": the prior's [B,1,H,W], "features": its decoder features at strides 1, 2, 4, ...
        (one per denoiser level), "image"}, computed once per image without gradients."""
        h, w = image.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"refiner needs H and W divisible by {self.multiple}, got {h}x{w}")
        feats: list[torch.Tensor] = []
        with torch.no_grad():
            logits = self.prior.body(self.prior.encode(image), features=feats)
        decoder = list(reversed(feats[1:]))  # feats[0] is the bottleneck; the decoder's come coarsest first
        if self.training and self.prior_noise > 0:
            logits = logits + self._prior_perturbation(logits)
        return {"logits": logits.detach(), "features": [f.detach() for f in decoder[:self.levels]], "image": image}

    def _prior_perturbation(self, logits: torch.Tensor) -> torch.Tensor:
        """A smooth random field [B,1,H,W] (see ``prior_noise`` in the module docstring)."""
        b, _, h, w = logits.shape
        n = self.prior_noise_cells
        field = torch.randn(b, 1, n, n, device=logits.device, dtype=logits.dtype)
        field = nn.functional.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)
        scale = self.prior_noise * torch.rand(b, 1, 1, 1, device=logits.device, dtype=logits.dtype)
        return scale * field

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: dict) -> DenoiserOutput:
        prior = condition["logits"]
        inputs = [x_t, torch.tanh(prior / 2)] + ([condition["image"]] if self.image_input else [])
        features = condition["features"]

        def merge(level: int, h: torch.Tensor) -> torch.Tensor:
            return h + self.merge[level](grad_safe(features[level])) if level < self.levels else h

        correction = self.body(self.stem(torch.cat([grad_safe(x) for x in inputs], 1)), self.time(t), merge=merge)
        return DenoiserOutput(x0=prior + correction, aux={"prior": prior})

    @staticmethod
    def start_mask(condition: dict) -> torch.Tensor:
        """The prior's mask (logits >= 0) in diffusion space {-1,+1}, [B,1,H,W]."""
        return (condition["logits"] >= 0).to(condition["logits"].dtype) * 2 - 1

    def pretrained_module(self) -> nn.Module:
        """The prior: a feed-forward ``unet`` run with the model section's layout loads into it (EMA weights)."""
        return self.prior
