"""Benchmark repinv's inversion step against a plain PyTorch loop and the study's loop style.

For each (layer, batch) the four variants are timed in one process, interleaved round by
round so machine drift cancels:
  repinv  - ImageOptimization inside Lightning's Trainer with CSV logging (the real code path)
  repinv_bf16 - the same with precision=bf16 (bf16 copy of the frozen weights, autocast)
  plain   - the same work as a bare loop: the same frozen (packed) network, forward stopping at
            the layer, blur; repinv against it is the framework's overhead
  study   - the study's loop style: weights keep requires_grad, no early stop, original conv
  kernels (GPU) - only the forward to the layer and the input gradient, fp32 and bf16: the
            kernel time a step cannot go below; repinv over it is what the rest of the step costs
It also measures one run inverting many layers at once against separate runs, bf16 against
fp32 (speed per cell of the grid; PSNR after 100 steps), optionally ViT-L/16 at 512x512 (time
and peak memory), the study's run (every depth of 3 images in one shared pass; on a GPU and with
--quick; also compiled with --compile; and the aten operators of one of its steps), and the
ceiling of study/repinv: the study's time over repinv's counted FLOPs at the measured fp32
matmul peak (what repinv would reach if its step were nothing but matmuls at peak). Each cell's
FLOP rate is also given as a fraction of a plain large matmul's in its precision, measured now.
On a CPU it also times two of repinv's CPU choices against torch's default at batch 1 and 12
(`cpu_choices`): the patch embedding as a matmul and SSIM on channels-last tensors.
On a GPU the grid adds batch 64, steps are timed as one window synchronised only at its ends
(torch.cuda.synchronize), and peak memory is torch.cuda.max_memory_allocated.
bf16 is timed by default where it can pay (GPUs, CPUs with native bf16); `--bf16` forces it.
The table shows each variant's best round; a ratio between variants is taken within each round
(they ran side by side) and its median over rounds reported. Prints both; `--out FILE` writes JSON,
rewritten after each part, so a run stopped by a time limit keeps what it measured.

    python scripts/benchmark.py                 # full (minutes on 2 CPU cores)
    python scripts/benchmark.py --quick --out logs/bench.json
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import timm
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.functional.image import structural_similarity_index_measure

from repinv.engine.module import ImageOptimization
from repinv.engine.pipeline import Steps
from repinv.inputs.images import load_images
from repinv.metrics import INPUT_L2, PSNR, SSIM, input_l2, psnr, ssim
from repinv.models import create_model
from repinv.models.packed import cpuinfo, native_bf16
from repinv.models.taps import resolve_layer
from repinv.objectives import LayerInversion, distance
from repinv.priors import GaussianBlur
from repinv.reporting.cost import StepCost
from repinv.study import count_arg

FIELDS = ["variant", "layer", "batch", "precision", "seconds_per_step", "image_steps_per_second", "gflops_per_step",
          "gflops_per_second", "fraction_of_matmul_peak", "peak_memory_mib"]


BF16_SKIPPED = "this CPU has no native bfloat16 (neither AVX512-BF16 nor AMX), so bf16 steps are emulated"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reset_peak() -> None:
    """Start a new peak-memory window. On CPU the window is the process's resident peak, so the
    previous variant's garbage is collected and handed back to the OS first."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(sizes: tuple[int, ...] = (2048, 4096), reps: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of the fastest large `dtype` matmul among `sizes`, measured now on this device (the ceiling a
    step's FLOPs are compared with; fp32 at the process's matmul precision, "highest": no TF32)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device(), dtype=dtype)
        b = torch.randn(n, n, device=device(), dtype=dtype)
        a @ b
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            a @ b
            sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def per_step(step, steps: int) -> float:
    """Seconds per call of `step(s)` for s in 0..steps, the first a warm-up. On CPU the median of the
    calls (a shared machine stalls now and then); on a GPU the calls as one window synchronised only at its ends,
    so the host queues work ahead as in a run and the time is the device's."""
    if device().type == "cuda":
        step(0)
        sync()
        t = time.perf_counter()
        for s in range(1, steps + 1):
            step(s)
        sync()
        return (time.perf_counter() - t) / steps
    times = []
    for s in range(steps + 1):
        t = time.perf_counter()
        step(s)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


