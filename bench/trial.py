"""Benchmark: Ray/Train overhead of one trial. Prints JSON.

  flock /tmp/objmae-ray.lock .venv/bin/python bench/trial.py \
      [--epochs 3] [--num-images 256] [--img-size 64] [--preset vit_tiny]

Runs one short trial (vit_tiny at 64 px on the built-in synthetic scenes, 1 CPU worker, pre-train
E epochs + 1 fine-tune epoch) on a private local Ray (started first, timed separately) and measures
  - first_step_s: `run_trial` call -> first optimiser step = worker_group_start_s (Ray Train controller,
    placement group, worker processes, torch.distributed) + loop_setup_s (dataset, model, first batch);
  - overhead_s: trial wall time minus the compute the worker timed (epoch_time_s of every epoch);
  - per_epoch_overhead_s: the worker's time in report + checkpoint per epoch (metric report_time_s);
  - fixed_overhead_s: overhead_s minus the per-epoch part (start-up, data/model build, shutdown).
Extrapolated to a 10-minute trial of `--epoch-s` second epochs:
  share = (fixed + per_epoch * 600 / epoch_s) / 600.
Epochs should last more than ~2 s: Ray Train V2's `report` blocks until the controller's next poll of
the workers (every 2 s) when reports come faster, a cost a real trial (minute-long epochs) never pays.
Targets (reported, not asserted): first step within 15 s; overhead share below 5 % for a 10-minute trial.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ray

from objmae_ray.config import TrialConfig
from objmae_ray.data import ensure_synthetic
from objmae_ray.train.trial import run_trial


def bench_config(root: str, args: argparse.Namespace) -> TrialConfig:
    data = {"kind": "synthetic", "root": root, "num_images": args.num_images, "loader_workers": 0}
    return TrialConfig.model_validate({
        "name": "bench",
        "model": {"preset": args.preset, "img_size": args.img_size, "patch_size": 8},
        "masking": {"alpha": 0.25},
        "pretrain": {"epochs": args.epochs, "warmup_epochs": 1, "batch_size": 16, "lr": 1.5e-4, "data": data},
        "transfer": [{"mode": "finetune", "epochs": 1, "warmup_epochs": 0, "batch_size": 16, "data": data}],
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="pre-train epochs (then 1 fine-tune epoch)")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--preset", default="vit_tiny", help="model preset (vit_tiny: ~3-6 s epochs here)")
    parser.add_argument("--epoch-s", type=float, default=60.0, help="epoch length of the extrapolated 10-min trial")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="objmae-bench-") as tmp:
        root = str(ensure_synthetic(os.path.join(tmp, "data"), num_images=args.num_images, img_size=args.img_size))
        cfg = bench_config(root, args)
        start = time.time()
        ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False,
                 _temp_dir=os.path.join(tmp, "ray"))
        ray_init_s = time.time() - start
        try:
            start = time.time()
            metrics = run_trial(cfg, os.path.join(tmp, "runs"), cfg.name)
            wall = time.time() - start
        finally:
            ray.shutdown()

    reports = args.epochs + 1
    compute = metrics["pretrain_time_s"] + metrics["epoch_time_s"]  # all pre-train epochs + the fine-tune epoch
    overhead = wall - compute
    per_epoch = metrics["report_time_s"] / (reports - 1)  # the final report's own time is not in the metric
    fixed = overhead - per_epoch * reports
    trial_s = 600.0
    share = (fixed + per_epoch * trial_s / args.epoch_s) / trial_s
    print(json.dumps({
        "benchmark": "trial_overhead", "device": "cpu", "cpus": os.cpu_count(), "preset": args.preset,
        "img_size": args.img_size, "num_images": args.num_images, "epochs": reports,
        "ray_init_s": round(ray_init_s, 2),
        "first_step_s": round(metrics["first_step_at"] - start, 2), "first_step_target_s": 15.0,
        "worker_group_start_s": round(metrics["loop_start_at"] - start, 2),  # run_trial -> train loop entered
        "loop_setup_s": round(metrics["first_step_at"] - metrics["loop_start_at"], 2),  # data, model, 1st batch
        "wall_s": round(wall, 2), "compute_s": round(compute, 2), "overhead_s": round(overhead, 2),
        "fixed_overhead_s": round(fixed, 2), "per_epoch_overhead_s": round(per_epoch, 3),
        "overhead_share_this_trial": round(overhead / wall, 3),
        "overhead_share_10min_trial": round(share, 4), "overhead_share_target": 0.05,
        "assumed_epoch_s": args.epoch_s,
    }, indent=2))


if __name__ == "__main__":
    main()
