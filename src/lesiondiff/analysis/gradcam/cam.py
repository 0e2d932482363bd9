"""Grad-CAM (``monai.visualize.GradCAM``; Selvaraju et al. 2017) of a denoiser at one step: the target (the x0
probability summed over a region, or an auxiliary logit), every layer's map from one forward and one backward
pass, and each map scaled to its maximum."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ...errors import LesiondiffError
from ...models import Denoiser, DenoiserOutput
from .trajectory import mask_probability, timestep_batch


def target_description(kind: str) -> str:
    """What the mask target sums, for a network output of ``kind`` ("x0" logits or "eps")."""
    if kind == "x0":
        return "sum over R of sigmoid(x0 logits) predicted at step t"
    return ("sum over R of (x0_hat + 1) / 2 at step t, x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) "
            "(eps head; not clipped, so every pixel of R passes a gradient)")


class CamTarget(nn.Module):
    """x_t [1,1,H,W] -> the Grad-CAM target [1,1]: the x0 probability summed over ``region`` at step ``t``, or the
    auxiliary logit ``aux[aux_key]``. Runs the model's full forward (``encode`` included). The model is the
    attribute ``model``, so its layers are "model.<name>" here."""

    def __init__(self, model: Denoiser, image: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.image, self.abar = image, abar
        self.t = 0
        self.region: torch.Tensor | None = None
        self.aux_key: str | None = None

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        out = self.model(x_t, timestep_batch(self.t, x_t), self.image)
        if self.aux_key is not None:
            return aux_logit(out, self.aux_key)
        prob = mask_probability(out, x_t, self.abar[self.t], clip=False)
        return (prob * self.region).sum(dim=(1, 2, 3))[:, None]


def aux_logit(out: DenoiserOutput, key: str) -> torch.Tensor:
    """``out.aux[key]`` as [B,1]; a one-line error when it is missing or not one value per image."""
    if key not in out.aux:
        known = ", ".join(out.aux) or "none"
        raise LesiondiffError(f"prior target {key!r} is not in the model's aux outputs (it has: {known})")
    value = out.aux[key]
    if not isinstance(value, torch.Tensor) or value[0].numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise LesiondiffError(f"prior target aux[{key!r}] is {shape}; it must be one logit per image ([B,1])")
    return value.reshape(-1, 1)


def _one_pass_hooks(target: CamTarget, layers: list[str]):
    """monai's ModelWithHooks on the "model.<layer>" names, run once per ``fresh()``: every layer's map then
    comes from one forward and one backward pass instead of one pass pair per layer."""
    from monai.visualize.class_activation_maps import ModelWithHooks

    class OnePass(ModelWithHooks):
        def fresh(self) -> None:
            self.result = None
            self.activations.clear()
            self.gradients.clear()

        def __call__(self, x, class_idx=None, retain_graph=False, **kwargs):
            if self.result is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # missing gradients are reported below, by name
                        logits, acti, _ = super().__call__(x, class_idx, retain_graph, **kwargs)
                except RuntimeError as exc:
                    raise LesiondiffError(f"Grad-CAM of {', '.join(layers)} failed: "
                                          f"{str(exc).splitlines()[0]}") from None
                missing = [name for name in self.target_layers if name not in self.gradients]
                if missing:
                    raise LesiondiffError(f"layer {missing[0].removeprefix('model.')!r} gets no gradient from the "
                                          f"target (it is not on the path to it)")
                grads = tuple(self.gradients[name].contiguous() for name in self.target_layers)
                self.result = (logits.detach(), tuple(a.detach().contiguous() for a in acti), grads)
            return self.result

    hooks = OnePass(target, [f"model.{name}" for name in layers], register_forward=True, register_backward=True)
    hooks.fresh()
    return hooks


def layer_cams(target: CamTarget, layers: list[str]):
    """A function (x_t, t) -> (raw maps [L,H,W] float32, target value) for ``layers``."""
    from monai.visualize import GradCAM

    hooks = _one_pass_hooks(target, layers)
    cam = GradCAM(nn_module=hooks, target_layers=hooks.target_layers, postprocessing=lambda m: m)

    def at(x_t: torch.Tensor, t: int) -> tuple[np.ndarray, float]:
        target.t = int(t)
        hooks.fresh()
        x = x_t.detach().clone().requires_grad_(True)  # a layer fed by x_t alone still gets a gradient
        maps = [cam(x, class_idx=0, layer_idx=i)[0, 0] for i in range(len(layers))]
        return torch.stack(maps).float().cpu().numpy(), float(hooks.result[0].reshape(-1)[0])

    return at


def scale_to_max(raw: np.ndarray) -> tuple[np.ndarray, float]:
    """A raw map divided by its maximum (all zeros stay zeros) and that maximum."""
    peak = float(raw.max()) if raw.size else 0.0
    return (raw / peak if peak > 0 else np.zeros_like(raw)).astype(np.float32), peak