class StepTimer(pl.Callback):
    """Wall time of each training step, measured around Lightning's whole batch; on a GPU also the
    steps between the first and the last as one window (`window`), synchronised only at its ends."""

    def __init__(self, steps: int):
        self.steps, self.times, self.window = steps, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx in (1, self.steps - 1) or device().type != "cuda":
            sync()
        self._t = time.perf_counter()
        if batch_idx == 1:
            self._window = self._t
        if batch_idx == self.steps - 1:
            self.window = self._t - self._window

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.steps - 1 or device().type != "cuda":
            sync()
        self.times.append(time.perf_counter() - self._t)


def repinv_step(loaded, images, layers, steps, precision="32-true", log_every=25, compile=False, callbacks=()):
    """Seconds per step of the real module inside a Trainer, logging amortised as in a run.

    Runs steps + 2: the first is warm-up (and compiling); the last is a log step (metrics and
    the logger write), whose extra cost counts 1/log_every per step, as in a normal run that
    logs every `log_every` steps. A step's time is the median over the steps on CPU (as in every
    variant: a shared machine stalls now and then for tens of milliseconds), the window's mean on a GPU.
    Returns (seconds per step, the module).
    """
    module = ImageOptimization(
        model=loaded, objective=LayerInversion(layers), images=images,
        optimizer=partial(torch.optim.SGD, lr=0.05), steps=steps + 2, priors=[GaussianBlur()], log_every=log_every,
        metrics={INPUT_L2: input_l2, PSNR: psnr, SSIM: ssim},
        compile=compile,
    )
    timer = StepTimer(steps + 2)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_steps=steps + 2, logger=pl.loggers.CSVLogger(tmp, name="csv", version=""), callbacks=[timer, *callbacks],
            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
            precision=precision, accelerator="auto", devices=1, log_every_n_steps=1,
        )
        trainer.fit(module, DataLoader(Steps(steps + 2), batch_size=None))
    plain = timer.window / steps if device().type == "cuda" else statistics.median(timer.times[1:-1])
    return plain + max(timer.times[-1] - plain, 0.0) / log_every, module


def plain_step(net, mean, std, tap, target, batch, steps, size):
    """The same work as a bare loop: frozen weights, early stop at the layer, SGD, blur."""
    net = net.to(device())  # Lightning's teardown after a repinv step hands the module back on the CPU
    img = torch.full((batch, 3, *size), 0.7, device=device()).add_(torch.randn(batch, 3, *size, device=device()) / 20)
    img.requires_grad_(True)
    opt = torch.optim.SGD([img], lr=0.05)
    blur = GaussianBlur()

    def step(s):
        loss = 0.15 * distance(tap(net, (img - mean) / std), target, "l1").sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        blur.update(img.data, s, steps + 1)  # per_step makes steps + 1 of them (a warm-up first)

    return per_step(step, steps)


def kernel_step(net, mean, std, tap, target, batch, steps, size, dtype=torch.float32):
    """Only the forward to the layer and the input gradient, nothing else (in `dtype`): the kernel time
    a step cannot go below. A repinv step against it is what the rest of the step costs."""
    net = net.to(device()) if dtype == torch.float32 else copy.deepcopy(net).to(device(), dtype)
    img = torch.rand(batch, 3, *size, device=device(), dtype=dtype, requires_grad=True)
    mean, std, target = mean.to(dtype), std.to(dtype), target.to(dtype)

    def step(s):
        torch.autograd.grad(distance(tap(net, (img - mean) / std), target, "l1").sum(), img)

    return per_step(step, steps)


def study_net(name, kwargs):
    """The model as the study's scripts hold it: weights keep requires_grad, original conv."""
    torch.manual_seed(0)
    net = timm.create_model(name, **kwargs).to(device()).eval()
    return net


def study_step(net, mean, std, index, pix, steps, size):
    """The study's loop style: a full forward to `forward_intermediates` of a model whose weights keep requires_grad."""
    batch = len(pix)
    with torch.no_grad():
        target = net.forward_intermediates((pix - mean) / std, indices=[index], intermediates_only=True)[0]
    img = torch.full((batch, 3, *size), 0.7, device=device()).add_(torch.randn(batch, 3, *size, device=device()) / 20)
    img.requires_grad_(True)
    blur = GaussianBlur()

    def step(s):
        out = net.forward_intermediates((img - mean) / std, indices=[index], intermediates_only=True)[0]
        loss = 0.15 * (out - target).abs().sum()
        loss.backward()
        with torch.no_grad():
            img.sub_(0.05 * img.grad)
            img.grad = None
            net.zero_grad(set_to_none=True)
        blur.update(img.data, s, steps + 1)  # per_step makes steps + 1 of them (a warm-up first)

    return per_step(step, steps)


