"""A trial's metrics for Prometheus, through `ray.util.metrics` (Ray's Metrics view; the Grafana dashboard
cluster/grafana/objmae-sweep.json).

`TrialMetrics(tags, cfg, device)` lives in the rank-0 Train worker (train/loop.py `ray_worker`) and
`record(metrics, epochs)` runs once per epoch report, next to `ray.train.report`: a few gauge sets and one
histogram observation on host floats the report already holds, plus the CUDA allocator's counters (host-side
reads, no device sync). Nothing runs per step.

Ray's metrics agent on each node serves them to Prometheus with the prefix `ray_` (METRIC_PREFIX), e.g.
`ray_objmae_recon_loss`. Every series carries TAG_KEYS:
  study       the sweep's run name (the Tune experiment; also the Optuna study name)
  trial_id    the Tune trial id (the console's `trial <id>` lines)
  phase       pretrain / finetune / linear
  alpha, padding, patch_size, selection   the trial's four ObjMAE knobs (the paper's searched values)
  searched    every searched value of the trial, `alpha=0.25 padding=zero` (space.describe), for other fields
A trial is one series per phase, so the searched-value tags add no series beyond trial_id.

Values are exported as they are: a NaN loss stays NaN (the curve shows the gap; the trial's NaN handling,
NonFiniteLossError, is unchanged). GPU memory is exported only on a CUDA device (none on CPU).
"""
from __future__ import annotations

import math

import torch

METRIC_PREFIX = "ray_"  # what Ray's metrics agent puts before an application metric's name in Prometheus
TAG_KEYS = ("study", "trial_id", "phase", "alpha", "padding", "patch_size", "selection", "searched")

# gauge name -> (report key or None, description)
GAUGES = {
    "objmae_epoch": ("epoch", "epochs finished in the phase (1-based)"),
    "objmae_phase_progress": (None, "share of the phase's epochs finished, 0-1"),
    "objmae_recon_loss": ("recon_loss", "ObjMAE reconstruction loss of the last pre-train epoch"),
    "objmae_train_loss": ("train_loss", "the phase's training loss of the epoch"),
    "objmae_top1": ("top1", "top-1 accuracy (%) on the held-out split (0 during pre-training)"),
    "objmae_lr": ("lr", "learning rate at the end of the epoch (largest parameter group)"),
    "objmae_images_per_s": ("images_per_s", "training images per second of the epoch (all workers)"),
    "objmae_speedup_measured": ("speedup_measured", "supervised ViT step time / ObjMAE step time on this device"),
    "objmae_data_wait_frac": ("data_wait_frac", "share of the epoch's training time spent waiting for input"),
    "objmae_gpu_memory_bytes": (None, "CUDA memory allocated by tensors on rank 0's device (CUDA only)"),
    "objmae_gpu_memory_peak_bytes": (None, "peak CUDA memory allocated on rank 0's device (CUDA only)"),
}
EPOCH_SECONDS = "objmae_epoch_seconds"  # histogram of epoch times
EPOCH_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600]
EPOCHS_TOTAL = "objmae_epochs_total"  # counter of epoch reports


def trial_tags(tags: dict, cfg) -> dict[str, str]:
    """The TAG_KEYS values of a trial (tags: study, trial_id, searched; cfg: its TrialConfig), phase left empty."""
    return {"study": str(tags.get("study", "")), "trial_id": str(tags.get("trial_id", "")), "phase": "",
            "alpha": f"{cfg.masking.alpha:g}", "padding": cfg.masking.padding,
            "patch_size": str(cfg.model.patch_size), "selection": cfg.masking.selection,
            "searched": str(tags.get("searched", ""))}


class TrialMetrics:
    """The rank-0 worker's metrics of one trial (see the module docstring)."""

    def __init__(self, tags: dict, cfg, device: torch.device):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tags = trial_tags(tags, cfg)
        self.cuda = device.type == "cuda"
        self.device = device
        self.gauges = {name: Gauge(name, description=text, tag_keys=TAG_KEYS) for name, (_, text) in GAUGES.items()
                       if self.cuda or "gpu" not in name}
        self.epoch_seconds = Histogram(EPOCH_SECONDS, description="epoch time in seconds (train + eval)",
                                       boundaries=EPOCH_BUCKETS, tag_keys=TAG_KEYS)
        self.epochs = Counter(EPOCHS_TOTAL, description="epoch reports of the trial", tag_keys=TAG_KEYS)

    def values(self, metrics: dict, epochs: int) -> dict[str, float]:
        """Gauge name -> value for one report (metrics: the report's dict; epochs: the phase's epoch count)."""
        values = {name: float(metrics[key]) for name, (key, _) in GAUGES.items()
                  if key and isinstance(metrics.get(key), (int, float))}
        values["objmae_epoch"] = float(metrics["epoch"]) + 1
        values["objmae_phase_progress"] = values["objmae_epoch"] / epochs if epochs else math.nan
        if self.cuda:
            values["objmae_gpu_memory_bytes"] = float(torch.cuda.memory_allocated(self.device))
            values["objmae_gpu_memory_peak_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
        return values

    def record(self, metrics: dict, epochs: int) -> None:
        """Export one epoch report (metrics as reported; epochs: the phase's epoch count)."""
        tags = {**self.tags, "phase": str(metrics.get("phase", ""))}
        for name, value in self.values(metrics, epochs).items():
            self.gauges[name].set(value, tags=tags)
        seconds = metrics.get("epoch_time_s")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            self.epoch_seconds.observe(seconds, tags=tags)
        self.epochs.inc(1, tags=tags)
