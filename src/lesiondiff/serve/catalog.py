"""The models a server offers: every shipped model and the ``--run`` folder, each with the sampling settings of
its config, which the page's fields start at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import LesiondiffError


@dataclass(frozen=True)
class Model:
    name: str  # what the page's model picker shows
    run: Path  # the run folder Predictor.from_run reads
    source: str  # "shipped" or "run"

    def defaults(self) -> dict:
        """The run's own sampling settings (config.yaml): S, steps, seed, threshold, sampler and preset."""
        cfg = Config.load(self.run / "config.yaml")
        s = cfg.sample
        return {"samples": s.samples, "steps": 1 if cfg.diffusion.feedforward else s.steps, "seed": s.seed,
                "threshold": s.threshold, "sampler": s.sampler, "preset": cfg.preset,
                "feedforward": cfg.diffusion.feedforward}

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "defaults": self.defaults()}


def catalog(shipped: dict[str, Path], run: Path | None = None) -> dict[str, Model]:
    """Name -> Model: the ``run`` folder first (named after its folder), then every shipped model by name."""
    models: dict[str, Model] = {}
    if run is not None:
        if not (run / "config.yaml").is_file():
            raise LesiondiffError(f"{run}: not a run folder (no config.yaml)")
        name = run.resolve().name
        name = f"{name} (run)" if name in shipped else name
        models[name] = Model(name, run, "run")
    models.update({name: Model(name, path, "shipped") for name, path in shipped.items()})
    if not models:
        raise LesiondiffError("nothing to serve: no model ships with this installation yet; give --run DIR "
                              "(a trained run folder)")
    return models
