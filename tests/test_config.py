import pytest

from lesiondiff.build import check_size
from lesiondiff.config import Config
from lesiondiff.errors import LesiondiffError
from lesiondiff.presets import load_preset, preset_names, recipe_names
from lesiondiff.registry import Registry


def test_presets_load_and_round_trip(tmp_path):
    assert {"ensemdiff", "unet"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert cfg.preset == name
        cfg.save(tmp_path / f"{name}.yaml")
        assert Config.load(tmp_path / f"{name}.yaml") == cfg


def test_ensemdiff_preset_is_the_papers_setting():
    cfg = load_preset("ensemdiff", "paper")
    d = cfg.diffusion
    assert (d.schedule, d.num_train_timesteps, d.beta_start, d.beta_end) == ("linear", 1000, 1e-4, 2e-2)
    assert (d.prediction, d.objective, cfg.train.lr) == ("epsilon", "eps_mse", 1e-4)
    assert load_preset("unet").diffusion.mode == "feedforward"


def test_overrides_parse_values_and_reject_unknown_keys():
    cfg = Config().override(["train.steps=12", "data.augment=[flip]", "data.intensity_window=[30, 235]",
                             "model.options.extra=3"])
    assert cfg.train.steps == 12 and cfg.data.augment == ["flip"] and cfg.data.intensity_window == [30, 235]
    assert cfg.model.options == {"extra": 3}
    with pytest.raises(LesiondiffError, match="unknown config key 'train.stepz'"):
        Config().override(["train.stepz=3"])
    with pytest.raises(LesiondiffError, match="unknown config key 'nope.x'"):
        Config().override(["nope.x=1"])
    with pytest.raises(LesiondiffError, match="expected section.key=value"):
        Config().override(["train.steps"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(LesiondiffError, match=r"bad\.yaml: unknown config key 'train\.stepz'"):
        Config.load(path)
    with pytest.raises(LesiondiffError, match="unknown preset"):
        load_preset("nope")


def test_registry_builds_and_lists():
    reg = Registry("thing")

    @reg.register("a")
    def make_a(x=1):
        return ("a", x)

    assert reg.build("a", x=2) == ("a", 2)
    assert reg.names() == ["a"] and "a" in reg
    with pytest.raises(LesiondiffError, match="unknown thing 'b'; known: a"):
        reg.get("b")
    with pytest.raises(ValueError):
        reg.register("a")(make_a)


def test_values_are_checked_against_field_types():
    cfg = Config().override(["train.lr=3e-4", "train.steps=10.0", "data.fold=null"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.steps, int) and cfg.data.fold is None
    with pytest.raises(LesiondiffError, match="config key 'train.steps' must be int, got 'many'"):
        Config().override(["train.steps=many"])
    with pytest.raises(LesiondiffError, match="'fusion.crf' must be bool"):
        Config().override(["fusion.crf=3"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=-5", "train.steps must be >= 1, got -5"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("sample.threshold=7", r"sample.threshold must be in \(0, 1\), got 7"),
    ("sample.samples=0", r"sample.samples must be in \[1, 1024\], got 0"),
    ("sample.samples=100000", r"sample.samples must be in \[1, 1024\], got 100000"),
    ("train.val_samples=5000", r"train.val_samples must be in \[1, 1024\]"),
    ("sample.steps=-3", "sample.steps must be >= 1"),
    ("data.size=7", r"data.size must be in \[8, 2048\], got 7"),
    ("data.size=16384", r"data.size must be in \[8, 2048\], got 16384"),
    ("train.ema_decay=1", r"train.ema_decay must be in \[0, 1\)"),
    ("sample.start_t=1000", "sample.start_t must be below diffusion.num_train_timesteps"),
    ("model.channel_mult=[]", "model.channel_mult must be a non-empty list"),
])
def test_out_of_range_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(LesiondiffError, match=message):
        load_preset("unet").override([override])


def test_every_preset_under_every_recipe_is_within_range():
    for name in preset_names():
        for recipe in recipe_names():
            load_preset(name, recipe)  # raises when a shipped value is out of range


@pytest.mark.parametrize("preset, size, multiple", [("unet", 100, 8), ("pgdiffseg", 72, 16), ("refiner", 36, 8)])
def test_size_is_checked_against_the_networks_total_stride(preset, size, multiple):
    cfg = load_preset(preset)
    check_size(cfg)  # the preset's own size is fine
    with pytest.raises(LesiondiffError, match=f"data.size {size}: model .* needs a multiple of {multiple}"):
        check_size(cfg.override([f"data.size={size}"]))


def test_the_demo_overlay_lays_its_keys_over_preset_and_recipe():
    from lesiondiff.presets import load_overlay

    overrides = load_overlay("demo")
    cfg = load_preset("ensemdiff").override(overrides)
    assert (cfg.model.base_channels, cfg.model.channel_mult) == (16, [1, 2, 4, 8])
    assert (cfg.diffusion.prediction, cfg.diffusion.objective, cfg.train.lr) == ("x0", "x0_hybrid", 1e-3)
    assert cfg.train.batch_size == 16 and cfg.data.val_max_images == 16
    assert cfg.train.schedule == "cosine"  # the recipe's keys the overlay does not name stay
    with pytest.raises(LesiondiffError, match="unknown overlay 'nope'; known: demo"):
        load_overlay("nope")


def test_moved_sampler_keys_are_read_from_the_old_place_with_one_notice(capsys):
    """DiffSeg's class_difference settings moved from diffusion.objective_options to sample.options: a saved
    config or an override with the old keys still works, and says so in one line naming them."""
    old = {"diffusion": {"objective": "class_eps", "objective_options": {"p_healthy": 0.25, "t_first": 80, "otsu": 0}},
           "sample": {"sampler": "class_difference", "options": {"t_first": 60, "sigma": 2.0}}}
    cfg = Config.from_dict(old, source="runs/old/config.yaml")
    assert cfg.diffusion.objective_options == {"p_healthy": 0.25}
    assert cfg.sample.options == {"t_first": 80, "sigma": 2.0, "otsu": 0}  # the old key, given, wins
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lesiondiff: runs/old/config.yaml: deprecated keys diffusion.objective_options.{t_first, otsu}: "
                   "now sample.options (read from the old place)"]
    again = Config.from_dict(cfg.to_dict())  # saved in the new place: no notice
    assert again == cfg and capsys.readouterr().err == ""


BIG = 9007199254740993  # 2**53 + 1: the first int a float cannot hold (float(BIG) == BIG - 1)


def test_large_integers_stay_exact():
    cfg = Config().override([f"train.seed={BIG}", f"sample.seed={BIG}"])
    assert (cfg.train.seed, cfg.sample.seed) == (BIG, BIG)
    rounds = Config().override(["fusion.method=crf_rounds", f"fusion.options.seed={BIG}"])
    from lesiondiff.build import build_fusion

    assert build_fusion(rounds)[0]["seed"] == BIG
    assert Config.from_dict({"train": {"seed": str(BIG)}}).train.seed == BIG  # a quoted YAML value too
    assert Config().override(["train.steps=1e3"]).train.steps == 1000  # whole floats are still ints
    for bad in ("train.seed=.inf", "train.seed=.nan", "train.seed=2.5", "train.seed=true"):
        with pytest.raises(LesiondiffError, match="config key 'train.seed' must be int"):
            Config().override([bad])


def test_build_options_keep_large_integers_exact():
    from lesiondiff.build import checked_options

    def factory(seed: int = 0):
        return seed

    assert checked_options(factory, {"seed": BIG}, "model.options", "test") == {"seed": BIG}


def test_a_range_declared_once_is_read_by_the_config_the_cli_and_serve(monkeypatch, capsys):
    """Narrowing sample.samples in its declaration narrows the config's check, the CLI's --samples and serve's
    job limit alike: there is no second table to forget."""
    import dataclasses
    from types import MappingProxyType

    from lesiondiff.cli import main
    from lesiondiff.config import SampleConfig, range_of
    from lesiondiff.errors import LesiondiffError
    from lesiondiff.serve.app import limits

    field = next(f for f in dataclasses.fields(SampleConfig) if f.name == "samples")
    assert range_of("sample.samples")[:2] == (1, 1024) and limits()["samples"] == (1, 1024)
    monkeypatch.setattr(field, "metadata", MappingProxyType({"range": (1, 7, False, False)}))
    assert limits()["samples"] == (1, 7)
    with pytest.raises(LesiondiffError, match=r"sample.samples must be in \[1, 7\], got 8"):
        Config().override(["sample.samples=8"])
    assert main(["predict", "--run", "nowhere", "--samples", "8", "--out", "o", "x.png"]) == 2
    assert "--samples must be in [1, 7], got 8" in capsys.readouterr().err


def test_a_built_config_is_frozen():
    import dataclasses

    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.channels = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sample = None
    assert cfg.override(["data.channels=3"]).data.channels == 3 and cfg.data.channels == 0
