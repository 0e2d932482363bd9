import pytest
import torch

from lesiondiff.build import build_model, build_sampler
from lesiondiff.config import Config, DiffusionConfig
from lesiondiff.engine.checkpoint import Checkpoint
from lesiondiff.models.blocks import DualCrossAttention
from lesiondiff.models.unisegdiff import UniSegDiff
from lesiondiff.presets import load_preset


def tiny(**options) -> UniSegDiff:
    return UniSegDiff(3, base_channels=8, channel_mult=[1, 2], attention_levels=[False, True], **options)


def test_dca_shapes_and_both_directions():
    dca = DualCrossAttention(16, 24, kv_size=4)
    d, c = torch.randn(2, 16, 12, 12), torch.randn(2, 24, 12, 12)
    out = dca(d, c)
    assert out.shape == d.shape
    assert not torch.allclose(dca(d, c + 1.0), out)  # the denoising features see the condition
    # the condition's update (first block, condition as queries) also reaches the output
    with torch.no_grad():
        dca.condition_queries.proj.weight.zero_()
        dca.condition_queries.proj.bias.zero_()
    assert not torch.allclose(dca(d, c), out)


def test_condition_is_cfenet_decoder_features_at_every_merge_point():
    model = tiny().eval()
    cond = model.encode(torch.randn(2, 3, 16, 16))
    # DNet merge points: level 0 (16 px), level 1 (8 px), bottleneck (8 px)
    assert [tuple(f.shape[1:]) for f in cond] == [(8, 16, 16), (16, 8, 8), (16, 8, 8)]
    out = model.denoise(torch.randn(2, 1, 16, 16), torch.tensor([0, 999]), cond)
    assert out.eps.shape == out.x0.shape == (2, 1, 16, 16)
    assert not torch.allclose(out.eps, out.x0)  # two decoders


def test_cfenet_is_frozen_and_stays_in_eval_mode():
    model = tiny(cfenet_channels=4)
    assert all(not p.requires_grad for p in model.cfenet.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("cfenet."))
    model.train()
    assert not model.cfenet.training and model.stem.training


