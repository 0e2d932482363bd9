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
``train.max_minutes`` for the prior's training; our choice, the papers train the two apart), ``prior_folds``
(0: off; see below),
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

``prior_folds`` = F >= 2: cross-fitting, the statistician's cure for the same leakage (stacking). The training
images are dealt into F folds by case (``data/splits.case_folds``, seed 0) and the prior phase trains F + 1
priors, each for ``prior_fraction`` / (F + 1) of the budget: fold prior k on the training images outside fold k
(``prior-fold-<k>/``, ``data.train_folds`` [F, k]) and the full prior on all of them (``prior/``). The refiner
trains on each image's logits from the fold prior that did not see it (the Trainer passes each image's fold,
``batch["fold"]``), so it learns to correct a prior's errors on unseen images. At inference the prior is either
the full prior or the average of the F fold priors' logits: the Trainer validates both at every validation and
keeps the better (``validation_choices``; a buffer, so each checkpoint carries its choice, and log.csv and the
summary record both validation Dice). With fold priors the prior's decoder features do not enter the denoiser:
each prior has its own feature space, and a correction learnt on the fold priors' features would not carry over
to another prior's (our choice; the image, the noisy mask and the prior's logits remain its inputs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LesiondiffError
from .backbone import UNetBody
from .base import MODELS, Denoiser, DenoiserOutput
from .blocks import TimeEmbedding, grad_safe
from .unet import UNet

CHOICES = ("full prior", "fold average")  # the inference prior with prior_folds, chosen on validation


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
                 prior_noise: float = 0.0, prior_noise_cells: int = 8, prior_folds: int = 0) -> None:
        super().__init__()
        if prior_folds == 1 or prior_folds < 0:
            raise ValueError(f"prior_folds must be 0 (off) or at least 2, got {prior_folds}")
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
        def segmenter() -> UNet:  # a prior: the feed-forward unet with the model section's layout, frozen
            return UNet(image_channels, "x0", base_channels, channel_mult=list(channel_mult),
                        num_res_blocks=num_res_blocks, attention_levels=list(attention_levels),
                        num_groups=num_groups, dropout=dropout).requires_grad_(False)

        self.prior = segmenter()
        self.prior_folds = int(prior_folds)
        self.fold_priors = nn.ModuleList(segmenter() for _ in range(self.prior_folds))
        if self.prior_folds:
            self.validation_choices = CHOICES
        self.register_buffer("prior_choice", torch.zeros((), dtype=torch.long))  # index into CHOICES
        self.levels = len(refine_mult)
        self.image_input = image_input
        temb_dim = 4 * refine_channels
        self.time = TimeEmbedding(refine_channels, temb_dim)
        self.stem = nn.Conv2d(2 + (image_channels if image_input else 0), refine_channels, 3, padding=1)
        self.body = UNetBody(refine_channels, refine_mult, 1, [False] * (self.levels - 1) + [True], num_groups,
                             dropout, out_channels=1, temb_dim=temb_dim)
        prior_chans = [base_channels * m for m in channel_mult]
        # the prior's features enter only without fold priors (see prior_folds in the module docstring)
        self.merge = nn.ModuleList(nn.Conv2d(prior_chans[i], self.body.level_channels[i], 1)
                                   for i in range(0 if self.prior_folds else self.levels))
        last = self.body.out[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.multiple = max(self.prior.body.multiple, self.body.multiple)

    def train(self, mode: bool = True) -> Refiner:
        """The priors stay in eval mode: they are frozen."""
        super().train(mode)
        self.prior.eval()
        self.fold_priors.eval()
        return self

    def choose(self, name: str) -> None:
        self.prior_choice.fill_(CHOICES.index(name))

    def encode(self, image: torch.Tensor, fold: torch.Tensor | None = None) -> dict:
        """image -> {"logits": the prior's [B,1,H,W], "features": its decoder features at strides 1, 2, 4, ...
        (one per denoiser level; none with fold priors), "image"}, computed once per image without gradients.
        ``fold`` [B] (training with ``prior_folds``): image i's logits come from fold prior ``fold[i]``, the one
        trained without it; without ``fold`` the prior is the full one or the fold priors' average
        (``prior_choice``)."""
        h, w = image.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"refiner needs H and W divisible by {self.multiple}, got {h}x{w}")
        if self.training and self.prior_folds and fold is None:
            raise LesiondiffError("a refiner with prior_folds trains on its fold priors' logits, and this training "
                                  "objective does not pass each image's fold (use x0_hybrid or x0_dice_bce)")
        feats: list[torch.Tensor] = []
        with torch.no_grad():
            if fold is not None and self.prior_folds:
                logits = self.fold_logits(image, fold)
            elif self.prior_folds and CHOICES[int(self.prior_choice)] == "fold average":
                logits = torch.stack([p.body(p.encode(image)) for p in self.fold_priors]).mean(0)
            else:
                logits = self.prior.body(self.prior.encode(image), features=feats)
        decoder = list(reversed(feats[1:]))  # feats[0] is the bottleneck; the decoder's come coarsest first
        if self.training and self.prior_noise > 0:
            logits = logits + self._prior_perturbation(logits)
        return {"logits": logits.detach(), "features": [f.detach() for f in decoder[:len(self.merge)]],
                "image": image}

    def fold_logits(self, image: torch.Tensor, fold: torch.Tensor) -> torch.Tensor:
        """[B,1,H,W]: each image's logits from the fold prior ``fold[i]`` (the one whose training left it out)."""
        if int(fold.min()) < 0 or int(fold.max()) >= self.prior_folds:
            raise ValueError(f"folds must lie in 0..{self.prior_folds - 1}, got {fold.tolist()}")
        logits = torch.empty_like(image[:, :1])
        for k in fold.unique().tolist():
            rows = (fold == k).nonzero().flatten()
            part = image.index_select(0, rows)
            prior = self.fold_priors[k]
            logits[rows] = prior.body(prior.encode(part)).to(logits.dtype)
        return logits

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
            return h + self.merge[level](grad_safe(features[level])) if level < len(self.merge) else h

        correction = self.body(self.stem(torch.cat([grad_safe(x) for x in inputs], 1)), self.time(t), merge=merge)
        return DenoiserOutput(x0=prior + correction, aux={"prior": prior})

    @staticmethod
    def start_mask(condition: dict) -> torch.Tensor:
        """The prior's mask (logits >= 0) in diffusion space {-1,+1}, [B,1,H,W]."""
        return (condition["logits"] >= 0).to(condition["logits"].dtype) * 2 - 1

    def pretrained_module(self, name: str = "prior") -> nn.Module:
        """The prior ("prior") or fold prior k ("prior-fold-<k>"): a feed-forward ``unet`` run with the model
        section's layout loads into it (EMA weights)."""
        if name == "prior":
            return self.prior
        return self.fold_priors[int(name.removeprefix("prior-fold-"))]
