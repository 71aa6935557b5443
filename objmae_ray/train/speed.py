"""Measured pre-training speed-up (paper Table 4): the ObjMAE step against a supervised ViT step.

`StepTimer` times the compute of training steps (masks + forward + backward + optimiser step; not the
input wait or the augmentation): CUDA events on a GPU (no host sync per step), the wall clock on a CPU.
`baseline_step_seconds` times a few steps of the supervised timm ViT of the same preset, image size and
patch size, at the same per-worker batch, precision (the trial's, train/precision.py) and optimiser,
on the trial's device; the result is cached as JSON per (device, preset, image size, patch size, batch,
precision) under the run's storage (`<storage>/speed_baseline/`, a local path or a pyarrow URI such as
s3://), so a sweep measures it once. speedup_measured = baseline step time / median ObjMAE step time
of the epoch, as the paper compared step times on one mini-batch size.

A baseline that does not fit the device's memory at the trial's batch is timed at half the batch
(repeatedly) and scaled to the full batch per image; the cache records the batch it ran.
"""
from __future__ import annotations

import json
import logging
import re
import statistics
import time

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from objmae_ray.config import ModelConfig
from objmae_ray.errors import ConfigError
from objmae_ray.method.model import create_vit_classifier
from objmae_ray.storage import read_bytes, write_bytes
from objmae_ray.train.precision import Precision, resolve_precision

log = logging.getLogger("objmae_ray.train")
BASELINE_DIR = "speed_baseline"
WARMUP_STEPS, TIMED_STEPS = 2, 5


class StepTimer:
    """Compute time of each step between `start()` and `stop()`; read with `seconds()` (syncs CUDA once)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._begin = None
        self._events: list[tuple] = []
        self._seconds: list[float] = []

    def start(self) -> None:
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            self._begin = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._begin, end))
        else:
            self._seconds.append(time.perf_counter() - self._begin)

    def seconds(self) -> list[float]:
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += [begin.elapsed_time(end) / 1e3 for begin, end in self._events]
            self._events.clear()
        return list(self._seconds)

    def median(self) -> float:
        """Median step time, leaving out the first step when there are others (warm-up, allocation)."""
        times = self.seconds()
        times = times[1:] if len(times) > 1 else times
        return statistics.median(times) if times else float("nan")


def device_label(device: torch.device) -> str:
    """`cuda-NVIDIA-H100-80GB-HBM3` or `cpu-4t` (CPU step times depend on the thread count)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}-{torch.get_num_threads()}t"
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{device.type}-{name}" if device.type == "cuda" else name).strip("-")


def baseline_key(model_cfg: ModelConfig, batch: int, device: torch.device, optimizer: str,
                 precision: str = "auto") -> str:
    precision = resolve_precision(precision, device)
    return (f"{device_label(device)}-{model_cfg.preset}-{model_cfg.img_size}px-p{model_cfg.patch_size}"
            f"-b{batch}-{precision}-{optimizer}")


def measure_baseline(model_cfg: ModelConfig, *, optimizer: str, batch: int, device: torch.device,
                     precision: str = "auto") -> dict:
    """Time WARMUP_STEPS + TIMED_STEPS supervised ViT steps (1000-class head); halve the batch on CUDA OOM."""
    run_batch = batch
    while True:
        try:
            seconds = _time_supervised(model_cfg, optimizer=optimizer, batch=run_batch, device=device,
                                       precision=precision)
            break
        except torch.OutOfMemoryError:
            if run_batch == 1:
                raise
            run_batch = max(1, run_batch // 2)
            torch.cuda.empty_cache()
    step_s = statistics.median(seconds) * batch / run_batch
    return {"step_s": step_s, "batch": batch, "measured_batch": run_batch, "steps_s": seconds,
            "device": device_label(device), "preset": model_cfg.preset, "img_size": model_cfg.img_size,
            "patch_size": model_cfg.patch_size, "optimizer": optimizer,
            "precision": resolve_precision(precision, device), "measured_at": time.time()}


def _time_supervised(model_cfg: ModelConfig, *, optimizer: str, batch: int, device: torch.device,
                     precision: str = "auto") -> list[float]:
    model = create_vit_classifier(model_cfg.preset, img_size=model_cfg.img_size, patch_size=model_cfg.patch_size,
                                  num_classes=1000).to(device).train()
    opt = create_optimizer_v2(model, opt=optimizer, lr=1e-4, weight_decay=0.05)
    generator = torch.Generator(device=device).manual_seed(0)
    imgs = torch.randn(batch, 3, model_cfg.img_size, model_cfg.img_size, device=device, generator=generator)
    labels = torch.randint(0, 1000, (batch,), device=device, generator=generator)
    timer = StepTimer(device)
    amp = Precision(precision, device)  # autocast; an fp16 loss scale costs no step time worth timing here
    try:
        for step in range(WARMUP_STEPS + TIMED_STEPS):
            if step >= WARMUP_STEPS:
                timer.start()
            with amp.autocast():
                logits = model(imgs)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= WARMUP_STEPS:
                timer.stop()
        return timer.seconds()
    finally:
        del model, opt, imgs
        if device.type == "cuda":
            torch.cuda.empty_cache()


def baseline_step_seconds(model_cfg: ModelConfig, *, optimizer: str, batch: int, device: torch.device,
                          cache_dir: str | None, precision: str = "auto") -> float:
    """Seconds of one supervised ViT step at `batch` on `device`, from the cache when measured before."""
    key = baseline_key(model_cfg, batch, device, optimizer, precision)
    uri = f"{cache_dir.rstrip('/')}/{key}.json" if cache_dir else None
    try:
        cached = json.loads(read_bytes(uri) or b"null") if uri else None
    except (ConfigError, ValueError):  # unreadable storage or a half-written file: measure again
        cached = None
    if cached and cached.get("step_s", 0) > 0:
        return float(cached["step_s"])
    measured = measure_baseline(model_cfg, optimizer=optimizer, batch=batch, device=device, precision=precision)
    if uri:
        try:
            write_bytes(uri, json.dumps(measured, indent=1).encode())  # locally a rename: one whole file wins
        except ConfigError as err:  # the number is still right; only the next trial re-measures
            log.warning("cannot cache the speed baseline (%s)", err)
    return float(measured["step_s"])
