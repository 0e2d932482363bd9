"""Speed benchmark (not a test): training throughput, cost per network evaluation, and batched sampling.

For each size it measures, on the current device:
- training samples/s of the preset's network (one optimizer step on a batch, forward + backward + AdamW), and of
  MONAI's DiffusionModelUNet in its default layout (two residual blocks per level, attention on the two lowest
  levels), with channels chosen from a few candidates so its parameter count is closest to ours;
- ms per image per network evaluation, at batch 1 and inside a batch of S;
- the cost of drawing S samples in one batch (condition encoded once) against S separate one-sample runs.
Each figure is the median of ``repeats`` timed runs after one warm-up run.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from ..build import build_model, build_sampler
from ..diffusion.samplers import auto_max_batch
from ..models import count_parameters
from ..presets import load_preset

MONAI_CANDIDATES = [(32, 64, 64, 64), (32, 64, 96, 96), (32, 64, 128, 128), (64, 64, 128, 128)]


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def monai_reference(n_params: int, image_channels: int) -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    best = None
    for ch in MONAI_CANDIDATES:
        net = DiffusionModelUNet(spatial_dims=2, in_channels=1 + image_channels, out_channels=1, channels=ch,
                                 attention_levels=(False, False, True, True), num_res_blocks=2,
                                 num_head_channels=32, norm_num_groups=32)
        gap = abs(count_parameters(net) - n_params)
        if best is None or gap < best[0]:
            best = (gap, net, ch)
    net = best[1]
    net.bench_channels = best[2]
    return net


def train_rate(forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], params, batch: int,
               size: int, channels: int, device, repeats: int) -> float:
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 1, size, size, device=device)
    img = torch.randn(batch, channels, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)

    def step():
        loss = (forward(x, t, img) - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return batch / _median_time(step, repeats)


def run_speed(sizes=(64, 128), samples: int = 10, batch: int = 8, preset: str = "ensemdiff", repeats: int = 3,
              monai: bool = True, device: str | None = None, json_path: str | None = None,
              sample_steps: int = 10, channels: int = 1) -> list[dict]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = load_preset(preset)
    results = []
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"device {dev} ({where}); preset {preset}; median of {repeats} after a warm-up")
    for size in sizes:
        row = bench_size(cfg, size, channels, samples, batch, sample_steps, monai, dev, repeats)
        row["preset"] = preset
        results.append(row)
        _print_row(row)
    if json_path:
        from pathlib import Path

        from ..io_utils import atomic_write_text

        atomic_write_text(Path(json_path), json.dumps(results, indent=2))
    return results


def bench_size(cfg, size: int, channels: int, samples: int, batch: int, sample_steps: int, monai: bool,
               dev: torch.device, repeats: int) -> dict:
    """All measurements for one input size."""
    model = build_model(cfg, channels).to(dev)
    n = count_parameters(model)
    row = {"size": size, "device": str(dev), "params": n, "batch": batch, "samples": samples}
    model.train()
    row["train_samples_per_s"] = train_rate(lambda x, t, i: _main(model(x, t, i)), model.parameters(), batch,
                                            size, channels, dev, repeats)
    if monai:
        ref = monai_reference(n, channels).to(dev).train()
        row["monai_params"] = count_parameters(ref)
        row["monai_channels"] = list(ref.bench_channels)
        row["monai_train_samples_per_s"] = train_rate(lambda x, t, i: ref(torch.cat([x, i], 1), t),
                                                      ref.parameters(), batch, size, channels, dev, repeats)
        row["train_speedup_vs_monai"] = row["train_samples_per_s"] / row["monai_train_samples_per_s"]
    model.eval()
    img = torch.randn(1, channels, size, size, device=dev)
    with torch.inference_mode():
        cond1 = model.encode(img)
        x1 = torch.randn(1, 1, size, size, device=dev)
        t1 = torch.zeros(1, dtype=torch.long, device=dev)
        row["ms_per_nfe_batch1"] = 1000 * _median_time(lambda: model.denoise(x1, t1, cond1), repeats)
        cond_s = model.repeat_condition(cond1, samples)
        x_s = torch.randn(samples, 1, size, size, device=dev)
        t_s = torch.zeros(samples, dtype=torch.long, device=dev)
        row["ms_per_image_nfe_in_batch"] = 1000 * _median_time(lambda: model.denoise(x_s, t_s, cond_s),
                                                               repeats) / samples
    one_batch = build_sampler(cfg, max_batch=samples)
    chunked = build_sampler(cfg, max_batch=0)  # the default: automatic chunks
    gen = torch.Generator().manual_seed(0)
    batched = _median_time(lambda: one_batch(model, img, samples, sample_steps, gen), repeats)
    auto = _median_time(lambda: chunked(model, img, samples, sample_steps, gen), repeats)
    single = _median_time(lambda: [one_batch(model, img, 1, sample_steps, gen) for _ in range(samples)], repeats)
    row.update({"sample_steps": sample_steps, "batched_s": batched, "auto_s": auto, "singles_s": single,
                "auto_max_batch": auto_max_batch(size, size), "batched_over_singles": batched / single,
                "auto_over_singles": auto / single})
    return row


def _main(out) -> torch.Tensor:
    return out.eps if out.eps is not None else out.x0


def _print_row(r: dict) -> None:
    print(f"\n{r['size']} px, {r['params'] / 1e6:.2f} M params, batch {r['batch']}:")
    print(f"  training: {r['train_samples_per_s']:.1f} samples/s")
    if "monai_train_samples_per_s" in r:
        print(f"  MONAI DiffusionModelUNet {tuple(r['monai_channels'])}, {r['monai_params'] / 1e6:.2f} M params: "
              f"{r['monai_train_samples_per_s']:.1f} samples/s -> ours is {r['train_speedup_vs_monai']:.2f}x")
    print(f"  network evaluation: {r['ms_per_nfe_batch1']:.1f} ms at batch 1, "
          f"{r['ms_per_image_nfe_in_batch']:.1f} ms per image in a batch of {r['samples']}")
    print(f"  S={r['samples']} samples x {r['sample_steps']} steps: batched {r['batched_s']:.2f} s vs "
          f"{r['samples']} single runs {r['singles_s']:.2f} s -> {r['batched_over_singles']:.2f}x; "
          f"default chunks of {r['auto_max_batch']}: {r['auto_s']:.2f} s -> {r['auto_over_singles']:.2f}x")
