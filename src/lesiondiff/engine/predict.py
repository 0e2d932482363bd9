"""The Predictor: a run directory in, masks, probabilities, uncertainty maps and overlays out.

For each input image it draws S masks in one batch (the condition encoded once), fuses them, computes the
coherence (mean), ambiguity (variance) and entropy maps, and writes, under ``out/``:
    <id>_mask.png       the fused mask at the input's original size (0/255), fused probability >= threshold
    <id>_probs.npz      samples [S,h,w] float16 at the network size, fused/coherence/ambiguity/entropy [h,w],
                        original_size, threshold; the maps are computed from the samples as they are, or with
                        ``sample.maps=masks`` from the samples binarised at the threshold (coherence = the
                        fraction of the S masks marking a pixel, ambiguity = its variance over them)
    <id>_overlay.png    the image with the fused contour (yellow) and the ambiguity map (red), long side <= 1024 px
    <id>_maps.png       coherence (viridis, 0..1), ambiguity (magma, 0..0.25) and entropy (magma, 0..1 bit) side
                        by side, each at the overlay's size, titled, with its colour bar and range below
    predictions.csv     one row per image: id, source image, output files, and how they were made
An output folder holds one run's predictions with one set of settings, written by one predict at a time
(``engine/outputs.py``: a lock file, a settings record, and a list of finished images from which an
interrupted ``predict`` resumes). One predict may be several processes: those of an ``accelerate launch``, or
``--part I/N`` commands; they share the inputs and one folder (``engine/sharding.py``).
The mask is post-processed by the run's lesion / no-lesion rule when the run has one (``postprocess.json``,
written by ``lesiondiff postprocess``; ``postprocess.py``); predict.json records the rule and how many images
it declared lesion-free. The npz keeps the samples and the fused map as sampled.
The fused probability is computed at the network size and resized (bilinear) to the original size before
thresholding. Each image's noise is seeded from the run seed and the image id, so results do not depend on
the order or number of inputs.
"""

from __future__ import annotations

import io as _io
import time
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..build import build_fusion, build_model, build_sampler, visited_timesteps
from ..config import Config
from ..data.io import encode_png, is_image_file, mask_image, read_image, split_name
from ..data.layouts import known_masks
from ..data.manifest import Manifest
from ..data.transforms import preprocess_image, resize_prob
from ..errors import LesiondiffError, ReportedByMain
from ..fusion import IMAGE_FUSERS, fuse
from ..io_utils import OwnedFolder
from ..models import Denoiser
from ..postprocess import FILE as POSTPROCESS_FILE
from ..postprocess import PostProcess
from ..postprocess import load as load_postprocess
from ..render.maps import overlay, uncertainty_panel
from ..uncertainty import ambiguity, coherence, entropy, image_scores
from .average import average_probability, is_average, read_average
from .calibration import calibration_settings
from .calibration import load as load_selective
from .calibration import mark as calibration_mark
from .checkpoint import Checkpoint, run_checkpoint
from .device import make_accelerator, process_rank
from .ensemble import check_members, is_ensemble, member_runs
from .members import Members, Source
from .outputs import PredictionFolder, describe_change, image_outputs, is_own_output
from .sharding import run_launch, run_one, run_part

MAPS_FROM = ("probabilities", "masks")  # sample.maps
# how long the processes of a launch wait for each other at a barrier (the process group's timeout): the
# first to finish its share waits for the last, hours later on an archive split unevenly by a resume
LAUNCH_TIMEOUT = timedelta(days=7)


@dataclass
class Prediction:
    id: str
    probs: np.ndarray  # [S,h,w] float32 in [0,1] at the network size
    fused: np.ndarray  # [h,w]
    original_size: tuple[int, int]
    image: np.ndarray  # the original image, HxWxC in [0,255]
    scored: np.ndarray | None = None  # [h,w]: the probability the scores read, when not ``fused`` (an average)


def load_run(run: str | Path, checkpoint: str = "best", device: str | None = None) -> tuple[Config, Denoiser]:
    """Rebuild the model of a run directory from its config.yaml and load EMA (default) weights."""
    run = Path(run)
    if not run.is_dir():
        raise LesiondiffError(f"{run}: no such run directory")
    cfg = Config.load(run / "config.yaml")
    ckpt = Checkpoint(run_checkpoint(run, checkpoint))
    model = build_model(cfg, cfg.data.channels)
    ckpt.load_module(model, "ema" if ckpt.section("ema") else "model")
    return cfg, model.to(make_accelerator(device, timeout=LAUNCH_TIMEOUT).device).eval()


