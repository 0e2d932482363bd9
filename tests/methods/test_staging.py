import pytest
import torch

from lesiondiff.build import build_objective
from lesiondiff.config import DiffusionConfig
from lesiondiff.errors import LesiondiffError
from lesiondiff.methods.unisegdiff import PROBABILISTIC, RAPID, REFINEMENT, Stages
from lesiondiff.models.base import Denoiser, DenoiserOutput


def test_stage_of_each_t_and_its_remapping_and_weights():
    s = Stages.from_options(DiffusionConfig())
    t = torch.tensor([999, 700, 600, 599, 450, 300, 299, 150, 0])
    assert s.stage_of(t).tolist() == [RAPID, RAPID, RAPID, PROBABILISTIC, PROBABILISTIC, PROBABILISTIC,
                                      REFINEMENT, REFINEMENT, REFINEMENT]
    # the paper: t > 599 -> 999, 299 < t <= 599 unchanged, t <= 299 -> 0
    assert s.network_t(t).tolist() == [999, 999, 999, 599, 450, 300, 0, 0, 0]
    alpha, beta = s.weights(t)
    ratios = (alpha / beta).tolist()
    assert ratios[:3] == pytest.approx([1 / 3] * 3) and ratios[3:6] == pytest.approx([1.0] * 3)
    assert ratios[6:] == pytest.approx([3.0] * 3)
    assert torch.allclose(alpha + beta, torch.full_like(alpha, 2.0))  # every stage weighs the same in total


def test_thresholds_are_options_for_the_papers_threshold_ablation():
    s = Stages.from_options(DiffusionConfig(objective="staged", objective_options={"high": 500, "low": 200}))
    assert s.network_t(torch.tensor([500, 499, 200, 199])).tolist() == [999, 499, 200, 0]
    with pytest.raises(LesiondiffError, match="low < high"):
        Stages.from_options(DiffusionConfig(objective_options={"high": 300, "low": 600}))
    with pytest.raises(LesiondiffError, match="whole timesteps"):
        Stages.from_options(DiffusionConfig(objective_options={"high": 600.5}))


class Recorder(Denoiser):
    """Both heads constant; records the timesteps the network was given."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def denoise(self, x_t, t, condition):
        self.seen.append(t.tolist())
        return DenoiserOutput(eps=torch.zeros_like(x_t) + self.w, x0=torch.full_like(x_t, 8.0) + self.w)


def test_staged_objective_remaps_t_and_weights_each_sample():
    cfg = DiffusionConfig(objective="staged")
    objective = build_objective(cfg)
    model = Recorder()
    mask = -torch.ones(3, 1, 4, 4)  # x0 head says foreground everywhere (logit 8): Dice + BCE is large
    batch = {"image": torch.zeros(3, 1, 4, 4), "mask": mask}
    noise = torch.ones(3, 1, 4, 4)  # eps head says 0: MSE = 1 for every sample
    t = torch.tensor([900, 400, 100])
    loss = objective(model, batch, t, noise)
    assert model.seen == [[999, 400, 0]]
    seg = float(loss.parts["dice"] + loss.parts["bce"])  # the same for the three samples
    expected = ((0.5 * 1 + 1.5 * seg) + (1 * 1 + 1 * seg) + (1.5 * 1 + 0.5 * seg)) / 3
    assert float(loss.total.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(loss.parts["frac_rapid"]) == pytest.approx(1 / 3)