def step_flops(net, mean, std, tap, target, batch, size) -> float:
    img = torch.rand(batch, 3, *size, device=device(), requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        distance(tap(net, (img - mean) / std), target, "l1").sum().backward()
    return counter.get_total_flops() / 1e9


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny ViT and a few steps (what the tests run)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--steps", type=count_arg("steps", 6), help="timed steps per variant and round")
    p.add_argument("--rounds", type=count_arg("rounds", 3), help="interleaved rounds")
    p.add_argument("--vit-l", action="store_true", help="also invert ViT-L/16 at 512x512, batch 1, and report its memory")
    p.add_argument("--compile", action="store_true", help="also time compile=true (torch.compile) against eager")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="time precision=bf16 (default: on GPUs, CPUs with native bf16 and --quick; emulated bf16 is ~30x slower)")
    return p.parse_args(argv)


@dataclass
class Bench:
    """What every timing of one benchmark run shares: the model, its normalisation, photos and the grid."""

    name: str
    kwargs: dict
    size: int
    layers: list[int]
    batches: list[int]
    steps: int
    loaded: Any = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    photos: list = field(default_factory=list)

    @classmethod
    def create(cls, args) -> Bench:
        gpu = device().type == "cuda"
        if args.quick:
            grid = ("vit_base_patch32_224", dict(img_size=64, patch_size=16, depth=4, embed_dim=64, num_heads=2), 64,
                    [0, 1, 3], [1, 4])
        else:
            grid = ("vit_base_patch32_224", dict(img_size=224), 224, [0, 5, 11], [1, 12, 64] if gpu else [1, 12])
        b = cls(*grid, steps=args.steps or (3 if args.quick else 10 if gpu else 6))
        b.loaded = create_model(b.name, input_size=b.size, kwargs=b.kwargs)
        b.loaded.net.to(device())
        b.mean = torch.tensor(b.loaded.mean, device=device()).view(1, 3, 1, 1)
        b.std = torch.tensor(b.loaded.std, device=device()).view(1, 3, 1, 1)
        b.photos = load_images(["chelsea", "astronaut", "coffee", "rocket"], b.size)
        return b


PRECISION_OF = {"repinv": "fp32", "repinv_bf16": "bf16", "plain": "fp32", "study": "fp32",
                "kernels": "fp32", "kernels_bf16": "bf16"}


def time_grid(b: Bench, variants, rounds: int, peaks: dict[str, float]):
    """Every variant at every (layer, batch), interleaved round by round; per-round seconds, memory and FLOPs."""
    study = study_net(b.name, b.kwargs)
    sums: dict[tuple, list[float]] = {}
    mem: dict[tuple, float | None] = {}
    flops: dict[tuple, float] = {}
    size = (b.size, b.size)
    for r in range(rounds):
        for layer in b.layers:
            tap = resolve_layer(b.loaded.net, layer)
            for batch in b.batches:
                images = [b.photos[i % len(b.photos)] for i in range(batch)]
                pix = torch.stack([im.pixels for im in images]).to(device())
                with torch.no_grad():
                    target = tap(b.loaded.net.to(device()), (pix - b.mean) / b.std)
                if r == 0:
                    flops[(layer, batch)] = step_flops(b.loaded.net, b.mean, b.std, tap, target, batch, size)
                timings = {
                    "repinv": lambda: repinv_step(b.loaded, images, [layer], b.steps)[0],
                    "repinv_bf16": lambda: repinv_step(b.loaded, images, [layer], b.steps, precision="bf16-mixed")[0],
                    "plain": lambda: plain_step(b.loaded.net, b.mean, b.std, tap, target, batch, b.steps, size),
                    "study": lambda: study_step(study, b.mean, b.std, layer, pix, b.steps, size),
                    "kernels": lambda: kernel_step(b.loaded.net, b.mean, b.std, tap, target, batch, b.steps, size),
                    "kernels_bf16": lambda: kernel_step(b.loaded.net, b.mean, b.std, tap, target, batch, b.steps, size,
                                                        torch.bfloat16),
                }
                for variant in variants:
                    reset_peak()
                    sums.setdefault((variant, layer, batch), []).append(timings[variant]())
                    mem[(variant, layer, batch)] = peak_mib()
    rows = []
    for (variant, layer, batch), secs in sums.items():
        sec, gf, precision = min(secs), flops[(layer, batch)], PRECISION_OF[variant]
        rows.append({"variant": variant, "layer": layer, "batch": batch, "precision": precision,
                     "seconds_per_step": sec, "image_steps_per_second": batch / sec, "gflops_per_step": gf,
                     "gflops_per_second": gf / sec, "fraction_of_matmul_peak": gf / sec / peaks[precision],
                     "peak_memory_mib": mem[(variant, layer, batch)]})
    return rows, sums, flops


