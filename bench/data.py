"""Input pipeline: the JPEG path against the packed store, on-device augmentation, agreement, formats.

Measured in one run (prints one JSON object; `--out FILE` also writes it):
  jpeg            images/s of one process, one torch thread, running the JPEG path's `__getitem__`
                  (decode + random crop + instance masks + patch maps) over ../shared/data/coco-mini (when
                  present) and over the synthetic scenes; wall and CPU time.
  packed          the same sets packed (`objmae-data pack`, short side 256); images/s of one thread doing
                  the host side of the packed path (PackedLoader: sampler, one contiguous copy per record into
                  its reused buffer), batches of --batch-size, random order.
  ratio           packed host images/s over the JPEG path's, same dataset, same run.
  augment         DeviceAugment (crop + resample + object maps) on --device for one batch of --batch-size
                  records: ms per batch and images/s; `augment_compiled` the same through torch.compile; with
                  `step` (an ObjMAE step of --preset at alpha 1/16, bf16 on CUDA) their share of that step.
  agreement       the same crop boxes (drawn on the source image by the JPEG path's sampler) through both
                  paths: share of patches whose object labels all agree, object-ratio differences, and the
                  share of images without an eligible object (`fallback_frac`) on each path.
  formats         the docs/DATA.md comparison: random batches from a numpy memmap (our store) against an
                  Arrow IPC file (the columnar format Ray Data and HF datasets memory-map) and a sequential
                  tar read (WebDataset's container), same records.

    python bench/data.py                                   # CPU: 224 px, batch 256
    python bench/data.py --device cuda --bf16              # GPU: augmentation vs a ViT-S alpha 1/16 step
    python bench/data.py --img-size 32 --patch-size 8 --preset micro --batch-size 32 --synthetic-images 64 --quick --step

Targets (reported, not asserted): packed host >= 5,000 images/s per core at 224 px and >= 20x the JPEG
path; on a GPU augmentation < 5% of a ViT-S alpha 1/16 step; >= 99% of patches' object labels agree,
object ratios within 0.01, fallback_frac within 2 points.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from timm.optim import create_optimizer_v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from objmae_ray.config import DataConfig  # noqa: E402
from objmae_ray.data import build_pretrain_dataset  # noqa: E402
from objmae_ray.data.agreement import agreement, same_box_samples  # noqa: E402
from objmae_ray.data.augment import DeviceAugment  # noqa: E402
from objmae_ray.data.loader import PackedLoader, PackedView  # noqa: E402
from objmae_ray.data.pack import Layout, pack_split, source_for  # noqa: E402
from objmae_ray.data.store import open_split  # noqa: E402
from objmae_ray.method.masking import sample_masks  # noqa: E402
from objmae_ray.method.model import create_objmae  # noqa: E402

TARGET_HOST_IPS, TARGET_RATIO, TARGET_AUG_SHARE = 5000, 20, 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco-root", default=str(REPO.parent / "shared" / "data" / "coco-mini"))
    p.add_argument("--coco-split", default="train2017")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--synthetic-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--passes", type=int, default=3, help="timed passes of the JPEG path")
    p.add_argument("--packed-images", type=int, default=4096, help="images gathered per packed timing")
    p.add_argument("--agreement-passes", type=int, default=5, help="random boxes per image in the agreement check")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the ObjMAE step (as trials on GPU)")
    p.add_argument("--preset", default="vit_small")
    p.add_argument("--alpha", type=float, default=0.0625)
    p.add_argument("--quick", action="store_true", help="skip the format comparison")
    p.add_argument("--step", action="store_true", help="time the ObjMAE step on a CPU too (always on CUDA)")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd augmentation (CUDA: default)")
    p.add_argument("--no-compile", action="store_true", help="CUDA: skip the compiled augmentation")
    p.add_argument("--cache", default=None, help="working dir for the synthetic set and stores (default: temp)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def rate(count: int, wall: float, cpu: float) -> dict:
    return {"images_per_s": count / wall, "images_per_s_cpu_time": count / max(cpu, 1e-9)}


def jpeg_rate(dataset, passes: int) -> dict:
    """Images/s of a one-thread __getitem__ loop over the JPEG path (median over passes)."""
    dataset[0]  # warm-up
    wall, cpu = [], []
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(len(dataset)):
            dataset[i]
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"images": len(dataset), **rate(len(dataset), statistics.median(wall), statistics.median(cpu))}


def packed_rate(view: PackedView, batch_size: int, images: int) -> dict:
    """One thread: PackedLoader's host side (sampler, gather into its reused buffer; no augmentation)."""
    batches = max(1, images // batch_size)
    reps = -(-batches * batch_size // max(len(view), 1))
    repeated = PackedView(view.split, np.tile(view.records, reps))  # a set this small sits in the page cache
    loader = PackedLoader(repeated, batch_size, augment=lambda batch: batch["sizes"].shape[0],
                          device=torch.device("cpu"), workers=0)
    loader.sampler.set_epoch(0)
    next(iter(loader))  # warm-up: buffer allocation, CRC checks of every record
    t0, c0 = time.perf_counter(), time.process_time()
    seen = 0
    for n in loader:
        seen += n
        if seen >= batches * batch_size:
            break
    out = {"batch_size": batch_size, "images": seen, **rate(seen, time.perf_counter() - t0, time.process_time() - c0)}
    out["bytes_per_image"] = float(np.mean(view.heights * view.widths * view.split.channels))
    return out


def device_batch(view: PackedView, batch_size: int, device: torch.device) -> dict:
    positions = np.arange(batch_size) % len(view)
    buffer = np.empty(view.batch_bytes(positions), dtype=np.uint8)
    return {k: torch.from_numpy(v).to(device) for k, v in view.gather(positions, buffer).items()}


def time_augment(view: PackedView, args, device: torch.device, compile: bool) -> tuple[dict, dict]:
    """ms per DeviceAugment call on one batch (median of 5 after a warm-up); returns (result, its output)."""
    batch = device_batch(view, args.batch_size, device)
    augment = DeviceAugment(purpose="pretrain", img_size=args.img_size, patch_size=args.patch_size,
                            generator=torch.Generator(device=device).manual_seed(0), channels=view.split.channels,
                            compile=compile)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    out = augment(batch)  # warm-up (compilation)
    sync()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        out = augment(batch)
        sync()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    return {"compiled": compile, "batch_size": args.batch_size, "batch_mb": batch["data"].numel() / 1e6,
            "ms_per_batch": ms, "images_per_s": args.batch_size / ms * 1e3, "first_call_s": first_s,
            "torch_threads": torch.get_num_threads()}, out


def time_step(args, device: torch.device, sample: dict) -> dict:
    """One ObjMAE pre-train step (masks + forward + backward + lookahead AdamW) at args.alpha, median of 5."""
    torch.manual_seed(0)
    model = create_objmae(args.preset, img_size=args.img_size, patch_size=args.patch_size).to(device).train()
    opt = create_optimizer_v2(model, opt="lookahead_adamw", lr=1.5e-4, weight_decay=0.05)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    times = []
    for step in range(6):
        sync()
        t0 = time.perf_counter()
        m = sample_masks(batch_size=args.batch_size, num_patches=model.num_patches, alpha=args.alpha,
                         selection="object", padding="zero", object_patches=sample["object_patches"],
                         object_ratio=sample["object_ratio"], generator=gen, device=device)
        with autocast:
            loss, _ = model(sample["image"], m.src_idx, m.tgt_idx, m.src_valid, m.tgt_valid)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step:
            times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    return {"preset": args.preset, "alpha": args.alpha, "bf16": args.bf16, "batch_size": args.batch_size,
            "ms_per_step": ms, "images_per_s": args.batch_size / ms * 1e3}


def agreement_check(reference, packed, args, passes: int) -> dict:
    """Same boxes on the same source through both paths (objmae_ray/data/agreement.py), against the targets."""
    torch.manual_seed(0)
    result = agreement(same_box_samples(reference, packed, img_size=args.img_size, patch_size=args.patch_size,
                                        passes=passes))
    fallback = result["fallback_frac"]
    result["meets_targets"] = {
        "patch_labels_ge_99pct": result["patch_labels_agree"] >= 0.99,
        "object_ratio_mean_within_0.01": result["object_ratio_abs_diff"]["mean"] <= 0.01,
        "fallback_within_2_points": abs(fallback["jpeg"] - fallback["packed"]) <= 0.02,
    }
    return result


def formats(view: PackedView, batch_size: int, images: int, tmp: Path) -> dict:
    """Random batches from our memmap vs an Arrow IPC file vs a sequential tar read, same records."""
    import pyarrow as pa

    records = [np.array(view.split.record(int(r))) for r in view.records]
    out = {"records": len(records), "batch_size": batch_size}
    batches = max(1, images // batch_size)
    rng = np.random.default_rng(0)
    arrow = tmp / "records.arrow"
    table = pa.table({"data": pa.array([r.tobytes() for r in records], pa.binary()),
                      "height": [r.shape[0] for r in records], "width": [r.shape[1] for r in records]})
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    C = view.split.channels
    buffer = np.empty(batch_size * int(view.heights.max()) * int(view.widths.max()) * C, dtype=np.uint8)

    def arrow_batches():  # the same flat batch as PackedView.gather: records back to back
        source = pa.memory_map(str(arrow), "r")
        mapped = pa.ipc.open_file(source).read_all()
        for _ in range(batches):
            picked = mapped.take(pa.array(rng.integers(0, len(records), batch_size)))
            position = 0
            for blob in picked["data"].chunks[0]:
                body = np.frombuffer(blob.as_buffer(), np.uint8)
                buffer[position:position + body.size] = body
                position += body.size

    def memmap_batches():
        for _ in range(batches):
            view.gather(rng.integers(0, len(view), batch_size), buffer)

    tar_path = tmp / "records.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, r in enumerate(records):
            info = tarfile.TarInfo(f"{i:06d}.bin")
            info.size = r.nbytes
            tar.addfile(info, io.BytesIO(r.tobytes()))

    def tar_batches():
        done, position = 0, 0
        while done < batches * batch_size:  # WebDataset reads shards front to back (shuffle: a sample buffer)
            with tarfile.open(tar_path, "r") as tar:
                for member in tar:
                    if done % batch_size == 0:
                        position = 0
                    body = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                    buffer[position:position + body.size] = body
                    position += body.size
                    done += 1
                    if done >= batches * batch_size:
                        break

    for name, run in (("numpy_memmap_random", memmap_batches), ("arrow_ipc_mmap_random", arrow_batches),
                      ("tar_sequential", tar_batches)):
        run()  # warm: page cache
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        out[name] = rate(batches * batch_size, time.perf_counter() - t0, time.process_time() - c0)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)  # per core
    device = torch.device(args.device)
    result = {"benchmark": "data_pipeline",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                          "loadavg_1m": os.getloadavg()[0]},
              "settings": {k: getattr(args, k) for k in ("img_size", "patch_size", "batch_size", "passes", "preset",
                                                        "alpha", "bf16", "synthetic_images")}}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        tmp = Path(tmp)
        sets = {"synthetic": (DataConfig(kind="synthetic", root=str(tmp / "synthetic"),
                                         num_images=args.synthetic_images), "train")}
        if Path(args.coco_root).is_dir():
            sets["coco"] = (DataConfig(kind="coco", root=args.coco_root, train_split=args.coco_split), args.coco_split)
        else:
            result["coco"] = {"root": args.coco_root, "skipped": "not found"}
        for name, (cfg, split) in sets.items():
            reference = build_pretrain_dataset(cfg, img_size=args.img_size, patch_size=args.patch_size, split="train")
            entry = {"jpeg": jpeg_rate(reference, args.passes)}
            t0 = time.perf_counter()
            pack_split(source_for(cfg, "train", Layout(), img_size=args.img_size), tmp / f"store-{name}",
                       executor="serial", progress=False)
            entry["pack_s"] = time.perf_counter() - t0
            packed = open_split(tmp / f"store-{name}", split)
            view = PackedView(packed, np.flatnonzero((packed.index["ratios"] >= 0.05).any(1)))
            entry["packed"] = packed_rate(view, args.batch_size, args.packed_images)
            entry["ratio"] = entry["packed"]["images_per_s"] / entry["jpeg"]["images_per_s"]
            entry["ratio_cpu_time"] = (entry["packed"]["images_per_s_cpu_time"]
                                       / entry["jpeg"]["images_per_s_cpu_time"])
            entry["agreement"] = agreement_check(reference, packed, args, args.agreement_passes)
            entry["meets_targets"] = {"packed_ge_5000_per_core": entry["packed"]["images_per_s"] >= TARGET_HOST_IPS,
                                      "packed_ge_20x_jpeg": entry["ratio"] >= TARGET_RATIO}
            result[name] = entry
        headline = result["coco"] if "coco" in sets else result["synthetic"]
        view = PackedView(packed, np.arange(len(packed)))
        augment, sample = time_augment(view, args, device, compile=False)
        augment["dataset"] = "coco" if "coco" in sets else "synthetic"
        result["augment"] = augment
        if args.compile or (device.type == "cuda" and not args.no_compile):
            try:
                result["augment_compiled"], _ = time_augment(view, args, device, compile=True)
            except Exception as err:  # noqa: BLE001 -- a compiler failure is a result to report, not a crash
                result["augment_compiled"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        if device.type == "cuda" or args.step:
            step = result["step"] = time_step(args, device, sample)
            for entry in (augment, result.get("augment_compiled", {})):
                if "ms_per_batch" in entry:
                    entry["share_of_step"] = entry["ms_per_batch"] / step["ms_per_step"]
                    entry["meets_target_5pct"] = entry["share_of_step"] < TARGET_AUG_SHARE
        if not args.quick:
            result["formats"] = formats(view, args.batch_size, args.packed_images // 2, tmp)
        compiled = result.get("augment_compiled", {})
        result["headline"] = {"packed_host_images_per_s": headline["packed"]["images_per_s"],
                              "jpeg_images_per_s": headline["jpeg"]["images_per_s"], "ratio": headline["ratio"],
                              "augment_ms_per_batch": augment["ms_per_batch"],
                              "augment_share_of_step": augment.get("share_of_step"),
                              "augment_compiled_ms_per_batch": compiled.get("ms_per_batch"),
                              "augment_compiled_share_of_step": compiled.get("share_of_step")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