def check_sampling(run: Path, overrides: list[str]) -> Config:
    """The run's config with ``overrides``, its sampling settings checked (``sample.steps`` within what its sampler
    can take), without loading any weights."""
    if not (run / "config.yaml").is_file():
        raise LesiondiffError(f"{run}: not a run folder (no config.yaml)")
    cfg = Config.load(run / "config.yaml").override(overrides)
    build_sampler(cfg).check_steps(cfg.sample.steps)
    return cfg


def collect_inputs(inputs: list[str], manifest: str | None = None, split: str | None = None,
                   log=print) -> list[tuple[str, str]]:
    """(id, image path) pairs from files, folders (recursively, image suffixes only) or a manifest's rows of
    ``split`` (train, val, test or fold:K, :meth:`Manifest.select`; None: every row).

    In a folder every image file is an input except the known masks of a known layout
    (:func:`~lesiondiff.data.layouts.known_masks`) and predict's own outputs; each skipped file is counted, by
    why, in one line (``log``). An id is the file's stem; ids that repeat get ``__1``, ``__2``, ..."""
    items: list[tuple[str, str]] = []
    if manifest:
        rows = Manifest.read(manifest).select(split)
        if not rows:
            raise LesiondiffError(f"{manifest}: no rows in split {split!r}")
        items += [(r["id"], r["image"]) for r in rows]
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            masks = known_masks(p)
            files, skipped = [], {}
            for f in sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)):
                why = "outputs of lesiondiff predict" if is_own_output(f) else masks.get(f.resolve())
                if why:
                    skipped.setdefault(why, []).append(f.name)
                else:
                    files.append(f)
            if skipped:
                log(f"{p}: {len(files)} images; skipped " + "; ".join(
                    f"{len(names)} {why} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
                    for why, names in skipped.items()))
            if not files:
                raise LesiondiffError(f"{p}: no images found" + (" (only masks and predictions)" if skipped else
                                                                   " (empty folder)"))
            items += [(split_name(f.name)[0], str(f)) for f in files]
        elif p.is_file():
            items.append((split_name(p.name)[0], str(p)))
        else:
            raise LesiondiffError(f"{p}: no such file or folder")
    if not items:
        raise LesiondiffError("no inputs: give image files, folders, or --manifest with --split")
    seen: dict[str, int] = {}
    unique = []
    for id_, path in items:
        n = seen.get(id_, 0)
        seen[id_] = n + 1
        unique.append((id_ if n == 0 else f"{id_}__{n}", path))
    return unique


def checkpoint_source(runs: list[Path], checkpoint: str, folder: Path | None) -> dict:
    """Where the weights came from, for the settings record: the run and its checkpoint file's name, size and
    modification time; for an ensemble, its folder (or None on the fly) and each member's."""
    def one(run: Path) -> dict:
        file = run_checkpoint(run, checkpoint)
        stat = file.stat()
        return {"run": str(run.resolve()), "checkpoint_file": file.name, "checkpoint_bytes": stat.st_size,
                "checkpoint_mtime_ns": stat.st_mtime_ns}

    if len(runs) == 1:
        return one(runs[0])
    return {"run": str(folder.resolve()) if folder is not None else "an ensemble given run by run",
            "members": [one(r) for r in runs]}


