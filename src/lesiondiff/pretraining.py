"""Pre-trained parts: the designs whose network includes a frozen feed-forward segmenter (UniSegDiff's CFENet,
the refiner's prior) name it (``Denoiser.pretrained_part``), and their method registers here how that
segmenter's own training runs are configured (``PRETRAINING``: model name -> cfg -> {run folder name: that
pre-training run's Config}, the part ``pretrained_part`` names first; a design may have further frozen segmenters,
e.g. the refiner's cross-fitted fold priors). ``engine/runs.train_run`` trains them first (or takes
``model.options.<part>_checkpoint`` for the first), then the design with them frozen, in one budget; it reaches
the registry through ``build.pretraining_configs``.
"""

from __future__ import annotations

import dataclasses

from .config import Config
from .registry import Registry

PRETRAINING = Registry("pre-training")


def segmenter_pretrain_config(cfg: Config, fraction: float, base_channels: int, name: str) -> Config:
    """The config of a design's pre-trained segmenter: the feed-forward ``unet`` with ``cfg``'s layout at width
    ``base_channels``, Dice + BCE on the same data and recipe, for ``fraction`` of ``cfg``'s steps and time
    budget, without a curriculum; its preset reads ``<preset>/<name>``."""
    model = dataclasses.replace(cfg.model, name="unet", options={}, base_channels=base_channels)
    # a segmenter has no timesteps: the design's timestep sampling and input scaling stay with the design
    diffusion = dataclasses.replace(cfg.diffusion, mode="feedforward", prediction="x0", objective="feedforward",
                                    objective_options={}, timestep_sampling="uniform", input_scale=1.0)
    train = dataclasses.replace(cfg.train, steps=max(1, round(fraction * cfg.train.steps)),
                                max_minutes=fraction * cfg.train.max_minutes)
    return dataclasses.replace(cfg, preset=f"{cfg.preset}/{name}", model=model, diffusion=diffusion, train=train,
                               curriculum=dataclasses.replace(cfg.curriculum, name="none", options={}))
