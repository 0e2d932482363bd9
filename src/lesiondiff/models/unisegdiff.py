"""UniSegDiff: a frozen, segmentation-pre-trained condition network (CFENet) and a denoising network (DNet) with
Dual Cross-Attention condition injection and two decoders, one for eps and one for x0.

UniSegDiff, "Boosting Unified Lesion Segmentation via a Staged Diffusion Model" (Hu et al., MICCAI 2025). Data
flow (``encode`` runs once per image, ``denoise`` at every sampling step):

    image --CFENet (U-Net, frozen)--> CF1..CF5 (decoder features, full resolution to bottleneck)
    x_t --stem--> DNet encoder: at level i, DF_i <- FF_i(DF_i, CF_i) --> bottleneck --+--> eps decoder
                                                                                     +--> x0 decoder

- CFENet is the project's feed-forward U-Net (``models/unet.py``), trained first as a plain segmenter with Dice
  + BCE on the same data and then frozen (``methods/unisegdiff.py``; ``lesiondiff train --preset unisegdiff``
  runs both phases, or ``model.options.cfenet_checkpoint`` names a trained one). The paper says its features "at
  five levels" condition DNet and that pre-training makes them "similar to the masks"; we take the decoder's
  features (nearest the mask), one per DNet merge point: the full-resolution decoder output for DNet's level 0,
  the decoder features at strides 2, 4, 8 for levels 1-3, and the bottleneck output for DNet's bottleneck.
- Feature fusion FF_i (our reading of the paper's "FF" and DCA): ``DF_i + W_i CF_i`` (a 1x1 convolution of
  the pixel-aligned condition) followed by DCA (``blocks.DualCrossAttention``): the condition queries the
  denoising features, then the denoising features query the updated condition. Attention alone carries no
  position, so the aligned addition is what lets a pixel see its own condition; DCA adds context from the rest
  of the image.
- DNet: the residual U-Net encoder of ``models/backbone.py`` over the noisy mask, with the time embedding, and
  two decoders of the same layout (``backbone.build_decoder``), the eps decoder and the x0 decoder (logits).

``prediction`` says which decoder a standard sampler (DDIM, one-step, ...) steps with: ``epsilon`` (default)
or ``x0``; both decoders are always computed (``predicts_both``). The staged sampler uses both.

Options (``model.options``): ``cfenet_channels`` (base width of CFENet; 0: the model's ``base_channels``),
``cfenet_checkpoint`` (a trained CFENet run's checkpoint to use instead of pre-training; a path),
``cfenet_fraction`` (0.3: the share of ``train.steps`` and ``train.max_minutes`` that pre-training gets),
``dca`` (true; false keeps only the aligned addition, for ablation), ``dca_reduction`` (8), ``dca_kv_size``
(16: keys and values pooled to at most 16 x 16 positions).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import UNetBody, build_decoder
from .base import MODELS, Denoiser, DenoiserOutput
from .blocks import DualCrossAttention, TimeEmbedding
from .unet import UNet


class FeatureFusion(nn.Module):
    """(DF [B,Cd,H,W], CF [B,Cc,H,W]) -> DF + W CF, then Dual Cross-Attention (``dca``) -> [B,Cd,H,W]."""

    def __init__(self, channels: int, condition_channels: int, dca: bool, reduction: int, kv_size: int,
                 groups: int) -> None:
        super().__init__()
        self.aligned = nn.Conv2d(condition_channels, channels, 1)
        self.dca = DualCrossAttention(channels, condition_channels, reduction, kv_size, groups) if dca else None

    def forward(self, d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        d = d + self.aligned(c)
        return self.dca(d, c) if self.dca is not None else d


@MODELS.register("unisegdiff")
class UniSegDiff(Denoiser):
    predicts_both = True
    pretrained_part = "cfenet"  # engine.runs.train_run: out/cfenet, model.options.cfenet_checkpoint

    def __init__(self, image_channels: int, prediction: str = "epsilon", base_channels: int = 32,
                 channel_mult: list[int] = (1, 2, 4, 4), num_res_blocks: int = 1,
                 attention_levels: list[bool] = (False, False, False, True), num_groups: int = 8,
                 dropout: float = 0.0, cfenet_channels: int = 0, cfenet_checkpoint: str = "",
                 cfenet_fraction: float = 0.3, dca: bool = True, dca_reduction: int = 8,
                 dca_kv_size: int = 16) -> None:
        super().__init__()
        if not 0.0 < cfenet_fraction < 1.0:
            raise ValueError(f"cfenet_fraction must be in (0, 1), got {cfenet_fraction}")
        self.prediction = prediction
        layout = dict(channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                      attention_levels=list(attention_levels), num_groups=num_groups, dropout=dropout)
        self.cfenet = UNet(image_channels, "x0", cfenet_channels or base_channels, **layout)
        self.cfenet.requires_grad_(False)
        temb_dim = 4 * base_channels
        self.time = TimeEmbedding(base_channels, temb_dim)
        self.stem = nn.Conv2d(1, base_channels, 3, padding=1)
        self.body = UNetBody(base_channels, **layout, out_channels=1, temb_dim=temb_dim)  # decoder: eps
        chans = [base_channels * m for m in channel_mult]
        up, upsample, out = build_decoder(chans, list(attention_levels), num_res_blocks, num_groups, dropout, 1,
                                          temb_dim)
        self.x0_decoder = nn.ModuleDict({"up": up, "upsample": upsample, "out": out})
        cf_chans = [(cfenet_channels or base_channels) * m for m in channel_mult]
        condition_channels = cf_chans + [cf_chans[-1]]  # decoder levels 0..n-1, then the bottleneck
        self.fusion = nn.ModuleList(
            FeatureFusion(c, cc, dca, dca_reduction, dca_kv_size, num_groups)
            for c, cc in zip(self.body.level_channels, condition_channels))
        self.multiple = self.body.multiple

    def train(self, mode: bool = True) -> UniSegDiff:
        """CFENet stays in eval mode: it is frozen (dropout off while DNet trains)."""
        super().train(mode)
        self.cfenet.eval()
        return self

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image -> CF, one frozen CFENet feature map per DNet merge point (full resolution first)."""
        h, w = image.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"unisegdiff needs H and W divisible by {self.multiple}, got {h}x{w}")
        feats: list[torch.Tensor] = []
        with torch.no_grad():
            self.cfenet.body(self.cfenet.encode(image), features=feats)
        bottleneck, decoder = feats[0], feats[1:]  # decoder features coarsest first
        return [f.detach() for f in [*reversed(decoder), bottleneck]]

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: list[torch.Tensor]) -> DenoiserOutput:
        temb = self.time(t)
        h, skips = self.body.encode(self.stem(x_t), temb, merge=lambda i, d: self.fusion[i](d, condition[i]))
        eps = self.body.decode(h, skips, temb)
        d = self.x0_decoder
        x0 = self.body.decode(h, skips, temb, decoder=(d["up"], d["upsample"], d["out"]))
        return DenoiserOutput(eps=eps, x0=x0)

    def pretrained_module(self, name: str = "cfenet") -> nn.Module:
        """CFENet: a feed-forward ``unet`` run with CFENet's layout loads into it (its EMA weights)."""
        return self.cfenet
