"""DiffSeg (preset ``diffseg-weak``): a class-conditional diffusion model over images, for weakly supervised
segmentation by the difference of its noise predictions under the two classes.

"DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference" (Shuai et al., arXiv preprint
2024). Not Google's unsupervised "DiffSeg" (Tian et al., CVPR 2024), hence the preset's name.

The network f_theta(x_t, c, t) predicts the noise of a noisy IMAGE x_t [B,C,H,W] under a class c: 0 for c0
"healthy", 1 for c1 "unhealthy" (lesion). It is trained on class labels only (Eq. 1; objective ``class_eps``),
and a lesion is where the two classes' noise predictions differ (Eq. 2; sampler ``class_difference``). The masks
are never a training target.

Architecture: the shared residual U-Net body (``UNetBody``) over x_t, with C output channels (the image noise).
The class enters through a learned class embedding (``nn.Embedding(2, temb_dim)``) added to the timestep
embedding, so it reaches every residual block the way t does. The paper says only that the model is
"conditioned on the category label embeddings c"; the additive embedding is ours (the usual class conditioning
of DDPM U-Nets). Classifier-free guidance and a null class are not needed: both classes are always given.
The paper's Fig. 1 also lists the original image among the model's inputs; its Eq. 1 and 2 condition on x_t
and c only, which we follow.

How it maps onto the mask-denoiser contract (``models/base.py``):
- ``encode(image)`` returns the clean image x_0 itself: the thing that is noised, not a condition;
- ``noise_prediction(x_t, t, cls) -> eps [B,C,H,W]`` is the network; the objective and the sampler call it;
- ``denoise`` (a noisy-mask step) raises a one-line error: the mask samplers (ddim, ...) cannot run this design.
``class_conditional`` (``Denoiser``) marks it: it denoises images under a class, not masks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LesiondiffError
from .backbone import UNetBody
from .base import MODELS, Condition, Denoiser, DenoiserOutput
from .blocks import TimeEmbedding

HEALTHY, LESION = 0, 1  # class indices: c0 and c1 of the paper


@MODELS.register("diffseg")
class DiffSeg(Denoiser):
    class_conditional = True

    def __init__(self, image_channels: int, prediction: str = "epsilon", base_channels: int = 32,
                 num_classes: int = 2, **body) -> None:
        """``body``: the UNetBody layout (channel_mult, num_res_blocks, attention_levels, num_groups, dropout)."""
        super().__init__()
        if prediction != "epsilon":
            raise ValueError("diffseg predicts image noise (diffusion.prediction: epsilon) and has no "
                             "feed-forward mode")
        if num_classes < 2:
            raise ValueError(f"diffseg needs at least the two classes c0 and c1, got num_classes={num_classes}")
        self.prediction = prediction
        self.image_channels = image_channels
        temb_dim = 4 * base_channels
        self.time = TimeEmbedding(base_channels, temb_dim)
        self.class_embedding = nn.Embedding(num_classes, temb_dim)
        self.image_in = nn.Conv2d(image_channels, base_channels, 3, padding=1)
        self.body = UNetBody(base_channels, temb_dim=temb_dim, out_channels=image_channels, **body)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,C,H,W] in [-1,1] -> x_0, the same tensor (it is noised, not used as a condition)."""
        return image

    def noise_prediction(self, x_t: torch.Tensor, t: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """f_theta(x_t, c, t): x_t [B,C,H,W] noisy image, t [B] integer timesteps in [0, T), cls [B] class
        indices (0 healthy, 1 lesion) -> predicted noise [B,C,H,W]."""
        if x_t.shape[1] != self.image_channels:
            raise LesiondiffError(f"diffseg was built for {self.image_channels}-channel images, got x_t with "
                                  f"{x_t.shape[1]} channels")
        return self.body(self.image_in(x_t), self.time(t) + self.class_embedding(cls))

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> DenoiserOutput:
        raise LesiondiffError("diffseg is a class-conditional image model, not a mask denoiser: sample it with "
                              "sample.sampler=class_difference")
