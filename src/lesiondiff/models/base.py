"""The Denoiser interface every architecture implements, and the registry of architectures.

A Denoiser has two steps. ``encode(image)`` computes the condition once per image: the image itself for
designs that concatenate it, encoder features for designs with a separate image encoder. ``denoise(x_t, t,
condition)`` runs at every sampling step. Samplers call ``encode`` once and ``denoise`` per step, so all S
samples and all steps of one image share the condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..registry import Registry

MODELS = Registry("model")

Condition = Any  # a tensor, or a tuple/list/dict of tensors whose first dimension is the batch


@dataclass
class DenoiserOutput:
    """What one network evaluation returns.

    eps: predicted noise [B,1,H,W], or None for designs that predict only x0.
    x0:  the clean-mask estimate as logits [B,1,H,W], or None. Probability = sigmoid(x0); the value in
         diffusion space ({-1,+1} masks) is tanh(x0 / 2) = 2 * sigmoid(x0) - 1. Logits, not the diffusion-space
         value, so that BCE and Dice losses are computed stably.
    aux: design-specific extras by name (two-branch predictions, prior logits, a second decoder's output).
    """

    eps: torch.Tensor | None = None
    x0: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    def x0_diffusion_space(self) -> torch.Tensor:
        if self.x0 is None:
            raise ValueError("this output has no x0 prediction")
        return torch.tanh(self.x0 / 2)


class Denoiser(nn.Module):
    """Base class: subclasses implement ``encode`` and ``denoise``.

    ``prediction`` says what the main head predicts ("epsilon" or "x0"); samplers read it. Designs whose output
    always carries both eps and x0 (``predicts_both``, e.g. PalScDiff) may be sampled through either, so their
    ``prediction`` can be chosen when sampling (``lesiondiff predict --prediction``). A design whose output does
    not depend on x_t (``takes_noise`` False: the ``unet``) gives identical samples; predict draws it once.

    Capabilities are declared here and set by the designs that have them, never probed:
    - ``class_conditional``: a class-conditional image model (``noise_prediction(x_t, t, cls)``; DiffSeg);
    - ``has_prior_mask``: ``start_mask(condition)`` gives a prior's mask to start sampling from (the refiner);
    - ``pretrained_part``: the name of a frozen feed-forward segmenter inside the network, trained first
      (``pretrained_module``; UniSegDiff's "cfenet", the refiner's "prior"; ``pretraining.py``);
    - ``validate_at_start``: the Trainer validates before the first step (the untrained design is meaningful);
    - ``cam_layers``: Grad-CAM's default target layers by name (read by ``analysis/gradcam/layers.py``);
    - ``multiple``: what the input side must be a multiple of, the total stride (default: the U-Net body's);
    - ``prior_folds``: > 0 when the design's frozen prior is cross-fitted over that many folds of the training
      images (the refiner's fold priors): the Trainer puts each training image's fold in ``batch["fold"]`` and
      the objectives pass it to ``forward``, which hands it to ``encode``;
    - ``validation_choices``: settings of a trained network that the Trainer chooses between on validation at
      every validation (``choose``; the choice is a buffer, so each checkpoint carries the one it was saved with).
    """

    prediction: str = "epsilon"
    predicts_both: bool = False
    takes_noise: bool = True  # False: the output ignores x_t (a plain segmenter), so every sample is the same
    class_conditional: bool = False
    has_prior_mask: bool = False
    pretrained_part: str | None = None
    validate_at_start: bool = False
    cam_layers: dict[str, Any] = {}
    prior_folds: int = 0
    validation_choices: tuple[str, ...] = ()
    _multiple: int = 0

    @property
    def multiple(self) -> int:
        return self._multiple or self.body.multiple

    @multiple.setter
    def multiple(self, value: int) -> None:
        self._multiple = int(value)

    def pretrained_module(self, name: str) -> nn.Module:
        """The frozen segmenter that the pre-training run ``name`` loads into (``pretrained_part`` names the
        first; ``pretraining.py``)."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-trained part")

    def start_mask(self, condition: Condition) -> torch.Tensor:
        """A prior's mask [B,1,H,W] in {-1,+1} to start sampling from (``has_prior_mask`` designs)."""
        raise NotImplementedError(f"{type(self).__name__} has no prior mask")

    def encode(self, image: torch.Tensor) -> Condition:
        """image [B,C,H,W] in [-1,1] -> condition reused across samples and steps."""
        return image

    def choose(self, name: str) -> None:
        """Use the setting ``name`` of ``validation_choices``."""
        raise NotImplementedError(f"{type(self).__name__} has no validation choices")

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> DenoiserOutput:
        """x_t [B,1,H,W] noisy mask, t [B] integer timesteps in [0, T) -> DenoiserOutput."""
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor,
                fold: torch.Tensor | None = None) -> DenoiserOutput:
        """One training pass; ``fold`` [B]: each image's cross-fitting fold (``prior_folds`` designs only)."""
        return self.denoise(x_t, t, self.encode(image) if fold is None else self.encode(image, fold=fold))

    @staticmethod
    def take_condition(condition: Condition, index: torch.Tensor) -> Condition:
        """Rows ``index`` of every tensor of a condition (a tensor, or a dict/list/tuple of them)."""
        if isinstance(condition, torch.Tensor):
            rows = condition.index_select(0, index)
            if condition.dim() == 4 and condition.is_contiguous(memory_format=torch.channels_last):
                rows = rows.contiguous(memory_format=torch.channels_last)  # index_select drops the layout
            return rows
        if isinstance(condition, dict):
            return {k: Denoiser.take_condition(v, index) for k, v in condition.items()}
        if isinstance(condition, (list, tuple)):
            return type(condition)(Denoiser.take_condition(v, index) for v in condition)
        return condition

    @staticmethod
    def repeat_condition(condition: Condition, repeats: int, batch: int | None = None) -> Condition:
        """Repeat every tensor of a condition ``repeats`` times along the batch, image-major."""
        if repeats == 1:
            return condition
        if batch is None:
            batch = _first_tensor(condition).shape[0]
        device = _first_tensor(condition).device
        return Denoiser.take_condition(condition, torch.arange(batch, device=device).repeat_interleave(repeats))

    def head_output(self, y: torch.Tensor, aux: dict | None = None) -> DenoiserOutput:
        """Place a single head's output where ``prediction`` says it belongs."""
        if self.prediction == "epsilon":
            return DenoiserOutput(eps=y, aux=aux or {})
        return DenoiserOutput(x0=y, aux=aux or {})


def _first_tensor(condition: Condition) -> torch.Tensor:
    if isinstance(condition, torch.Tensor):
        return condition
    values = condition.values() if isinstance(condition, dict) else condition
    return next(_first_tensor(v) for v in values)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