def grid_ratios(b: Bench, rows, sums, flops, peak: float, bf16: bool, kernels: bool = False) -> dict:
    """Ratios between variants, each taken within a round (they ran side by side) and its median over rounds."""
    def ratio(x, y, layer, batch):
        return statistics.median(p / q for p, q in zip(sums[(x, layer, batch)], sums[(y, layer, batch)]))

    def sec_of(variant, layer, batch):
        return next(r["seconds_per_step"] for r in rows if (r["variant"], r["layer"], r["batch"]) == (variant, layer, batch))

    cells = [(layer, bt) for layer in b.layers for bt in b.batches]
    ratios = {
        "repinv_over_plain_batch1_mid_layer": ratio("repinv", "plain", b.layers[1], 1),
        "study_over_repinv": {f"L{layer}_b{bt}": ratio("study", "repinv", layer, bt) for layer, bt in cells},
        # the ceiling of study_over_repinv: repinv's step as nothing but its counted FLOPs at the fp32 peak
        "study_over_repinv_at_fp32_peak": {f"L{layer}_b{bt}": sec_of("study", layer, bt) / (flops[(layer, bt)] / peak)
                                           for layer, bt in cells},
    }
    if bf16:
        ratios["study_over_repinv_bf16"] = {f"L{layer}_b{bt}": ratio("study", "repinv_bf16", layer, bt) for layer, bt in cells}
        ratios["bf16_speedup"] = {f"L{layer}_b{bt}": ratio("repinv", "repinv_bf16", layer, bt) for layer, bt in cells}
    if kernels:  # what the step costs beyond its forward and input gradient alone (goal on a GPU at batch 64: under 1.5)
        ratios["repinv_over_kernels"] = {f"L{layer}_b{bt}": ratio("repinv", "kernels", layer, bt) for layer, bt in cells}
        if bf16:
            ratios["repinv_bf16_over_kernels_bf16"] = {f"L{layer}_b{bt}": ratio("repinv_bf16", "kernels_bf16", layer, bt)
                                                       for layer, bt in cells}
    return ratios


def shared_pass(b: Bench, bf16: bool, compile: bool) -> dict:
    """The study's run: every depth (the patch embedding and each block) of 3 images in one shared pass; per
    variant its seconds per step, seconds for the study's 1,500 steps and peak memory. With `compile`, also
    compiled in fp32, the lever against per-kernel launch cost on a GPU. It also counts the aten operators of
    one fp32 step: the step's time over that count says whether a GPU step is bound by launches."""
    depths = ["patch_embed", *range(len(b.loaded.net.blocks))]
    variants = {"32-true": {}, **({"bf16-mixed": {"precision": "bf16-mixed"}} if bf16 else {}),
                **({"32-true compiled": {"compile": True}} if compile else {})}
    timed = {}
    for name, kwargs in variants.items():
        reset_peak()
        sec, _ = repinv_step(b.loaded, b.photos[:3], depths, b.steps, **kwargs)
        timed[name] = {"seconds_per_step": sec, "seconds_for_1500_steps": 1500 * sec, "peak_memory_mib": peak_mib()}
    cost = StepCost()
    repinv_step(b.loaded, b.photos[:3], depths, 2, callbacks=[cost])
    return {"depths": len(depths), "images": 3, "variants": timed, **asdict(cost.count)}


