"""Data-loader throughput per worker process vs. the ObjMAE pre-train step rate (how many loader
workers one accelerator needs).

Loader: single-process `__getitem__` loop with one torch thread (as inside a DataLoader worker) over
the COCO path (JPEG decode + random crop + instance masks + patch maps) on ../shared/data/coco-mini
and over the synthetic set, at 224 px. Reported as images/s of wall time and of process CPU time
(the latter suffers less from other processes sharing the cores). Step: one `create_objmae(preset)`
pre-train step at alpha (masking + forward + backward + lookahead AdamW) on a batch of real
synthetic samples, timed in the same run.

    python bench/data.py                      # CPU: loader + ViT-S step, batch 16
    python bench/data.py --device cuda --batch-size 128

Prints one JSON object. Target (reported, not asserted): >= 150 images/s per worker on COCO at 224 px.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from torch.utils.data import default_collate

from objmae_ray.config import DataConfig
from objmae_ray.data import build_pretrain_dataset
from objmae_ray.method.masking import sample_masks
from objmae_ray.method.model import create_objmae

REPO = Path(__file__).resolve().parents[1]
TARGET_COCO_IPS = 150


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco-root", default=str(REPO.parent / "shared" / "data" / "coco-mini"))
    p.add_argument("--coco-split", default="train2017")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--synthetic-images", type=int, default=200)
    p.add_argument("--passes", type=int, default=3, help="timed passes over each dataset (random crops)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="vit_small")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cache", default=None, help="synthetic cache dir (default: a temp dir)")
    return p.parse_args(argv)


def loader_rate(dataset, passes: int) -> dict:
    """Images/s of a single-thread __getitem__ loop (median over passes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]  # warm-up (imports, caches)
        wall, cpu = [], []
        for _ in range(passes):
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(len(dataset)):
                dataset[i]
            wall.append(len(dataset) / (time.perf_counter() - t0))
            cpu.append(len(dataset) / (time.process_time() - c0))
    finally:
        torch.set_num_threads(threads)
    return {"images": len(dataset), "images_per_s": statistics.median(wall), "images_per_s_cpu_time": statistics.median(cpu),
            "ms_per_image": 1e3 / statistics.median(wall), "skipped": dataset.skipped}


def step_rate(args, dataset) -> dict:
    """Images/s of ObjMAE pre-train steps (median step) on a batch of real samples."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    batch = default_collate([dataset[i % len(dataset)] for i in range(args.batch_size)])
    model = create_objmae(args.preset, img_size=args.img_size, patch_size=args.patch_size).to(device).train()
    opt = create_optimizer_v2(model, opt="lookahead_adamw", lr=1.5e-4, weight_decay=0.05)
    imgs = batch["image"].to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for s in range(args.steps + 1):
        sync()
        t0 = time.perf_counter()
        m = sample_masks(batch_size=args.batch_size, num_patches=model.num_patches, alpha=args.alpha,
                         selection="object", padding="zero", object_patches=batch["object_patches"].to(device),
                         object_ratio=batch["object_ratio"].to(device), generator=gen, device=device)
        loss, _ = model(imgs, m.src_idx, m.tgt_idx, m.src_valid, m.tgt_valid)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if s:  # first step is warm-up
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"preset": args.preset, "device": args.device, "batch_size": args.batch_size, "alpha": args.alpha,
            "step_ms": 1e3 * step_s, "images_per_s": args.batch_size / step_s, "torch_threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = {"benchmark": "data_loader",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "loadavg_1m": os.getloadavg()[0]},
              "settings": {"img_size": args.img_size, "patch_size": args.patch_size, "passes": args.passes}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig(kind="synthetic", root=args.cache or tmp, num_images=args.synthetic_images)
        synthetic = build_pretrain_dataset(cfg, img_size=args.img_size, patch_size=args.patch_size)
        result["synthetic"] = loader_rate(synthetic, args.passes)
        if Path(args.coco_root).is_dir():
            coco_cfg = DataConfig(kind="coco", root=args.coco_root, train_split=args.coco_split)
            coco = build_pretrain_dataset(coco_cfg, img_size=args.img_size, patch_size=args.patch_size)
            result["coco"] = {"root": args.coco_root, "split": args.coco_split, **loader_rate(coco, args.passes)}
            result["coco"]["meets_target_150"] = result["coco"]["images_per_s"] >= TARGET_COCO_IPS
        else:
            result["coco"] = {"root": args.coco_root, "skipped": "not found"}
        step = step_rate(args, synthetic)
    result["pretrain_step"] = step
    for name in ("synthetic", "coco"):
        if "images_per_s" in result[name]:
            result[name]["workers_per_step_rate"] = step["images_per_s"] / result[name]["images_per_s"]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