class Predictor:
    """Sample, fuse, score and write the predictions of one run, or of an ensemble of runs (``engine/ensemble.py``).

    ``sources``: the runs' networks and samplers (default: ``model`` with the config's sampler); the S members
    of an image are made by ``engine/members.py`` (draws, TTA views, MC dropout, ensemble runs). ``selective``:
    a calibration record (``engine/calibration.py``), whose threshold marks each image accept or review."""

    def __init__(self, cfg: Config, model: Denoiser, postprocess: PostProcess | None = None,
                 postprocess_record: dict | None = None, sources: list[Source] | None = None,
                 selective: dict | None = None) -> None:
        if cfg.diffusion.feedforward:  # one network evaluation per sample, whatever was asked
            cfg = cfg.override(["sample.sampler=oneshot", "sample.steps=1"])
        self.cfg = cfg
        self.model = model
        self.postprocess = postprocess
        self.postprocess_record = postprocess_record or {}
        self.declared_empty = 0  # images the post-processing emptied, in the last ``run``
        self.device = next(model.parameters()).device
        self.sampler = build_sampler(cfg)
        self.sampler.check_steps(cfg.sample.steps)
        self.fusion_options, self.crf_kwargs = build_fusion(cfg)  # checked against the fuser's own signature
        if cfg.sample.maps not in MAPS_FROM:
            raise LesiondiffError(f"sample.maps must be one of {', '.join(MAPS_FROM)}, got {cfg.sample.maps!r}")
        self.members = Members(sources or [Source(model, self.sampler)], cfg.sample.samples, cfg.sample.tta,
                               cfg.sample.mc_dropout)
        self.selective = selective
        self.trained_timesteps: list[int] | None = None  # an aligned run's training timesteps (from_run)
        # an average (engine/average.py): the feed-forward source and its weight w in w p_unet + (1 - w) p_draws
        self.partner: tuple[Source, float] | None = None
        self.sampling_seconds = 0.0  # wall clock inside the sampler (network and sampler arithmetic), all images
        self.scoring_seconds = 0.0  # wall clock computing the per-image scores
        self.total_seconds = 0.0  # wall clock of the whole per-image work: read, sample, fuse, score, write
        self.source: dict = {}  # the run and checkpoint file the weights came from (from_run), for the record
        self.predicted_now = 0  # images the last ``run`` predicted (in all processes of a launch)

    @classmethod
    def from_run(cls, run: str | Path | list, checkpoint: str = "best", device: str | None = None,
                 overrides: list[str] | None = None, postprocess: bool = True, selective: bool = True) -> Predictor:
        """The predictor of a run folder, an ensemble folder (``ensemble.json``) or a list of runs (an ensemble
        on the fly; its settings are the first run's, with S = the number of runs unless overridden).
        ``postprocess``: apply the run's ``postprocess.json`` when it has one; ``selective``: its
        ``selective.json`` gives the accept / review mark (calibrate itself predicts without it). The settings
        are checked (e.g. ``sample.steps`` against the run's timesteps)
        before the weights load."""
        runs = [Path(r) for r in run] if isinstance(run, (list, tuple)) else [Path(run)]
        folder = runs[0] if len(runs) == 1 else None  # where postprocess.json and selective.json are read
        average = read_average(folder) if folder is not None and is_average(folder) else None
        if folder is not None and is_ensemble(folder):
            runs = member_runs(folder)
        elif average is not None:
            runs = [Path(average["diffusion"])]
        elif len(runs) > 1:
            check_members(runs)
        base = (Config.load(folder / "config.yaml") if folder is not None and (folder / "config.yaml").is_file()
                else None)
        extra = [] if len(runs) == 1 or base is not None else [f"sample.samples={len(runs)}"]
        overrides = [*extra, *(overrides or [])]
        check_sampling(folder if base is not None else runs[0], overrides)
        loaded = [load_run(r, checkpoint, device) for r in runs]
        cfg = (base or loaded[0][0]).override(overrides)
        sources = []
        for r, (_, model) in zip(runs, loaded):
            wanted = cfg.diffusion.prediction
            if not cfg.diffusion.feedforward and wanted != model.prediction:
                if not model.predicts_both:
                    raise LesiondiffError(f"{r}: {cfg.model.name} has one {model.prediction} head; it cannot be "
                                          f"sampled through {wanted}")
                model.prediction = wanted  # both heads were trained: sample through the other one
            sources.append(Source(model, build_sampler(cfg)))
        rule, record = None, None
        if folder is not None and postprocess and (folder / POSTPROCESS_FILE).is_file():
            rule, record = load_postprocess(folder / POSTPROCESS_FILE)
        record_of = load_selective(folder) if folder is not None and selective else None
        predictor = cls(cfg, sources[0].model, rule, record, sources, record_of)
        predictor.source = checkpoint_source(runs, checkpoint, folder)
        if average is not None:
            ff_cfg, ff_model = load_run(average["feedforward"], checkpoint, device)
            predictor.partner = (Source(ff_model, build_sampler(ff_cfg)), average["weight"])
            predictor.source = {"run": str(folder.resolve()), "weight": average["weight"],
                                "diffusion": checkpoint_source(runs, checkpoint, None),
                                "feedforward": checkpoint_source([Path(average["feedforward"])], checkpoint, None)}
        trained = base or loaded[0][0]
        if trained.diffusion.timestep_sampling == "aligned":
            predictor.trained_timesteps = visited_timesteps(trained)
        return predictor

    def image_seed(self, id_: str) -> int:
        return (self.cfg.sample.seed * 1_000_003 + zlib.crc32(id_.encode())) % 2**63

    def sample(self, id_: str, image: np.ndarray) -> np.ndarray:
        """One image HxWxC in [0,255] -> the S members' probs [S,h,w] in [0,1] at the network size."""
        s = self.cfg.sample
        x = self.network_input(image)
        seed = self.image_seed(id_)
        start = time.perf_counter()
        probs = self.members(x, s.steps, torch.Generator().manual_seed(seed), seed)
        self.sampling_seconds += time.perf_counter() - start
        return probs

    def network_input(self, image: np.ndarray) -> torch.Tensor:
        """One image HxWxC in [0,255] as the network's input [1,C,size,size] in [-1,1], on its device."""
        d = self.cfg.data
        return preprocess_image(image, d.size, d.channels, d.intensity_window)[None].to(self.device)

    def predict(self, id_: str, path: str) -> Prediction:
        return self.predict_image(id_, read_image(path))

    def predict_image(self, id_: str, image: np.ndarray) -> Prediction:
        """One image HxWxC in [0,255] (as ``read_image`` gives it) -> its Prediction; ``id_`` seeds its noise."""
        probs = self.sample(id_, image)
        f = self.cfg.fusion
        needs_image = f.crf or f.method in IMAGE_FUSERS
        small = resize_prob(np.moveaxis(image, -1, 0), probs.shape[-2:]) if needs_image else None
        fused = fuse(probs, f.method, image=None if small is None else np.moveaxis(small, 0, -1),
                     threshold=self.cfg.sample.threshold, crf=f.crf, crf_kwargs=self.crf_kwargs,
                     **self.fusion_options)
        if self.partner is not None:  # the mask from the average, the scores from the draws
            partner, weight = self.partner
            start = time.perf_counter()
            unet = Members([partner], 1)(self.network_input(image), 1, torch.Generator(), 0)[0]
            self.sampling_seconds += time.perf_counter() - start
            return Prediction(id_, probs, average_probability(unet, fused, weight), image.shape[:2], image, fused)
        return Prediction(id_, probs, fused, image.shape[:2], image)

    def samples_are(self) -> str:
        """What the S samples of an image are (predict.json, the report's rounds)."""
        s = self.cfg.sample.samples
        made = self.members.describe()
        if self.members.distinct() == 1:
            return ("identical copies of one prediction: the network takes no noise input, so there is no sample "
                    "spread (no uncertainty)" if s > 1 else "one prediction")
        draws = self.sampler.samples_note(s) if self.model.takes_noise else ""
        return "; ".join(p for p in (made, draws) if p)

    def notes(self, given: dict[str, object]) -> list[str]:
        """Notices for command-line options that do not apply to this run (``given``: option -> value, None when
        not given); the run goes on with what does apply, as predict.json records."""
        cfg, notes = self.cfg, []
        if cfg.diffusion.feedforward:
            ignored = [f"{k} {v}" for k, v in given.items()
                       if v is not None and k in ("--sampler", "--steps", "--prediction")
                       and str(v) not in ("oneshot", "1", "x0")]
            if ignored:
                notes.append(f"note: a feed-forward run (one network evaluation per image): {', '.join(ignored)} "
                             "do not apply and are ignored")
        if self.members.distinct() == 1 and cfg.sample.samples > 1:
            notes.append(f"note: the {cfg.model.name} network takes no noise input: its {cfg.sample.samples} "
                         "samples are identical copies of one prediction (no uncertainty); --set sample.tta=flips "
                         "or an ensemble gives it members")
        if self.trained_timesteps and visited_timesteps(cfg) != self.trained_timesteps:
            notes.append(f"note: this run was trained only on the timesteps {self.trained_timesteps} its sampler "
                         f"visits with its own settings (aligned training); {cfg.sample.sampler} with "
                         f"{cfg.sample.steps} steps visits {visited_timesteps(cfg)}")
        if cfg.sample.samples == 1 and given.get("--fusion") not in (None, "mean"):
            notes.append(f"note: --fusion {given['--fusion']} with one sample: nothing to fuse")
        return notes

    def selective_mark(self) -> dict | None:
        """The calibration record whose accept / review mark these predictions get: the run's, when it was
        calibrated with these sampling settings (``engine/calibration.py``); None otherwise."""
        if self.selective is None:
            return None
        return self.selective if calibration_settings(self.settings()) == self.selective["settings"] else None

    def postprocess_summary(self) -> dict:
        """What predict.json records of the lesion / no-lesion rule (``postprocess.py``)."""
        if self.postprocess is None:
            return {"description": "none (the run has no postprocess.json, or --no-postprocess)"}
        return {"rule": self.postprocess_record.get("rule"), "description": self.postprocess.describe(),
                "chosen_on": self.postprocess_record.get("chosen_on", ""),
                "declared_empty": self.declared_empty}

    def meta(self, checkpoint: str = "") -> dict:
        """predict.json as far as the run and the settings decide it, the same in every process and part; the
        rest (speed, scores, the accept / review summary, splits) comes from the finished images
        (``sharding.write_tables``)."""
        s = self.cfg.sample
        return {"sampler": s.sampler, "steps": s.steps, "samples": s.samples, "fusion": self.cfg.fusion.method,
                "crf": self.cfg.fusion.crf, "threshold": s.threshold, "maps": s.maps, "seed": s.seed,
                "size": self.cfg.data.size, "checkpoint": checkpoint, "preset": self.cfg.preset,
                "prediction": self.model.prediction,
                "network_calls": self.members.network_calls(s.steps),
                "samples_are": self.samples_are(), "tta": s.tta, "mc_dropout": s.mc_dropout,
                "members": {"distinct": self.members.distinct(), "runs": len(self.members.sources)},
                "speed": None, "postprocess": self.postprocess_summary(), "scores": None, "selective": None,
                "split": None, "splits": None}

    def full_mask(self, pred: Prediction) -> tuple[np.ndarray, np.ndarray, bool]:
        """The image's fused probability at its original size [H,W] float32 (resized bilinearly from the network
        size), its mask [H,W] bool (probability >= threshold, then the run's lesion / no-lesion rule when it has
        one), and whether that rule emptied a non-empty mask."""
        probability = resize_prob(pred.fused, pred.original_size)
        mask = probability >= self.cfg.sample.threshold
        if self.postprocess is None:
            return probability, mask, False
        kept = self.postprocess.apply(mask, probability)
        return probability, kept, bool(mask.any() and not kept.any())

    def maps(self, pred: Prediction) -> dict[str, np.ndarray]:
        """The coherence, ambiguity and entropy maps [h,w] of the S samples at the network size, from the samples
        as they are or, with ``sample.maps=masks``, binarised at the threshold (the module docstring)."""
        probs, thr = pred.probs, self.cfg.sample.threshold
        source = (probs >= thr).astype(np.float32) if self.cfg.sample.maps == "masks" else probs
        return {"coherence": coherence(source), "ambiguity": ambiguity(source), "entropy": entropy(source)}

    def write(self, pred: Prediction, out: PredictionFolder | Path) -> dict:
        """Write one image's files (module docstring) into a prediction folder (or a plain folder, each file
        listed as lesiondiff's); returns their names by kind."""
        put = out.write if isinstance(out, PredictionFolder) else OwnedFolder(out).write_bytes
        thr = self.cfg.sample.threshold
        _, mask, emptied = self.full_mask(pred)
        self.declared_empty += emptied
        names = dict(zip(("mask", "probs", "overlay", "maps"), image_outputs(pred.id)))
        put(names["mask"], encode_png(mask_image(mask)))
        arrays = {
            "samples": pred.probs.astype(np.float16), "fused": pred.fused, **self.maps(pred),
            "original_size": np.array(pred.original_size), "threshold": np.array(thr),
        }
        buffer = _io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        put(names["probs"], buffer.getvalue())
        over = overlay(pred.image, mask, resize_prob(arrays["ambiguity"], pred.original_size))
        put(names["overlay"], encode_png(over))
        put(names["maps"], encode_png(uncertainty_panel(arrays, over.shape[:2])))
        return {"id": pred.id, **names}

    def score(self, pred: Prediction) -> dict:
        """The image's scores (``uncertainty.image_scores``, of the draws when the mask is an average), rounded to
        6 decimals, and its accept / review mark when the run is calibrated for these settings."""
        start = time.perf_counter()
        scored = pred.fused if pred.scored is None else pred.scored
        scores = image_scores(pred.probs, scored, self.cfg.sample.threshold, members=self.members.distinct())
        self.scoring_seconds += time.perf_counter() - start
        record = self.selective_mark()
        review = {"review": calibration_mark(record, scores)} if record is not None else {}
        return {**{k: round(v, 6) for k, v in scores.items()}, **review}

    def settings(self, checkpoint: str = "") -> dict:
        """Everything that decides the output files, flat (``sample.steps``, ...): the weights' source, the
        config and the lesion / no-lesion rule. An output folder holds predictions of one such record."""
        flat = {f"{section}.{key}": value for section, values in self.cfg.to_dict().items()
                if isinstance(values, dict) for key, value in values.items()}
        return {**self.source, "checkpoint": checkpoint, "preset": self.cfg.preset,
                "postprocess": self.postprocess_record.get("rule"), **flat}

    def run(self, items: list[tuple[str, str]], out: str | Path, checkpoint: str = "", overwrite: bool = False,
            log=print, split: str | None = None, verify: bool = False,
            part: tuple[int, int] | None = None) -> list[dict]:
        """Predict ``items`` into ``out`` (see the module docstring and ``engine/outputs.py``): refused when ``out``
        holds predictions made otherwise (``overwrite``: replace them) or files lesiondiff did not write where
        its files would go; added to the predictions made there with the same settings, and resumed (``verify``:
        check finished images' files by sha256, not only by size). ``split``: the manifest split the items are
        (recorded in predict.json; ``evaluate`` scores the last split given by default). Returns the rows of
        every image the folder holds.

        Under ``accelerate launch`` the processes share the items and the folder (``sharding.run_launch``; the
        main process returns the rows, the others an empty list). ``part``: (I, N), predict part I of N of the
        items as one of N separate commands (``sharding.run_part``); the rows once this part merged the parts,
        else an empty list."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.sampling_seconds, self.declared_empty = 0.0, 0
        self.scoring_seconds, self.total_seconds = 0.0, 0.0
        rank, world = process_rank()
        if part is not None:
            if world > 1:  # said once, by the main process
                raise (LesiondiffError if rank == 0 else ReportedByMain)(
                    "--part is for separate commands (a scheduler's array job), one process each; under accelerate "
                    "launch leave it out: the processes share the inputs")
            return run_part(self, items, out, part, checkpoint, overwrite, log, split, verify)
        if world > 1:
            return run_launch(self, items, out, rank, world, checkpoint, overwrite, log, split, verify)
        return run_one(self, items, out, checkpoint, overwrite, log, split, verify)

    def predict_all(self, folder: PredictionFolder, todo: list[tuple[str, str]], progress: bool = True,
                    who: str = "") -> None:
        """Predict, write and mark done each of ``todo`` (id, path) in ``folder``, in order. ``progress``: show a
        progress bar (``who`` names this process in it)."""
        s = self.cfg.sample
        calls = self.members.network_calls(s.steps)
        for id_, path in tqdm(todo, desc=f"predict{who} ({s.sampler}, {calls['passes']} passes, S={s.samples})",
                              unit="img", disable=not progress):
            seconds, emptied, scoring = self.sampling_seconds, self.declared_empty, self.scoring_seconds
            start = time.perf_counter()
            pred = self.predict(id_, path)
            row = {**self.write(pred, folder), **self.score(pred)}
            folder.mark_done({**row, "image": path, "declared_empty": self.declared_empty - emptied,
                              "sampling_s": self.sampling_seconds - seconds,
                              "scores_s": self.scoring_seconds - scoring, "predict_s": time.perf_counter() - start})

    def note_selective(self, log=print) -> None:
        """Say so when the run's calibration does not apply to these settings (no accept / review mark)."""
        if self.selective is not None and self.selective_mark() is None:
            change = describe_change(self.selective["settings"], calibration_settings(self.settings()))
            log(f"note: the run's selective.json was calibrated on predictions {change}; these predictions "
                "get no accept / review mark")

    def add_up(self, rows: list[dict]) -> None:
        """The run's totals (sampler, scores and per-image seconds; images the rule emptied) over ``rows``."""
        self.sampling_seconds = sum(r["sampling_s"] for r in rows)
        self.scoring_seconds = sum(r.get("scores_s", 0.0) for r in rows)
        self.total_seconds = sum(r.get("predict_s", 0.0) for r in rows)
        self.declared_empty = sum(r["declared_empty"] for r in rows)
