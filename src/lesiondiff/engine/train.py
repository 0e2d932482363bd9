"""The Trainer: one loop for every design, objective and mode, with EMA, validation and exact resume.

Run directory layout (the seam to the Predictor):
    config.yaml                 the full config used, with the resolved channel count
    checkpoints/last.safetensors  written every ``val_every`` steps, on Ctrl-C / SIGTERM and at the end
    checkpoints/best.safetensors  the step with the highest validation Dice so far
    log.csv                     step, losses, validation Dice, elapsed seconds (with a curriculum: level, lr)
    summary.json                what the run reached (with a curriculum: each level and the step it began at)
    timestep_weights.csv        t, p: the probability of drawing each training timestep (diffusion.timestep_sampling;
                                recomputed, identically, on resume)
Curriculum (``curriculum.name``, a registered ``curricula.Curriculum``, e.g. PalScDiff's Progressive Augmentation
Learning; built by ``build.build_curriculum``, so this loop knows no method): before every step the level is
looked up from the training progress; entering a level sets its learning-rate factor, draws from its pool in a
new random order and prints the change; each row is augmented as the curriculum says for it. The level is saved
in checkpoints, so a resumed run continues in the same level with the same order.
Learning rate: ``train.schedule`` (constant or cosine) after ``train.warmup`` linear warm-up steps, over the run's
progress (``engine/lr_schedule.py``); the rate of every step is logged (``lr`` column). With a curriculum the
schedule scales each level's rate.
Designs that equal a known-good model at initialisation (``Denoiser.validate_at_start``: the refiner, equal to
its prior) are validated before the first step, so the best checkpoint can stay the initial one.
Validation: the EMA weights sample each validation image once (``train.val_samples``) with a fixed seed and a
few-step sampler; masks are thresholded at 0.5 and Dice is averaged per image at the training resolution.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import signal
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..build import (
    build_curriculum,
    build_model,
    build_objective,
    build_sampler,
    build_timestep_sampler,
    visited_timesteps,
)
from ..config import Config
from ..data.dataset import SplitData, load_rows, select_rows
from ..data.manifest import Manifest, evenly_spaced
from ..data.splits import case_folds, fold_of_row
from ..data.transforms import Augment
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..models import count_parameters
from .checkpoint import Checkpoint, load_frozen, save_checkpoint
from .device import make_accelerator
from .lr_schedule import LRSchedule, training_progress

# What train.max_minutes and elapsed_s count: wall-clock time, or this process's CPU time (all its threads), which
# other work on the machine does not eat into, so budgets stay comparable on a shared machine.
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def dice_at_threshold(probs: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image Dice of probs [N,1,H,W] >= threshold against masks [N,1,H,W] in {-1,+1}; empty vs empty is 1."""
    pred = (probs >= threshold).flatten(1).float()
    gt = (masks > 0).flatten(1).float()
    denom = pred.sum(1) + gt.sum(1)
    return torch.where(denom == 0, torch.ones_like(denom), 2 * (pred * gt).sum(1) / denom.clamp_min(1))


def _chosen(choice_dice: dict[str, float]) -> str:
    """The validation choice with the highest Dice (the first of equal ones)."""
    return max(choice_dice, key=choice_dice.get)