def host_step(steps: int = 100) -> dict:
    """What a step costs beyond its network's arithmetic: repinv's step (Lightning, the step loop, blur, jitter,
    logging every 25 steps) on a near-empty ViT (one block of width 8 at 32x32, two depths). On a GPU its time is
    the host's floor per step, which a network's step approaches when it is bound by launches and Python."""
    tiny = create_model("vit_tiny_patch16_224", input_size=32,
                        kwargs=dict(img_size=32, patch_size=16, depth=1, embed_dim=8, num_heads=1))
    tiny.net.to(device())
    image, depths, cost = load_images(["chelsea"], 32), ["patch_embed", 0], StepCost()
    sec, _ = repinv_step(tiny, image, depths, steps)
    repinv_step(tiny, image, depths, 2, callbacks=[cost])  # counted apart: the dispatch modes slow the step they count
    return {"seconds_per_step": sec, "kernel_ops_per_step": cost.count.kernel_ops_per_step}


def cpu_choices(b: Bench, batches: tuple[int, ...] = (1, 12), calls: int = 10, rounds: int = 3) -> dict:
    """Two CPU choices of repinv against torch's default, at each batch of photographs: the patch embedding as a
    matmul over patches (forward plus input gradient, `model.cpu_kernels=packed`) against the same weights in
    nn.Conv2d, and SSIM on channels-last tensors against contiguous ones. Seconds per call: the median call of the
    best of `rounds` interleaved rounds. The two sides give the same values; `max_relative_difference` (to the
    largest value) says how nearly."""
    patch = b.loaded.net.patch_embed.proj
    conv = torch.nn.Conv2d(patch.in_channels, patch.out_channels, patch.kernel_size, patch.stride).to(device())
    conv.load_state_dict(patch.state_dict())
    conv.requires_grad_(False)
    out = {"size": b.size}
    for batch in batches:
        x = torch.stack([b.photos[i % len(b.photos)].pixels for i in range(batch)]).to(device())
        noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
        contiguous_ssim = partial(structural_similarity_index_measure, noisy, x, data_range=1.0, reduction="none")
        pairs = {"patch_embedding_as_matmul": (partial(input_gradient, patch, x), partial(input_gradient, conv, x)),
                 "ssim_channels_last": (partial(ssim, noisy, x), contiguous_ssim)}
        out[f"batch_{batch}"] = {name: compared(*ways, calls, rounds) for name, ways in pairs.items()}
    return out


