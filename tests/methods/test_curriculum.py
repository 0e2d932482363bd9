"""Progressive Augmentation Learning: the level schedule, the registry the Trainer reaches it through, and the
Trainer following it; its ablation table regenerates the numbers the code before the registry gave."""

import csv

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lesiondiff.build import build_curriculum
from lesiondiff.cli import main
from lesiondiff.config import Config
from lesiondiff.data.difficulty import score_manifest
from lesiondiff.data.layouts import index_folder
from lesiondiff.data.manifest import Manifest
from lesiondiff.data.splits import assign_splits
from lesiondiff.engine.lr_schedule import training_progress
from lesiondiff.engine.train import Trainer
from lesiondiff.errors import LesiondiffError
from lesiondiff.methods.palscdiff import ProgressiveAugmentation, row_groups
from lesiondiff.presets import load_preset
from tiny_settings import TINY_MODEL

GROUPS = [0, 0, 0, 1, 2, 3, 0, 1, 2, 3, 3]


def curriculum(groups=GROUPS, base_lr=1e-3, **options):
    return ProgressiveAugmentation(rows=[{}] * len(groups), base_lr=base_lr, groups=groups, **options)


def test_level_boundaries_and_learning_rates_follow_the_options():
    c = curriculum(level_fractions=[0.5, 0.25, 0.125, 0.125], lr_factor=0.1, hard_strength=[1.0, 2.0, 3.0])
    assert [c.start(k) for k in range(4)] == [0.0, 0.5, 0.75, 0.875]
    assert [1e-3 * c.lr_factor(k) for k in range(4)] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-6])
    assert [c.level_at(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 0.87, 0.875, 1.0)] == [0, 0, 1, 1, 2, 2, 3, 3]
    # each level adds its hard group to the pool; the share of hard rows grows
    assert [sorted(c.pool(k).tolist()) for k in range(4)] == [
        [0, 1, 2, 6], [0, 1, 2, 3, 6, 7], [0, 1, 2, 3, 4, 6, 7, 8], list(range(11))]
    assert [lv["images"] for lv in c.schedule()] == [4, 6, 8, 11]
    # hard rows get the hard augmentation at the level's strength, easy rows none of it
    assert c.augment_for(0, 3) is None
    aug = c.augment_for(5, 3)
    assert aug.strength == 3.0 and aug.names == c.hard_augment and aug.p == c.hard_augment_p
    assert c.augment_for(3, 1).strength == 1.0
    # the fractions are normalised: 2:1:1:1 is 40 % / 20 % / 20 % / 20 %
    c2 = curriculum(level_fractions=[2, 1, 1, 1])
    assert [c2.start(k) for k in range(4)] == [0.0, 0.4, 0.6, 0.8]


def test_the_trainer_reaches_the_curriculum_through_the_registry_with_checked_options():
    cfg = Config().override(["curriculum.name=palscdiff", "curriculum.options.lr_factor=0.25"])
    rows = [{"difficulty_group": g} for g in GROUPS]
    c = build_curriculum(cfg, rows)
    assert isinstance(c, ProgressiveAugmentation) and c.lr_factor(2) == pytest.approx(0.0625)
    assert build_curriculum(Config(), rows) is None
    with pytest.raises(LesiondiffError, match="curriculum.options.stage_fractions: not an option"):
        build_curriculum(Config().override(["curriculum.name=palscdiff", "curriculum.options.stage_fractions=[1]"]),
                         rows)
    with pytest.raises(LesiondiffError, match="unknown curriculum 'nope'"):
        build_curriculum(Config().override(["curriculum.name=nope"]), rows)


def test_old_curriculum_keys_are_read_with_a_notice(capsys):
    cfg = Config().override(["curriculum.enabled=true", "curriculum.stage_fractions=[0.5,0.1,0.1,0.3]"])
    assert cfg.curriculum.name == "palscdiff"
    assert cfg.curriculum.options == {"level_fractions": [0.5, 0.1, 0.1, 0.3]}
    assert "deprecated curriculum keys" in capsys.readouterr().err
    assert Config().override(["curriculum.enabled=false"]).curriculum.name == "none"


def test_progress_is_the_limit_reached_first():
    assert training_progress(50, 100, 0.0, 0.0) == 0.5
    assert training_progress(10, 100, 30.0, 1.0) == 0.5  # half the minute gone, a tenth of the steps
    assert training_progress(90, 100, 30.0, 1.0) == 0.9
    assert training_progress(200, 100, 0.0, 0.0) == 1.0


def test_bad_schedules_are_one_line_errors():
    with pytest.raises(LesiondiffError, match="needs 4 values"):
        curriculum(level_fractions=[0.5, 0.5])
    with pytest.raises(LesiondiffError, match="must be > 0"):
        curriculum(level_fractions=[0.5, 0.5, 0.0, 0.0])
    with pytest.raises(LesiondiffError, match="groups must lie in 0..3"):
        curriculum(groups=[0, 4])
    with pytest.raises(LesiondiffError, match="easy pool"):
        curriculum(groups=[1, 2, 3])