class EMA:
    """Exponential moving average of the weights, with the usual warm-up decay min(d, (1+n)/(10+n))."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | Path, device: str | None = None, resume: bool = False,
                 pretrained: dict[str, Path] | None = None, elapsed: float = 0.0) -> None:
        """``pretrained``: {pre-training run name: checkpoint} that the design's frozen parts load before training
        starts (``pretrained_module(name)``, e.g. UniSegDiff's CFENet, the refiner's priors; ignored on resume,
        where the run's checkpoint holds them);
        ``elapsed``: seconds already spent on this run (by that pre-training), counted against the budget."""
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        last = self.ckpt_dir / "last.safetensors"
        if resume and not last.is_file():
            raise LesiondiffError(f"{last}: checkpoint not found; nothing to resume")
        if not resume and last.is_file():
            raise LesiondiffError(f"{self.out}: already holds a run; pass --resume to continue it or choose another --out")
        if cfg.train.clock not in CLOCKS:
            raise LesiondiffError(f"train.clock must be one of {', '.join(CLOCKS)}, got {cfg.train.clock!r}")
        self.cfg = cfg
        self.accelerator = make_accelerator(device, cfg.train.mixed_precision)
        self.device = self.accelerator.device
        torch.manual_seed(cfg.train.seed)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)

        manifest = Manifest.read(cfg.data.manifest)
        self.train_data = load_rows(select_rows(manifest, cfg.data, "train"), cfg.data, cfg.data.channels,
                                    desc="loading train")
        # the channel count the images have: this run's own record (config.yaml), not the caller's Config
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, channels=self.train_data.images.shape[1]))
        self.cfg = cfg
        # spread over the split (sorted by id, so over the datasets of a unified manifest), not its first rows
        val_rows = evenly_spaced(select_rows(manifest, cfg.data, "val"), cfg.data.val_max_images)
        self.val_data = load_rows(val_rows, cfg.data, cfg.data.channels, desc="loading val") if val_rows else None

        model = build_model(cfg, cfg.data.channels)
        if pretrained and not resume:
            for name, checkpoint in pretrained.items():
                load_frozen(model.pretrained_module(name), checkpoint)
        elif not resume and model.pretrained_part:
            raise LesiondiffError(f"{cfg.model.name}: its {model.pretrained_part} must be pre-trained first; train "
                                  "it with lesiondiff train (engine.runs.train_run), which runs both phases")
        # cross-fitting (the refiner's fold priors): each training row's fold, passed with its batch
        self.row_fold, self.prior_folds = None, model.prior_folds
        if model.prior_folds:
            folds = case_folds(self.train_data.rows, model.prior_folds)
            self.row_fold = torch.tensor([fold_of_row(r, folds) for r in self.train_data.rows])
        self.choice_dice: dict[str, float] = {}  # the last validation's Dice of each validation choice
        self.best_choice: dict[str, float] = {}  # ... and the best checkpoint's
        self.n_params = count_parameters(model)
        self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.ema = EMA(model, cfg.train.ema_decay)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                      weight_decay=cfg.train.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema.model.to(self.device)
        self.visited = visited_timesteps(cfg)  # the sampler's timesteps (aligned training, recycling)
        self.objective = build_objective(cfg.diffusion, self.visited)
        self.timestep_sampler = build_timestep_sampler(cfg.diffusion, visited=self.visited,
                                                       masks=self.train_data.masks, seed=cfg.train.seed)
        # aligned training validates the way it will be sampled: the run's own sampler and steps
        self.aligned = cfg.diffusion.timestep_sampling == "aligned"
        self.val_sampler = build_sampler(cfg, None if self.aligned else cfg.train.val_sampler, max_batch=0)
        self.val_steps = cfg.sample.steps if self.aligned else cfg.train.val_steps
        self.augment = Augment(cfg.data.augment) if cfg.data.augment else None
        self.lr_schedule = LRSchedule(cfg.train.schedule, cfg.train.warmup, cfg.train.final_lr_ratio)
        self.validate_at_start = model.validate_at_start
        self.curriculum = build_curriculum(cfg, self.train_data.rows, log=self._print)

        self.step, self.best, self.best_step, self.elapsed = 0, -1.0, -1, float(elapsed)
        self.level, self.level_steps = 0, [0]  # curriculum level, and the step at which each level began
        self.pool = self.curriculum.pool(0) if self.curriculum else torch.arange(len(self.train_data))
        self.perm, self.pos = self._permutation(), 0
        self.log_rows: list[dict] = []
        if resume:
            if self.accelerator.is_main_process:  # temporary files of a write cut short by a kill
                for stray in self.ckpt_dir.glob(".*.tmp*"):
                    stray.unlink(missing_ok=True)
            self._restore(Checkpoint(last))
        else:
            self.out.mkdir(parents=True, exist_ok=True)
        self.start_step = self.step
        cfg.save(self.out / "config.yaml")
        if self.row_fold is not None and self.accelerator.is_main_process:
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(
                [("id", "case", "fold"), *((r["id"], r["case"], k)
                                           for r, k in zip(self.train_data.rows, self.row_fold.tolist()))])
            atomic_write_text(self.out / "folds.csv", text.getvalue())
        self._write_timestep_weights()

    # ---- timesteps --------------------------------------------------------------------------------------
    def _write_timestep_weights(self) -> None:
        if self.accelerator.is_main_process:
            lines = ["t,p"] + [f"{t},{p:.8g}" for t, p in enumerate(self.timestep_sampler.probs.tolist())]
            atomic_write_text(self.out / "timestep_weights.csv", "\n".join(lines) + "\n")

    # ---- data -------------------------------------------------------------------------------------------
    def _print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    def _permutation(self) -> torch.Tensor:
        """A fresh random order of the rows trained on now (all rows, or the curriculum level's pool)."""
        return self.pool[torch.randperm(len(self.pool), generator=self.gen)]

    def _next_batch(self) -> dict:
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        need = self.cfg.train.batch_size * world
        if self.pos + need > len(self.perm):
            self.perm, self.pos = self._permutation(), 0
        index = self.perm[self.pos: self.pos + need][rank::world]
        self.pos += need
        batch = self.train_data.batch(index)
        if self.augment is not None or self.curriculum is not None:
            # A healthy image (data.healthy) rides along as extra channels of its image, so it gets the same flips,
            # rotations and zoom; photometric ops share their parameters (noise is drawn per channel).
            c = batch["image"].shape[1]
            images = torch.cat([batch["image"], batch["healthy"]], 1) if "healthy" in batch else batch["image"]
            pairs = []
            for i, im, m in zip(index.tolist(), images, batch["mask"]):
                augment = self.curriculum.augment_for(i, self.level) if self.curriculum else None
                augment = augment or self.augment
                pairs.append(augment(im, m, self.gen) if augment is not None else (im, m))
            images = torch.stack([p[0] for p in pairs])
            batch = {**batch, "image": images[:, :c], "mask": torch.stack([p[1] for p in pairs])}
            if "healthy" in batch:
                batch["healthy"] = images[:, c:]
        if self.row_fold is not None:
            batch["fold"] = self.row_fold[index]
        return {k: v.to(self.device) for k, v in batch.items()}

    def _set_level(self, level: int) -> None:
        """Enter curriculum ``level``: its learning rate and its pool (a new random order of it)."""
        self.level = level
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.train.lr * self.curriculum.lr_factor(level)
        self.pool = self.curriculum.pool(level)

    def _progress(self) -> float:
        t = self.cfg.train
        return training_progress(self.step, t.steps, self.elapsed, t.max_minutes)

    def _set_lr(self) -> float:
        """The coming step's learning rate: the schedule's factor times the peak (the curriculum level's rate)."""
        level_factor = self.curriculum.lr_factor(self.level) if self.curriculum is not None else 1.0
        peak = self.cfg.train.lr * level_factor
        lr = peak * self.lr_schedule.factor(self.step, self._progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _advance_curriculum(self) -> None:
        level = self.curriculum.level_at(self._progress())
        if level > self.level:
            self.level_steps += [self.step] * (level - self.level)
            self._set_level(level)
            self.perm, self.pos = self._permutation(), 0
            self._print(f"curriculum: step {self.step}: {self.curriculum.describe(level)}")

    # ---- checkpoints ------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "pos": self.pos, "best": self.best, "best_step": self.best_step,
                "elapsed": self.elapsed, "preset": self.cfg.preset, "level": self.level,
                "level_steps": self.level_steps, "warmup_progress": self.lr_schedule.warmup_progress,
                "best_choice": self.best_choice}

    def _all_agree(self, flag: bool) -> bool:
        """True when any process says so: with several processes (DDP) every rank must stop at the same step,
        although each measures its own clock (else the others would wait in the next all-reduce for ever)."""
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, reduction="max").item() > 0)

    def _save(self, name: str) -> None:
        if not self.accelerator.is_main_process:
            return
        rng = {"torch": torch.get_rng_state(), "gen": self.gen.get_state(), "perm": self.perm}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(self.ckpt_dir / f"{name}.safetensors", self.accelerator.unwrap_model(self.model),
                        self.ema.model, self.optimizer, rng, self._state())

    def _restore(self, ckpt: Checkpoint) -> None:
        ckpt.load_module(self.accelerator.unwrap_model(self.model), "model")
        ckpt.load_module(self.ema.model, "ema")
        ckpt.load_optimizer(self.optimizer)
        rng = ckpt.rng()
        torch.set_rng_state(rng["torch"])
        self.gen.set_state(rng["gen"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        self.perm = rng["perm"]
        s = ckpt.state
        self.step, self.pos, self.best, self.best_step, self.elapsed = (
            s["step"], s["pos"], s["best"], s["best_step"], s["elapsed"])
        best_file = self.ckpt_dir / "best.safetensors"
        if best_file.is_file():  # a kill between saving best and last: the state follows the best file on disk
            b = Checkpoint(best_file).state
            self.best, self.best_step = b["best"], b["best_step"]
            self.best_choice = dict(b.get("best_choice") or {})
        if s.get("warmup_progress") is not None:
            self.lr_schedule.warmup_progress = float(s["warmup_progress"])
        if self.curriculum is not None:  # "stage": checkpoints written before curricula had levels
            self._set_level(int(s.get("level", s.get("stage", 0))))
            self.level_steps = list(s.get("level_steps", s.get("stage_steps", [0])))
        log = self.out / "log.csv"
        if log.is_file():
            with log.open(encoding="utf-8") as f:
                self.log_rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]

    def _write_log(self) -> None:
        if not self.accelerator.is_main_process or not self.log_rows:
            return
        keys = list(dict.fromkeys(k for r in self.log_rows for k in r))
        lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in self.log_rows]
        atomic_write_text(self.out / "log.csv", "\n".join(lines) + "\n")

    # ---- validation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, data: SplitData | None = None, chunk: int = 16) -> float:
        """Per-image mean Dice on ``data`` (the validation rows). A design with ``validation_choices`` is
        validated with each, keeps the best (the first on a tie) in both its EMA and its trained copy, and
        returns that one's Dice; ``choice_dice`` holds them all."""
        data = data if data is not None else self.val_data
        if data is None:
            return float("nan")
        model = self.ema.model
        if not model.validation_choices:
            return self._validate(data, chunk)
        self.choice_dice = {}
        for name in model.validation_choices:
            model.choose(name)
            self.choice_dice[name] = self._validate(data, chunk)
        best = _chosen(self.choice_dice)
        model.choose(best)
        self.accelerator.unwrap_model(self.model).choose(best)
        return self.choice_dice[best]

    def _validate(self, data: SplitData, chunk: int) -> float:
        model = self.ema.model.eval()
        gen = torch.Generator().manual_seed(self.cfg.train.seed)
        dices = []
        for start in range(0, len(data), chunk):
            batch = data.batch(torch.arange(start, min(start + chunk, len(data))), self.device)
            probs = self.val_sampler(model, batch["image"], self.cfg.train.val_samples, self.val_steps, gen)
            dices.append(dice_at_threshold(probs.mean(1), batch["mask"]))
        return float(torch.cat(dices).mean())

    # ---- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg.train
        stop = {"signal": None}

        def on_term(signum, frame):  # turn a kill into the same clean stop as Ctrl-C
            stop["signal"] = signum
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
        budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else float("inf")
        clock = CLOCKS[cfg.clock]
        t_start = clock() - self.elapsed
        desc = f"train {self.cfg.preset}" + (f" (stops after {cfg.max_minutes:g} min of {cfg.clock} time)"
                                             if cfg.max_minutes > 0 else "")
        if self.accelerator.is_main_process:
            frozen = (f" ({self.n_params - self.n_trainable:,} frozen)" if self.n_trainable < self.n_params else "")
            print(f"{self.cfg.preset} ({self.cfg.model.name}, {self.cfg.diffusion.mode}): {self.n_params:,} "
                  f"parameters{frozen}, device {self.device}, timesteps {self.cfg.diffusion.timestep_sampling}",
                  flush=True)
            print(f"recipe {self.cfg.recipe}: AdamW, {self.lr_schedule.describe(self.cfg.train.lr)}, weight decay "
                  f"{self.cfg.train.weight_decay:g}, batch {self.cfg.train.batch_size}, gradient clip "
                  f"{self.cfg.train.grad_clip:g}, EMA {self.cfg.train.ema_decay:g}, augment "
                  f"{', '.join(self.cfg.data.augment) or 'none'}", flush=True)
            if self.curriculum is not None:
                c = self.curriculum
                print(f"curriculum {self.cfg.curriculum.name}, by progress = max(step / train.steps, elapsed / "
                      "train.max_minutes):\n" + "\n".join(f"  from {c.start(k):.0%}: {c.describe(k)}"
                                                         for k in range(c.n_levels)), flush=True)
        # noise shaped like the image for objectives that noise the image (DiffSeg's class_eps), else like the mask
        like = self.objective.noise_like
        # with a time budget the bar follows the budget (seconds on train.clock; the step is in the postfix), so
        # its progress and ETA are the run's, not those of train.steps that the budget will cut short
        timed = budget < float("inf")
        bar = tqdm(total=round(budget) if timed else cfg.steps, initial=round(self.elapsed) if timed else self.step,
                   desc=desc, unit="s" if timed else "step", disable=not self.accelerator.is_main_process)
        status, running = "finished", {}
        try:
            if self.step == 0 and self.validate_at_start and self.val_data is not None:
                dice = self._validate_and_save()
                self.log_rows.append({"step": 0, "elapsed_s": f"{self.elapsed:.1f}", "val_dice": f"{dice:.4f}",
                                      **self._choice_columns()})
                self._write_log()
            while self.step < cfg.steps:
                if self.curriculum is not None:
                    self._advance_curriculum()
                lr = self._set_lr()
                self.model.train()
                batch = self._next_batch()
                b = batch["mask"].shape[0]
                t = self.timestep_sampler(b, self.gen).to(self.device)
                noise = torch.randn(batch[like].shape, generator=self.gen).to(self.device)
                with self.accelerator.autocast():
                    loss = self.objective(self.model, batch, t, noise)
                self.accelerator.backward(loss.total)
                if cfg.grad_clip > 0:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.ema.update(self.accelerator.unwrap_model(self.model), self.step)
                self.step += 1
                self.elapsed = clock() - t_start
                running["lr"] = running.get("lr", 0.0) + lr
                for k, v in {"loss": loss.total.detach(), **loss.parts}.items():
                    running[k] = running.get(k, 0.0) + float(v)
                if timed:
                    bar.update(max(0, min(round(budget), round(self.elapsed)) - bar.n))
                    bar.set_postfix_str(f"step {self.step}", refresh=False)
                else:
                    bar.update(1)
                out_of_time = self._all_agree(self.elapsed >= budget)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or out_of_time:
                    n = cfg.log_every if self.step % cfg.log_every == 0 else max(1, self.step % cfg.log_every)
                    lr_mean = running.pop("lr") / n  # the mean rate over the logged steps
                    row = {"step": self.step, **{k: f"{v / n:.5f}" for k, v in running.items()}, "lr": f"{lr_mean:.4g}",
                           "elapsed_s": f"{self.elapsed:.1f}"}
                    if self.curriculum is not None:
                        row["level"] = self.level + 1
                    running = {}
                    if self.step % cfg.val_every == 0 or self.step == cfg.steps or out_of_time:
                        row["val_dice"] = f"{self._validate_and_save():.4f}"
                        row.update(self._choice_columns())
                    self.log_rows.append(row)
                    self._write_log()
                    bar.set_postfix(step=self.step, loss=row["loss"],
                                    **({"best_val_dice": f"{self.best:.3f}"} if self.best >= 0 else {}))
                if out_of_time:
                    status = "time budget reached"
                    break
        except KeyboardInterrupt:
            status = "interrupted"
            self._save("last")
            self._write_log()
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        summary = self._summary(status)
        if status == "interrupted":
            summary["message"] = (f"interrupted at step {self.step}; continue with: lesiondiff train --out {self.out} "
                                  "--resume")
        return summary

    def _choice_columns(self) -> dict[str, str]:
        """log.csv's columns of the last validation's choices: val_dice_<choice> and the one chosen."""
        if not self.choice_dice:
            return {}
        cols = {f"val_dice_{name.replace(' ', '_')}": f"{d:.4f}" for name, d in self.choice_dice.items()}
        return {**cols, "chosen": _chosen(self.choice_dice).replace(" ", "_")}

    def _validate_and_save(self) -> float:
        dice = self.validate()
        improved = self.val_data is None or dice > self.best
        if improved:
            self.best, self.best_step = (dice if self.val_data is not None else -1.0), self.step
            self.best_choice = dict(self.choice_dice)
        if improved:  # best before last: a kill between the two leaves a best that _restore adopts
            self._save("best")
        self._save("last")
        return dice

    def _val_sampling(self) -> str:
        if self.cfg.diffusion.feedforward:
            return "one network evaluation (feed-forward)"
        if self.aligned:
            return f"{self.cfg.sample.sampler} {self.val_steps} steps (the run's own sampler: aligned training)"
        return f"{self.cfg.train.val_sampler} {self.cfg.train.val_steps} steps"

    def _summary(self, status: str) -> dict:
        summary = {
            "status": status, "preset": self.cfg.preset, "step": self.step, "steps": self.cfg.train.steps,
            "started_at_step": self.start_step,
            "elapsed_s": round(self.elapsed, 1), "clock": self.cfg.train.clock, "parameters": self.n_params,
            "trainable_parameters": self.n_trainable,
            "train_images": len(self.train_data), "val_images": len(self.val_data) if self.val_data else 0,
            "best_val_dice": self.best, "best_step": self.best_step, "device": str(self.device),
            "processes": self.accelerator.num_processes,
            **({"aligned_timesteps": self.timestep_sampler.visited.tolist()} if self.aligned else {}),
            **({"cross_fitting": {"folds": self.prior_folds,
                                  "train_images_per_fold": torch.bincount(self.row_fold,
                                                                          minlength=self.prior_folds).tolist(),
                                  "record": "folds.csv"}} if self.row_fold is not None else {}),
            **({"validation_choice": {"chosen": _chosen(self.best_choice),
                                      "val_dice": self.best_choice}} if self.best_choice else {}),
            "recipe": self.cfg.recipe, "lr_schedule": self.lr_schedule.describe(self.cfg.train.lr),
            **({"curriculum": [{**level, "began_at_step": self.level_steps[k] if k < len(self.level_steps) else None}
                               for k, level in enumerate(self.curriculum.schedule())]} if self.curriculum else {}),
            "val_protocol": ("no validation (data.val_max_images 0 or no validation rows): best = last"
                             if self.val_data is None else
                             f"EMA weights, {self._val_sampling()}, "
                             f"{self.cfg.train.val_samples} sample(s), seed {self.cfg.train.seed}, threshold 0.5, "
                             f"per-image mean Dice at {self.cfg.data.size} px on split "
                             f"{self.cfg.data.val_split if self.cfg.data.fold is None else f'fold {self.cfg.data.fold}'}"),
        }
        if self.accelerator.is_main_process:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary
