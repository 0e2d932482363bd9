"""The S members of one image's prediction, from every source of spread through one path: a diffusion sampler's
draws, test-time augmentation (TTA), MC dropout, and the runs of an ensemble.

Member i of S (0-based) comes from run m = i mod M of the M runs (one, or an ensemble's members), seen under
view g = (i div M) mod G of the TTA group's G transforms, as its draw k = i div (M G). A run without noise input
(the feed-forward ``unet``) gives the same mask for every k, so it is evaluated once per (run, view) and copied,
unless MC dropout is on. Each run samples all its views in one batch with the condition encoded once per view.

TTA (``sample.tta``): each view is the image flipped and/or turned by quarter turns; the member's probability is
mapped back by the inverse transform, exactly (flips and quarter turns of a square grid permute pixels):
- ``flips``: identity, left-right, up-down, both (the default group; ultrasound and endoscopy have no
  preferred handedness, but images have an up, so quarter turns are an option, not the default);
- ``d4``: the eight symmetries of the square (four quarter turns, each with and without a left-right flip).
MC dropout (``sample.mc_dropout``; Gal and Ghahramani, ICML 2016): the network's dropout layers stay in
training mode while sampling, so the members of one batch draw independent dropout masks. Their randomness is
seeded from the image's seed (``torch.random.fork_rng``), so a prediction is the same on every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion.samplers import Sampler
from ..errors import LesiondiffError
from ..models import Denoiser

View = tuple[int, bool]  # (quarter turns after the flip, left-right flip first)
TTA_GROUPS: dict[str, tuple[View, ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),  # identity, left-right, up-down, both
    "d4": tuple((k, f) for f in (False, True) for k in range(4)),
}


def forward_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """``x [..., H, W]`` under ``view``: flipped left-right first (if so), then turned ``k`` quarter turns."""
    k, flip = view
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def inverse_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """The exact inverse of :func:`forward_view`."""
    k, flip = view
    if k:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def tta_views(name: str) -> tuple[View, ...]:
    if name not in TTA_GROUPS:
        raise LesiondiffError(f"sample.tta must be one of {', '.join(TTA_GROUPS)}, got {name!r}")
    return TTA_GROUPS[name]


def has_dropout(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


@contextmanager
def dropout_on(model: torch.nn.Module, seed: int):
    """The model's dropout layers in training mode, their randomness seeded by ``seed``, for the block."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in layers:
            layer.train()
        try:
            yield
        finally:
            for layer in layers:
                layer.eval()


def count_distinct(noisy: Sequence[bool], samples: int, views: int) -> int:
    """How many of S members can differ, for runs whose draws differ (``noisy``) or not, over ``views`` TTA
    views (module docstring: member i is run i mod M, view (i div M) mod G, draw i div (M G))."""
    m = len(noisy)
    i = np.arange(samples)
    return len({(r, (k // m) % views, k // (m * views) if noisy[r] else 0) for k, r in zip(i, i % m)})


@dataclass
class Source:
    """One run's network and sampler (an ensemble has several)."""

    model: Denoiser
    sampler: Sampler


class Members:
    """How the S members of an image are made (module docstring): ``runs`` sources, the TTA ``views``, MC
    dropout, and S."""

    def __init__(self, sources: Sequence[Source], samples: int, tta: str = "none", mc_dropout: bool = False) -> None:
        self.sources, self.samples = list(sources), samples
        self.views = tta_views(tta)
        self.mc_dropout = mc_dropout
        if mc_dropout and not all(has_dropout(s.model) for s in self.sources):
            raise LesiondiffError("sample.mc_dropout needs a run trained with model.dropout > 0 (its network has "
                                  "no dropout to leave on)")
        self.per = math.ceil(samples / (len(self.sources) * len(self.views)))  # draws per (run, view)

    def noisy(self, source: Source) -> bool:
        """Whether a run's draws differ: it takes noise, or its dropout is on."""
        return source.model.takes_noise or self.mc_dropout

    def draws(self, source: Source) -> int:
        return self.per if self.noisy(source) else 1

    def index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(run, view, draw) of each of the S members."""
        i = np.arange(self.samples)
        m, g = len(self.sources), len(self.views)
        return i % m, (i // m) % g, i // (m * g)

    def distinct(self) -> int:
        """How many of the S members can differ (copies of one evaluation count once)."""
        return count_distinct([self.noisy(s) for s in self.sources], self.samples, len(self.views))

    def __call__(self, image: torch.Tensor, steps: int, generator: torch.Generator, seed: int) -> np.ndarray:
        """``image [1,C,H,W]`` -> the members' probabilities ``[S,H,W]`` in [0,1], each mapped back to the image."""
        views = torch.cat([forward_view(image, v) for v in self.views])  # [G,C,H,W]
        table = []
        for r, source in enumerate(self.sources):
            draws = self.draws(source)
            if self.mc_dropout:
                with dropout_on(source.model, seed + r):
                    probs = source.sampler(source.model, views, draws, steps, generator)
            else:
                probs = source.sampler(source.model, views, draws, steps, generator)
            probs = torch.stack([inverse_view(probs[g, :, 0], v) for g, v in enumerate(self.views)])  # [G,d,H,W]
            table.append(probs.float().cpu().numpy())
        runs, vs, ds = self.index()
        return np.stack([table[r][v, d if d < table[r].shape[1] else 0] for r, v, d in zip(runs, vs, ds)])

    def network_calls(self, steps: int) -> dict[str, int]:
        """Passes (one after another) and network evaluations of one image, over every run and view."""
        calls = [s.sampler.network_calls(steps, self.draws(s) * len(self.views)) for s in self.sources]
        return {"passes": sum(c["passes"] for c in calls), "evaluations": sum(c["evaluations"] for c in calls)}

    def describe(self) -> str:
        """What the S members are, for predict.json and the tables (``samples_are``)."""
        parts = []
        if len(self.sources) > 1:
            parts.append(f"an ensemble of {len(self.sources)} runs (member i from run i mod {len(self.sources)})")
        if len(self.views) > 1:
            parts.append(f"test-time augmentation over {len(self.views)} views (flips"
                         f"{' and quarter turns' if len(self.views) > 4 else ''}), each mapped back exactly")
        if self.mc_dropout:
            parts.append("MC dropout (dropout left on, a mask per member)")
        return "; ".join(parts)