TINY = [*TINY_MODEL,
        "data.size=32", "train.batch_size=4", "train.val_every=5", "train.log_every=1", "train.val_steps=2",
        "data.val_max_images=4", "train.lr=1e-3", "curriculum.options.lr_factor=0.5"]


@pytest.fixture(scope="module")
def scored_manifest(phantom_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "manifest.csv"
    manifest = Manifest.from_records(assign_splits(index_folder(phantom_dir).records, seed=0))
    score_manifest(manifest, split="train", size=64, progress=False)[0].write(path)
    return path


def test_trainer_follows_the_stages(scored_manifest, tmp_path):
    cfg = load_preset("palscdiff", "paper").override([f"data.manifest={scored_manifest}", "train.steps=10", *TINY])
    trainer = Trainer(cfg, tmp_path / "run", device="cpu")
    groups = row_groups(trainer.train_data.rows)
    seen: dict[int, set[int]] = {}
    original = trainer._next_batch

    def spy():
        seen.setdefault(trainer.level, set()).update(int(g) for g in groups[trainer.perm[trainer.pos:trainer.pos + 4]])
        return original()

    trainer._next_batch = spy
    summary = trainer.fit()
    with (tmp_path / "run/log.csv").open() as f:
        log = list(csv.DictReader(f))
    # 40 / 20 / 20 / 20 % of 10 steps: level 2 from step 4 (the 5th step), 3 from step 6, 4 from step 8
    assert [int(r["level"]) for r in log] == [1, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [float(r["lr"]) for r in log] == pytest.approx([1e-3] * 4 + [5e-4] * 2 + [2.5e-4] * 2 + [1.25e-4] * 2)
    assert [s["began_at_step"] for s in summary["curriculum"]] == [0, 4, 6, 8]
    for level, drawn in seen.items():
        assert max(drawn) <= level  # only the level's pool is drawn from
    assert "curriculum:" in (tmp_path / "run/config.yaml").read_text(encoding="utf-8")


def test_curriculum_resume_is_exact(scored_manifest, tmp_path):
    def cfg(steps):
        return load_preset("palscdiff", "paper").override([f"data.manifest={scored_manifest}", f"train.steps={steps}", *TINY,
                                                  "curriculum.options.level_fractions=[0.5,0.1,0.1,0.3]"])

    Trainer(cfg(10), tmp_path / "straight", device="cpu").fit()
    # Ctrl-C before step 7 (level 2 runs from step 5 to 6); the resumed run must enter level 3 at step 6
    first = Trainer(cfg(10), tmp_path / "split", device="cpu")
    advance = first._advance_curriculum

    def interrupt_at_six():
        if first.step == 6:
            raise KeyboardInterrupt
        advance()

    first._advance_curriculum = interrupt_at_six
    assert first.fit()["status"] == "interrupted"
    resumed = Trainer(cfg(10), tmp_path / "split", device="cpu", resume=True)
    assert (resumed.step, resumed.level) == (6, 1)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert resumed.fit()["curriculum"][2]["began_at_step"] == 6
    a = load_file(str(tmp_path / "straight/checkpoints/last.safetensors"))
    b = load_file(str(tmp_path / "split/checkpoints/last.safetensors"))
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_missing_difficulty_columns_are_scored_when_training_starts(phantom_dir, tmp_path):
    path = tmp_path / "plain.csv"
    Manifest.from_records(assign_splits(index_folder(phantom_dir).records, seed=0)).write(path)
    messages = []
    rows = Manifest.read(path).rows(split="train")
    groups = row_groups(rows, log=messages.append)
    assert "scoring them now" in messages[0]
    assert set(np.unique(groups)) <= {0, 1, 2, 3} and (groups == 0).sum() >= len(rows) // 2


@pytest.mark.slow
def test_the_ablation_table_regenerates_the_numbers_of_the_code_before_the_registry(phantom_manifest, tmp_path):
    """The same command and seed as before PalScDiff's curriculum moved behind the registry (commit 81154d7 of
    this repository, one thread): the baseline and the PAL arm, 6 steps each, levels changing at steps 3, 4, 5."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["ablate", "--preset", "palscdiff", "--manifest", str(phantom_manifest), "--budget-minutes", "10",
                     "--out", str(tmp_path), "--arms", "baseline,pal", "--size", "32", "--max-steps", "6",
                     "--samples", "2", "--steps", "2", "--device", "cpu", *TINY_MODEL, "train.val_every=3",
                     "train.log_every=3", "train.batch_size=4", "train.val_steps=2", "data.val_max_images=4"]) == 0
    finally:
        torch.set_num_threads(threads)
    with (tmp_path / "ablation.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["baseline"]["dice_pct"]) == pytest.approx(11.01242503030021, abs=1e-9)
    assert float(rows["pal"]["dice_pct"]) == pytest.approx(10.89094955796624, abs=1e-9)
    import json

    levels = json.loads((tmp_path / "pal/train/summary.json").read_text())["curriculum"]
    assert [lv["began_at_step"] for lv in levels] == [0, 3, 4, 5]
    assert [lv["lr"] for lv in levels] == pytest.approx([3e-4, 1.5e-4, 7.5e-5, 3.75e-5])
