"""DiffSeg ("DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference"): the method's own
training and inference pieces, weakly supervised by image-level classes: the class-conditional image diffusion
loss ``class_eps`` and segmentation by the difference of the two classes' noise predictions
(``class_difference``).

Where the method lives:
- the network (a class-conditional image denoiser, ``noise_prediction(x_t, t, cls)``): ``models/diffseg.py``;
- each image's healthy version (its lesion filled from the surrounding skin), built with the training data:
  ``data/healthy.py`` (``data.healthy``), handed to the loss as ``batch["healthy"]`` by ``data/dataset.py``;
- the loss and the sampler: this file;
- the K rounds of DenseCRF on subsets of the outputs (Eq. 12): ``fusion.py`` (``fusion.method=crf_rounds``);
- GED and the coherence / ambiguity maps (Eqs. 3-4): ``metrics.py`` and ``uncertainty.py``;
- the settings: ``presets/diffseg-weak.yaml`` and ``presets/ablations/diffseg-weak.yaml``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu

from ..config import DiffusionConfig
from ..diffusion.objectives import OBJECTIVES, LossOutput, Objective
from ..diffusion.samplers import SAMPLERS, Sampler, auto_max_batch, start_noise
from ..diffusion.schedules import alphas_cumprod
from ..errors import LesiondiffError
from ..filters import gaussian_blur
from ..models.base import Denoiser


@OBJECTIVES.register("class_eps")
class ClassEps(Objective):
    """DiffSeg's class-conditional image diffusion loss ("DiffSeg: A Segmentation Model for Skin Lesions Based
    on Diffusion Difference", Eq. 1), weakly supervised: image-level classes are the only labels.

    Needs batch["healthy"] [B,C,H,W] in [-1,1] (the image with its lesion inpainted away, or the image itself
    when its mask is empty; ``data.healthy``) and batch["lesion"] [B] bool (the row's mask is non-empty), and a
    model with ``noise_prediction(x_t, t, cls)`` (``diffseg``). For each row, with probability ``p_healthy``
    x_0 = batch["healthy"] with class c0, else x_0 = batch["image"] with its own class (c1 where
    batch["lesion"], else c0); then L = mean || eps - f(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, c, t) ||^2.
    The paper writes the norm unsquared; the squared one (Ho et al. 2020) is what "equivalent to maximising
    the variational bound" refers to. batch["mask"] is never read.

    Noise: ``noise_like = "image"`` makes the Trainer draw ``noise`` like the image [B,C,H,W] from its seeded
    generator. Called with mask-shaped noise (another caller), image-shaped noise is drawn from torch's
    global RNG instead. The healthy/original coin is drawn from torch's global RNG (objectives get no
    generator): the Trainer seeds it with train.seed and saves and restores it in checkpoints, so runs
    reproduce and resume exactly.

    Timesteps: the paper's "noise addition count t = 100" cannot be the schedule length, since it samples at
    t = 60..150; we read Eq. 1's expectation over abar_t as the standard t ~ U{0..T-1} with the run's
    schedule (linear betas, T = diffusion.num_train_timesteps = 1000), and inference at t = 60..150 (sampler
    ``class_difference``). ``t_min``/``t_max`` (0: T) restrict training to [t_min, t_max): the drawn t is
    mapped affinely, t' = t_min + floor(t (t_max - t_min) / T), which keeps a uniform draw (near) uniform and
    the Trainer's generator stream unchanged. Options (``diffusion.objective_options``): ``p_healthy`` (0.5),
    ``t_min`` (0), ``t_max`` (0). The sampler's settings are ``sample.options`` (``ClassDifferenceSampler``).
    """

    defaults = {"p_healthy": 0.5, "t_min": 0.0, "t_max": 0.0}
    noise_like = "image"

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__(cfg)
        w, big_t = self.weights, cfg.num_train_timesteps
        self.t_min, self.t_max = int(w["t_min"]), int(w["t_max"]) or big_t
        if w["t_min"] != self.t_min or w["t_max"] != int(w["t_max"]) or not 0 <= self.t_min < self.t_max <= big_t:
            raise LesiondiffError(f"objective class_eps: t_min and t_max must be whole timesteps with "
                                  f"0 <= t_min < t_max <= T = {big_t} (t_max 0: T), got {w['t_min']:g}, {w['t_max']:g}")
        if not 0.0 <= w["p_healthy"] <= 1.0:
            raise LesiondiffError(f"objective class_eps: p_healthy must be in [0, 1], got {w['p_healthy']:g}")

    def training_t(self, t: torch.Tensor) -> torch.Tensor:
        """The drawn t in [0, T) mapped onto [t_min, t_max)."""
        span, big_t = self.t_max - self.t_min, self.cfg.num_train_timesteps
        return t if span == big_t else self.t_min + torch.div(t * span, big_t, rounding_mode="floor")

    def __call__(self, model: Denoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        if "healthy" not in batch or "lesion" not in batch:
            raise LesiondiffError("objective class_eps needs healthy images and lesion labels in the batch: set "
                                  "data.healthy (e.g. data.healthy=biharmonic)")
        if not model.class_conditional:
            raise LesiondiffError(f"objective class_eps needs a class-conditional image model (diffseg), not "
                                  f"{type(model).__name__}")
        image = batch["image"]
        if noise.shape != image.shape:
            noise = torch.randn(image.shape).to(image.device, image.dtype)
        b = image.shape[0]
        healthy_row = (torch.rand(b) < self.weights["p_healthy"]).to(image.device)
        x0 = torch.where(healthy_row.view(-1, 1, 1, 1), batch["healthy"].to(image.dtype), image)
        cls = torch.where(healthy_row, 0, batch["lesion"].to(image.device).long())
        t = self.training_t(t)
        eps = model.noise_prediction(self.noisy(x0, noise, t), t, cls)
        mse = F.mse_loss(eps.float(), noise.float())
        return LossOutput(mse, {"mse": mse.detach(), "frac_c1": cls.float().mean()})


@SAMPLERS.register("class_difference")
class ClassDifferenceSampler(Sampler):
    """DiffSeg's segmentation by diffusion difference ("DiffSeg: A Segmentation Model for Skin Lesions Based on
    Diffusion Difference", Eq. 2 and Sec. 4.1) for class-conditional image models (``models/diffseg.py``).

    For each image x_0 and each of S timesteps t_k = ``t_first + k * t_stride`` (k < S; the defaults give the
    paper's 60, 70, ..., 150 for S = 10, and S picks how many):
    1. x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, with eps [C,H,W] standard normal from ``generator`` (the
       Predictor seeds it from sample.seed and the image id). ``shared_noise`` (default 1): one eps per image
       for all S timesteps, so the outputs differ only in t, as the paper's outputs "at different noise addition
       levels" (its Fig. 4); 0 draws an independent eps per output;
    2. eps_c0 = f(x_t, c0, t) and eps_c1 = f(x_t, c1, t): all 2S rows of an image in one batch;
    3. d = sum over channels of |eps_c0 - eps_c1|, smoothed by a Gaussian of ``sigma`` px (0: none);
    4. Eq. 2's binarisation y = d > delta, with delta per map by Otsu's method (``otsu`` 1, the default;
       skimage's ``threshold_otsu``, foreground strictly above it) or the fixed ``threshold`` (``otsu`` 0; the
       paper gives no value). Its output is a probability:
           p = sigmoid((d - delta) / (temperature * std(d))),
       with std(d) the spread of that map, then pushed just past 0.5 on the side of the binarisation
       (p > 0.5 exactly where d > delta), so ``p >= 0.5`` is exactly y in floating point, and p keeps the order
       of d, which DenseCRF's unary (the paper's "noise difference") needs. A constant map (e.g. identical class
       embeddings) gives delta = d and an empty mask.
    Returns probs [B,S,1,H,W] in [0,1]. ``steps`` is ignored (one network pass per image): ``network_calls``
    is 1 pass of 2S evaluations per image (in chunks of at most ``max_batch`` rows). Settings: the keyword
    arguments, from ``sample.options`` (``lesiondiff predict RUN ... sample.options.otsu=false``).
    """

    def __init__(self, cfg: DiffusionConfig, max_batch: int = 0, t_first: int = 60, t_stride: int = 10,
                 sigma: float = 1.0, otsu: bool = True, threshold: float = 0.1, temperature: float = 1.0,
                 shared_noise: bool = True) -> None:
        super().__init__(cfg, max_batch)
        if t_first < 0 or t_stride < 1:
            raise LesiondiffError(f"class_difference timesteps: t_first must be >= 0 and t_stride >= 1, got "
                                  f"{t_first} and {t_stride}")
        if sigma < 0 or temperature <= 0:
            raise LesiondiffError(f"class_difference needs sigma >= 0 and temperature > 0, got {sigma:g} and "
                                  f"{temperature:g}")
        self.t_first, self.t_stride = int(t_first), int(t_stride)
        self.sigma, self.threshold, self.temperature = float(sigma), float(threshold), float(temperature)
        self.otsu, self.shared_noise = bool(otsu), bool(shared_noise)
        self.abar = alphas_cumprod(cfg)

    def timesteps(self, num_samples: int) -> list[int]:
        """The S timesteps t_k = t_first + k * t_stride, k < S."""
        ts = [self.t_first + k * self.t_stride for k in range(num_samples)]
        if ts and ts[-1] >= self.cfg.num_train_timesteps:
            raise LesiondiffError(f"class_difference: {num_samples} outputs need timesteps up to {ts[-1]}, beyond "
                                  f"the schedule's T = {self.cfg.num_train_timesteps}")
        return ts

    scales_input = False  # its own schedule of timesteps and targets: diffusion.input_scale does not apply

    def max_steps(self) -> None:
        return None  # ``steps`` is ignored: the schedule fixes the calls

    def network_calls(self, steps: int, num_samples: int) -> dict[str, int]:
        return {"passes": 1, "evaluations": 2 * num_samples}

    def samples_note(self, num_samples: int) -> str:
        ts = self.timesteps(num_samples)
        listed = ", ".join(map(str, ts)) if len(ts) <= 3 else f"{ts[0]}, {ts[1]}, ..., {ts[-1]}"
        where = f"t = {listed}" + (" in order" if len(ts) > 1 else "")
        noise = "one shared noise image" if self.shared_noise else "its own noise"
        return f"one class-difference mask per timestep, {where}, each from {noise}"

    @torch.inference_mode()
    def difference(self, model: Denoiser, image: torch.Tensor, num_samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """The smoothed class difference d [B,S,H,W] >= 0 (steps 1-3 of the class docstring)."""
        if not model.class_conditional:
            raise LesiondiffError(f"sampler class_difference needs a class-conditional image model (diffseg); "
                                  f"{type(model).__name__} denoises masks")
        b, c, h, w = image.shape
        dev, s = image.device, num_samples
        ts = torch.tensor(self.timesteps(s), device=dev)
        x0 = model.encode(image).float()
        noise = start_noise((b, 1 if self.shared_noise else s, c, h, w), generator, dev).expand(b, s, c, h, w)
        abar = self.abar.to(dev, torch.float32)[ts].view(1, s, 1, 1, 1)
        x_t = abar.sqrt() * x0[:, None] + (1 - abar).sqrt() * noise  # [B,S,C,H,W]
        # rows per image: the S noisy images under c0, then the same S under c1
        x = torch.cat([x_t, x_t], 1).reshape(b * 2 * s, c, h, w)
        t_rows = ts.repeat(2 * b)
        cls = torch.arange(2, device=dev).repeat_interleave(s).repeat(b)
        chunk = self.max_batch or auto_max_batch(h, w)
        eps = torch.cat([model.noise_prediction(x[i:i + chunk], t_rows[i:i + chunk], cls[i:i + chunk])
                         for i in range(0, x.shape[0], chunk)]).float().reshape(b, 2, s, c, h, w)
        d = (eps[:, 0] - eps[:, 1]).abs().sum(2)
        if self.sigma > 0:
            d = gaussian_blur(d.reshape(b * s, h, w), self.sigma).reshape(b, s, h, w)
        return d

    def thresholds(self, d: torch.Tensor) -> torch.Tensor:
        """delta [B,S,1,1] float64 for maps d [B,S,H,W]: Otsu's per map, or the fixed ``threshold``."""
        if not self.otsu:
            return torch.full((*d.shape[:2], 1, 1), self.threshold, dtype=torch.float64, device=d.device)
        maps = d.double().cpu().numpy()
        delta = np.array([[threshold_otsu(m) for m in row] for row in maps], dtype=np.float64)
        return torch.from_numpy(delta).to(d.device).view(*d.shape[:2], 1, 1)

    def probability(self, d: torch.Tensor) -> torch.Tensor:
        """Maps d [B,S,H,W] -> probs [B,S,H,W] in [0,1] with ``probs >= 0.5`` exactly ``d > delta``."""
        delta = self.thresholds(d)
        spread = d.flatten(2).std(-1).view(*d.shape[:2], 1, 1).clamp_min(torch.finfo(d.dtype).tiny)
        p = torch.sigmoid((d - delta.to(d.dtype)) / (self.temperature * spread))
        half = torch.tensor(0.5, dtype=p.dtype, device=p.device)
        above, below = torch.nextafter(half, torch.ones_like(half)), torch.nextafter(half, torch.zeros_like(half))
        return torch.where(d.double() > delta, p.clamp_min(above), p.clamp_max(below))

    @torch.inference_mode()
    def __call__(self, model: Denoiser, image: torch.Tensor, num_samples: int = 10, steps: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.probability(self.difference(model, image, num_samples, generator)).unsqueeze(2)