def input_gradient(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    image = x.clone().requires_grad_(True)
    return torch.autograd.grad(module(image).square().sum(), image)[0]


def compared(repinv_way, torch_way, calls: int, rounds: int) -> dict:
    """Seconds per call of two ways to the same values (best of interleaved rounds), and how nearly they agree."""
    times = [(per_step(lambda s: repinv_way(), calls), per_step(lambda s: torch_way(), calls)) for _ in range(rounds)]
    ours, theirs = min(t[0] for t in times), min(t[1] for t in times)
    ref = torch_way()
    return {"repinv_seconds": ours, "torch_seconds": theirs, "speedup": theirs / ours,
            "max_relative_difference": float((repinv_way() - ref).abs().max() / ref.abs().max())}


def vit_l(bf16: bool) -> dict:
    """ViT-L/16 at 512x512, its last block, batch 1: seconds per step and peak memory per precision."""
    big = create_model("vit_large_patch16_224", input_size=512, kwargs=dict(img_size=512))
    big.net.to(device())
    out = {}
    for precision in ("32-true", *(["bf16-mixed"] if bf16 else [])):
        reset_peak()
        sec, _ = repinv_step(big, load_images(["chelsea"], 512), [len(big.net.blocks) - 1],
                             2 if device().type == "cpu" else 5, precision=precision)
        out[precision] = {"seconds_per_step": sec, "peak_memory_mib": peak_mib()}
    return out


def extras(b: Bench, args, bf16: bool, report: dict, save) -> None:
    """What the grid does not time, into `report`, `save()` after each part so a run cut off keeps what it
    measured: ViT-L/16, compile, all layers in one run against separate runs, the bf16 quality run."""
    ratios, mid = report["ratios"], b.layers[1]
    if args.vit_l:
        report["vit_l16_512"] = vit_l(bf16)
        save()
    if args.compile:
        eager, _ = repinv_step(b.loaded, b.photos[:1], [mid], b.steps)
        start = time.perf_counter()
        compiled, _ = repinv_step(b.loaded, b.photos[:1], [mid], b.steps, compile=True)
        ratios["compile_speedup"] = eager / compiled
        report["compile"] = {"eager_seconds_per_step": eager, "compiled_seconds_per_step": compiled,
                             "wall_seconds_including_compilation": time.perf_counter() - start}
        save()
    all_layers = list(range(len(b.loaded.net.blocks)))
    one_run, _ = repinv_step(b.loaded, b.photos[:1], all_layers, b.steps)
    separate = sum(repinv_step(b.loaded, b.photos[:1], [i], b.steps)[0] for i in all_layers)
    ratios["all_layers_one_run_over_separate_runs"] = one_run / separate
    save()
    if not bf16:
        return
    results = {}  # bf16 against fp32 in one longer run each: final PSNR after the same steps (and that run's speed)
    for precision in ("32-true", "bf16-mixed"):
        sec, module = repinv_step(b.loaded, b.photos[:1], [mid], 20 if args.quick else 100, precision=precision)
        results[precision] = (sec, float(psnr(module.images(gathered=False), module.objective.reference)[0]))
    ratios["bf16_speedup_quality_run"] = results["32-true"][0] / results["bf16-mixed"][0]
    ratios["bf16_psnr_minus_fp32"] = results["bf16-mixed"][1] - results["32-true"][1]
    save()


def print_grid(rows) -> None:
    print(f"{'variant':11} {'layer':>5} {'batch':>5} {'s/step':>8} {'img-steps/s':>11} "
          f"{'GFLOP/s':>8} {'peak%':>6} {'mem MiB':>8}")
    for r in rows:
        print(f"{r['variant']:11} {r['layer']:>5} {r['batch']:>5} {r['seconds_per_step']:8.4f} "
              f"{r['image_steps_per_second']:11.2f} {r['gflops_per_second']:8.1f} "
              f"{100 * r['fraction_of_matmul_peak']:5.1f}% {r['peak_memory_mib'] or 0:8.0f}")


def main(argv=None) -> int:
    """Measure in order of what is wanted most (on a GPU the shared pass, then the grid, then the extras),
    writing `--out` after each part: a run stopped by a time limit keeps what it measured."""
    args = parse(argv)
    b = Bench.create(args)
    rounds = args.rounds or (1 if args.quick or device().type == "cuda" else 3)
    bf16 = args.bf16 if args.bf16 is not None else (args.quick or device().type == "cuda" or native_bf16())
    if not bf16:
        print(f"precision=bf16 not timed: {BF16_SKIPPED} (--bf16 times it anyway)")
    gpu = device().type == "cuda"
    report = {
        "machine": {"device": str(device()), "gpu": torch.cuda.get_device_name() if gpu else None,
                    "cpu": cpuinfo("model name") or platform.processor() or platform.machine(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "cores": os.cpu_count()},
        "model": b.name, "quick": args.quick, "steps": b.steps, "rounds": rounds, "rows": [], "ratios": {},
        **({} if bf16 else {"bf16_skipped": BF16_SKIPPED}),
    }

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))

    report["host_step"] = host_step()
    save()
    if not gpu:
        report["cpu_choices"] = cpu_choices(b)
        save()
    if gpu or args.quick:
        report["shared_pass"] = shared_pass(b, bf16, args.compile)
        save()
    variants = ["repinv", *(["repinv_bf16"] if bf16 else []), "plain", "study"]
    if gpu:
        variants += ["kernels", *(["kernels_bf16"] if bf16 else [])]
    sizes = (1024,) if args.quick else (4096, 8192) if gpu else (2048, 4096)
    peaks = {"fp32": matmul_peak(sizes)}
    if bf16:
        peaks["bf16"] = matmul_peak(sizes, dtype=torch.bfloat16) if gpu else peaks["fp32"]
    report["matmul_peak_gflops"], report["matmul_peak_gflops_by_precision"] = peaks["fp32"], peaks
    rows, sums, flops = time_grid(b, variants, rounds, peaks)
    report["rows"], report["ratios"] = rows, grid_ratios(b, rows, sums, flops, peaks["fp32"], bf16, kernels=gpu)
    save()
    print_grid(rows)
    extras(b, args, bf16, report, save)
    print(json.dumps({k: v for k, v in report.items() if k not in ("machine", "rows")}, indent=2))
    if args.out:
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
