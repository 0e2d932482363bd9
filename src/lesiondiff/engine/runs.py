"""The run folder's lifecycle around the Trainer (``engine/train.py``): one training per folder at a time (its
lock), pre-training a design's frozen part first in the same budget, resuming an interrupted run, and skipping or
refusing a folder trained before (``train_in``, for the multi-run experiments)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from ..build import check_size, pretraining_configs
from ..config import Config
from ..errors import LesiondiffError
from ..io_utils import atomic_write_text
from ..models import MODELS
from .checkpoint import run_checkpoint
from .outputs import OutputLock
from .train import Trainer

DONE = ("finished", "time budget reached")  # the statuses of a run that needs no more training


def train_run(cfg: Config, out_dir: str | Path, device: str | None = None, resume: bool = False,
              log=print) -> dict:
    """Train (or resume) a run, pre-training first the part of the design that trains apart and then stays
    frozen, when the design has one (``Denoiser.pretrained_part``; its method registers the part's training config in
    ``pretraining.PRETRAINING``, read through ``build.pretraining_configs``: UniSegDiff's CFENet, the refiner's
    prior and its fold priors).

    The run folder is locked while it trains (``engine/outputs.OutputLock``, as predict's): a second ``train``
    into it gets a one-line error. Each part is trained as its own run in ``out_dir/<name>`` (``pretrained_part``
    first, then any further ones such as ``prior-fold-0``; resumed or skipped like any run), unless
    ``model.options.<name>_checkpoint`` names a trained one for a design with a single part (a run folder: its
    best checkpoint, else its last; or a checkpoint file). Each best checkpoint (last when there is no
    validation) is loaded into the model before the main phase starts, and the main phase's budget
    (``train.max_minutes``) counts the pre-training's time. The summary gains ``pretraining``.
    """
    check_size(cfg)  # before any data or weights load
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # one writer per run folder; the other processes of one launch (DDP ranks) write nothing of their own
    holder = OutputLock(out, "train", log) if int(os.environ.get("RANK", "0")) == 0 else nullcontext()
    with holder:
        return _train_run(cfg, out, device, resume, log)


def _train_run(cfg: Config, out: Path, device: str | None, resume: bool, log) -> dict:
    resume = resume and (out / "checkpoints" / "last.safetensors").is_file()
    name = MODELS.get(cfg.model.name).pretrained_part
    parts = pretraining_configs(cfg)
    pretrained: dict[str, Path] = {}
    elapsed, pre_summary = 0.0, None
    if resume and parts and (out / "summary.json").is_file():
        # read before fit() rewrites it: the pre-training's summary stays with the run
        pre_summary = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("pretraining")
    if parts and not resume:
        given = (cfg.model.options or {}).get(f"{name}_checkpoint")
        if given and len(parts) > 1:
            raise LesiondiffError(f"model.options.{name}_checkpoint: {cfg.model.name} trains {len(parts)} "
                                  f"pre-trained parts here ({', '.join(parts)}); it takes no given checkpoint")
        if given:
            checkpoint = Path(given)
            if checkpoint.is_dir():  # a trained run: its best checkpoint (last when it has none)
                checkpoint = run_checkpoint(checkpoint)
            if not checkpoint.is_file():
                raise LesiondiffError(f"{checkpoint}: model.options.{name}_checkpoint not found (a run folder or "
                                      "a .safetensors checkpoint)")
            pretrained[name] = checkpoint
            pre_summary = {"checkpoint": str(checkpoint), "action": "given"}
        else:
            if not (out / "config.yaml").is_file():  # so that --resume finds the config during pre-training
                out.mkdir(parents=True, exist_ok=True)
                cfg.save(out / "config.yaml")
            summaries = {}
            for part, part_cfg in parts.items():
                summaries[part] = train_in(part_cfg, out / part, device, lambda m, p=part: log(f"{p}: {m}"),
                                           runner=_plain)
                if summaries[part]["status"] == "interrupted":
                    summary = summaries[part] if len(parts) == 1 else {**summaries[part], "parts": summaries}
                    return {**summary, "pretraining": dict(summary)}
                pretrained[part] = run_checkpoint(out / part)
                elapsed += float(summaries[part]["elapsed_s"])
            # one part: its summary, as before; several: the first's, with every part's under "parts"
            pre_summary = summaries[name] if len(parts) == 1 else {**summaries[name], "parts": summaries}
    summary = Trainer(cfg, out, device=device, resume=resume, pretrained=pretrained, elapsed=elapsed).fit()
    if pre_summary is not None:
        summary["pretraining"] = pre_summary
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _plain(cfg: Config, out: Path, device: str | None, resume: bool, log=print) -> dict:
    return Trainer(cfg, out, device=device, resume=resume).fit()


def check_same_config(cfg: Config, train_dir: Path) -> None:
    """Refuse to reuse ``train_dir`` when it was trained with a config other than ``cfg``."""
    saved = Config.load(train_dir / "config.yaml").to_dict()
    wanted = cfg.to_dict()
    if wanted["data"]["channels"] == 0:  # resolved from the images when training starts
        wanted["data"]["channels"] = saved["data"]["channels"]
    for section, values in wanted.items():
        for key, value in values.items() if isinstance(values, dict) else [("", values)]:
            old = saved[section][key] if key else saved[section]
            if old != value:
                name = f"{section}.{key}" if key else section
                raise LesiondiffError(f"{train_dir}: trained with {name}={old!r}, but this experiment asks for "
                                      f"{value!r}; choose another --out or delete {train_dir.parent} to retrain")


def train_in(cfg: Config, train_dir: Path, device: str | None, log: Callable[[str], None] = print,
             runner: Callable[..., dict] | None = None) -> dict:
    """Train, resume or skip the run in ``train_dir``: a run whose summary says it is done is skipped, one with
    a last checkpoint is resumed, both only if trained with ``cfg``. ``runner(cfg, dir, device, resume, log)``
    trains (default ``engine.runs.train_run``). Returns the training summary plus ``action``."""
    summary_path = train_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("status") in DONE:
            check_same_config(cfg, train_dir)
            return {**summary, "action": "skipped (already trained)"}
    resume = (train_dir / "checkpoints" / "last.safetensors").is_file()
    if resume:
        check_same_config(cfg, train_dir)
    t = cfg.train
    log(f"{'resuming' if resume else 'training'} (budget {t.max_minutes:g} min, at most {t.steps} steps)")
    summary = (runner or train_run)(cfg, train_dir, device, resume, log)
    start = summary.get("started_at_step", 0)
    return {**summary, "action": f"resumed from step {start}" if resume else "trained from step 0"}
