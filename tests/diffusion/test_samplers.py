"""Scheduler round trips: add_noise, then a model that returns the true eps (or x0) recovers x0."""

import pytest
import torch

from lesiondiff.build import build_sampler
from lesiondiff.config import Config, DiffusionConfig
from lesiondiff.diffusion.objectives import EpsMSE
from lesiondiff.diffusion.samplers import SAMPLERS
from lesiondiff.diffusion.schedules import alphas_cumprod, training_scheduler
from lesiondiff.models.base import Denoiser, DenoiserOutput


class Oracle(Denoiser):
    """Knows the clean mask x0 and answers with the exact eps (or x0 logits) for any x_t."""

    def __init__(self, x0: torch.Tensor, prediction: str, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.x0, self.prediction = x0, prediction
        self.abar = alphas_cumprod(cfg)
        self.calls = {"encode": 0, "denoise": 0}
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, image):
        self.calls["encode"] += 1
        return image

    def denoise(self, x_t, t, condition):
        self.calls["denoise"] += 1
        x0 = self.x0.expand_as(x_t)
        if self.prediction == "epsilon":
            a = self.abar[t].view(-1, 1, 1, 1)
            return DenoiserOutput(eps=(x_t - a.sqrt() * x0) / (1 - a).sqrt())
        return DenoiserOutput(x0=torch.logit(((x0 + 1) / 2).clamp(1e-6, 1 - 1e-6)))


def square_mask(size=16):
    m = -torch.ones(1, 1, size, size)
    m[..., 4:12, 5:13] = 1
    return m


def test_linear_schedule_matches_the_papers():
    cfg = DiffusionConfig()
    betas = training_scheduler(cfg).betas
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(2e-2)
    abar = alphas_cumprod(cfg)
    assert abar[-1] < 1e-4 and bool((abar[1:] < abar[:-1]).all())


def test_add_noise_matches_the_closed_form():
    cfg = DiffusionConfig()
    x0, noise, t = square_mask(), torch.randn(1, 1, 16, 16), torch.tensor([500])
    ours = EpsMSE(cfg).noisy(x0, noise, t)
    assert torch.allclose(ours, training_scheduler(cfg).add_noise(x0, noise, t), atol=1e-6)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmsolver", "dpmsolver++", "unipc"])
@pytest.mark.parametrize("prediction", ["epsilon", "x0"])
def test_perfect_model_recovers_x0(name, prediction):
    cfg = DiffusionConfig()
    x0 = square_mask()
    model = Oracle(x0, prediction, cfg)
    probs = build_sampler(Config(diffusion=cfg), name)(model, torch.zeros(2, 1, 16, 16), num_samples=3, steps=10,
                                     generator=torch.Generator().manual_seed(0))
    assert probs.shape == (2, 3, 1, 16, 16)
    # DPM-Solver's noise-prediction form stops at sigma_min = sqrt(1 - abar_0) = 0.01, not at 0.
    atol = 2e-2 if name == "dpmsolver" else 2e-3
    assert torch.allclose(probs, ((x0 + 1) / 2).expand_as(probs), atol=atol)
    assert model.calls == {"encode": 1, "denoise": 10}


def test_one_shot_from_eps_and_x0():
    cfg = DiffusionConfig()
    x0 = square_mask()
    for prediction in ("epsilon", "x0"):
        probs = build_sampler(Config(diffusion=cfg), "oneshot")(Oracle(x0, prediction, cfg), torch.zeros(1, 1, 16, 16), 2, 1,
                                              torch.Generator().manual_seed(0))
        assert torch.allclose(probs, ((x0 + 1) / 2).expand_as(probs), atol=2e-3)


def test_feedforward_mode_forces_one_shot_and_seeds_repeat():
    cfg = DiffusionConfig(mode="feedforward")
    assert type(build_sampler(Config(diffusion=cfg), "ddim")).__name__ == "OneShotSampler"
    assert set(SAMPLERS.names()) >= {"ddpm", "ddim", "dpmsolver", "dpmsolver++", "unipc", "oneshot"}


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmsolver", "dpmsolver++", "unipc"])
def test_sampling_shows_no_deprecation_warning(name):
    """diffusers deprecates algorithm_type="dpmsolver"; the sampler of that name ignores that one warning where
    it builds the scheduler (pyproject's filterwarnings hides FutureWarning in pytest: "always" shows it here)."""
    import warnings

    from diffusers import DPMSolverMultistepScheduler

    cfg = DiffusionConfig()
    sampler = build_sampler(Config(diffusion=cfg), name)
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = sampler(Oracle(square_mask(), "epsilon", cfg), torch.zeros(1, 1, 16, 16), num_samples=2, steps=4,
                        generator=torch.Generator().manual_seed(0))
        assert probs.shape == (1, 2, 1, 16, 16)
        # FutureWarning is shown to users by default (DeprecationWarning is not, outside __main__)
        assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
        # the warning is still there when the scheduler is built without the sampler: the filter is the sampler's
        DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")
        assert any("algorithm_type dpmsolver is deprecated" in str(w.message) for w in caught)
    assert warnings.filters == filters