def test_staged_sampler_makes_the_planned_calls_and_returns_20_masks():
    model = tiny().eval()
    calls = []
    denoise = model.denoise

    def spy(x, t, cond):
        calls.append((x.shape[0], sorted(set(t.tolist()))))
        return denoise(x, t, cond)

    model.denoise = spy
    sampler = build_sampler(Config(diffusion=DiffusionConfig()), "staged")
    probs = sampler(model, torch.randn(2, 3, 16, 16), 20, 0, torch.Generator().manual_seed(0))
    assert probs.shape == (2, 20, 1, 16, 16) and 0 <= probs.min() and probs.max() <= 1
    # one rapid call (network t 999), ten DDIM calls 599..329 in both branches, one refinement call (t 0)
    assert [c[1] for c in calls] == [[999], *[[t] for t in range(599, 299, -30)], [0]]
    assert [c[0] for c in calls] == [2] + [4] * 10 + [40]  # 2 images; 2 branches; 20 samples each
    plan = sampler.network_calls(0, 20)
    assert plan == {"passes": len(calls), "evaluations": sum(c[0] for c in calls) // 2}
    # the ten samples of a branch differ (the stochastic last step into x_299), and the draw is seeded
    assert not torch.allclose(probs[0, 0], probs[0, 1])
    again = sampler(model, torch.randn(2, 3, 16, 16), 20, 0, torch.Generator().manual_seed(0))
    assert again.shape == probs.shape
    model.denoise = denoise
    one = build_sampler(Config(diffusion=DiffusionConfig()), "staged")(model, torch.randn(1, 3, 16, 16), 1, 0, None)
    assert one.shape == (1, 1, 1, 16, 16)


def test_staged_sampler_with_final_eta_zero_repeats_each_branch():
    model = tiny().eval()
    from lesiondiff.methods.unisegdiff import StagedSampler

    probs = StagedSampler(DiffusionConfig(), final_eta=0.0)(model, torch.randn(1, 3, 16, 16), 4, 0,
                                                            torch.Generator().manual_seed(0))
    assert torch.allclose(probs[0, 0], probs[0, 1]) and torch.allclose(probs[0, 2], probs[0, 3])


def test_unisegdiff_trains_in_two_phases_with_a_frozen_cfenet(train_tiny_run, tmp_path):
    """``train_run`` pre-trains CFENet as a feed-forward U-Net in run/cfenet, loads it, freezes it: after the
    DNet phase the run's CFENet equals the pre-trained one while DNet has changed; the budget counts both."""
    run = train_tiny_run("unisegdiff", tmp_path / "run", 6, "sample.samples=2", "train.val_samples=2")
    pre = Checkpoint(run / "cfenet" / "checkpoints" / "best.safetensors").section("ema")
    main = Checkpoint(run / "checkpoints" / "last.safetensors")
    for prefix in ("model", "ema"):
        weights = main.section(prefix)
        cfenet = {k[len("cfenet."):]: v for k, v in weights.items() if k.startswith("cfenet.")}
        assert cfenet.keys() == pre.keys()
        assert all(torch.equal(cfenet[k], pre[k]) for k in pre)
    cfg = Config.load(run / "config.yaml")
    fresh = build_model(cfg, cfg.data.channels)
    trained = main.section("model")
    changed = [k for k, v in fresh.state_dict().items() if not k.startswith("cfenet.") and k.endswith("weight")
               and not torch.equal(v, trained[k])]
    assert changed  # DNet trained
    import json

    pre_cfg = Config.load(run / "cfenet" / "config.yaml")
    assert pre_cfg.model.name == "unet" and pre_cfg.diffusion.mode == "feedforward"
    assert pre_cfg.train.steps == round(0.3 * 6)
    summary = json.loads((run / "summary.json").read_text())
    pre_summary = json.loads((run / "cfenet" / "summary.json").read_text())
    assert summary["pretraining"]["step"] == pre_summary["step"]
    assert summary["elapsed_s"] >= pre_summary["elapsed_s"]
    assert summary["trainable_parameters"] < summary["parameters"]


def test_a_given_cfenet_checkpoint_replaces_pretraining(train_tiny_run, tmp_path):
    cfenet_run = train_tiny_run("unet", tmp_path / "unet", 2)
    ckpt = cfenet_run / "checkpoints" / "best.safetensors"
    run = train_tiny_run("unisegdiff", tmp_path / "run", 2, f"model.options.cfenet_checkpoint={ckpt}",
                         "train.val_samples=2")
    assert not (run / "cfenet").exists()
    pre = Checkpoint(ckpt).section("ema")
    weights = Checkpoint(run / "checkpoints" / "last.safetensors").section("model")
    assert all(torch.equal(weights[f"cfenet.{k}"], v) for k, v in pre.items())


def test_preset_is_the_papers_setting():
    cfg = load_preset("unisegdiff")
    assert cfg.diffusion.objective == "staged" and cfg.sample.sampler == "staged"
    assert cfg.sample.samples == 20 and cfg.fusion.method == "staple"
    assert cfg.fusion.options == {}  # STAPLE at its defaults, which are the paper's (tests/test_fusion.py)
    assert cfg.diffusion.objective_options == {"high": 600, "low": 300}


@pytest.mark.parametrize("bad", [0.0, 1.0])
def test_cfenet_fraction_must_leave_time_for_both_phases(bad):
    with pytest.raises(ValueError, match="cfenet_fraction"):
        tiny(cfenet_fraction=bad)


def test_the_trainer_alone_refuses_an_untrained_cfenet(phantom_manifest, tmp_path):
    from lesiondiff.engine.train import Trainer
    from lesiondiff.errors import LesiondiffError

    cfg = load_preset("unisegdiff").override([f"data.manifest={phantom_manifest}", "model.base_channels=8",
                                             "model.channel_mult=[1,2]", "model.attention_levels=[false,true]",
                                             "data.size=32"])
    with pytest.raises(LesiondiffError, match="cfenet must be pre-trained first"):
        Trainer(cfg, tmp_path / "run", device="cpu")
