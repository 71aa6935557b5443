"""Pre-training speed-up of ObjMAE over a supervised ViT step (the paper's Table 4) on this machine.

One ObjMAE step = masking (`sample_masks`, selection "object" on synthetic random-rectangle object
maps) + forward + backward + optimizer step; one supervised step = timm ViT forward + cross-entropy
+ backward + the same optimizer step (timm `lookahead_adamw`, Table 2), same batch and resolution.
Steps of all configurations are interleaved round by round (order rotated each round) and medians
are reported: wall time, and on a CPU also process CPU time, which other processes sharing the
cores disturb far less (use --threads 1 there). FLOPs of forward + backward come from
`torch.utils.flop_counter.FlopCounterMode`.

    python bench/speedup.py --threads 1                       # CPU: ViT-S, batch 16, 224 px
    python bench/speedup.py --device cuda --bf16 --batch-size 256 --steps 20

Prints one JSON object to stdout. Targets (reported, never asserted; judged on the CPU-time
speed-up on a CPU, on wall time on a GPU): speed-up >= 0.85 x FLOP ratio at every alpha, >= the
paper's 3.6x / 6.4x / 9.2x at alpha 1/4, 1/8, 1/16, and masking < 3% of the step (at batch 64).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils.flop_counter import FlopCounterMode

from objmae_ray.method.masking import sample_masks, target_length
from objmae_ray.method.model import create_objmae, create_vit_classifier

PAPER_SPEEDUP = {0.5: 1.9, 0.25: 3.6, 0.125: 6.4, 0.0625: 9.2}  # Table 4 (ViT-S, batch 256, TITAN RTX)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--preset", default="vit_small")
    parser.add_argument("--alphas", default="0.5,0.25,0.125,0.0625")
    parser.add_argument("--padding", default="zero", help="alignment mode; zero keeps L = round(alpha*N)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (one step of every configuration each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for forward/backward")
    parser.add_argument("--num-classes", type=int, default=100, help="supervised head (ImageNet-100)")
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 gives stable numbers on a shared CPU")
    return parser.parse_args(argv)


def synthetic_object_maps(batch_size: int, img_size: int, patch_size: int, max_objects: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random axis-aligned rectangles as instance masks.

    Returns object_patches [B, K, N] (>= 20% of a patch's pixels) and object_ratio [B, K] (eq. 1).
    """
    b, k = batch_size, max_objects
    side = (torch.rand(b, k, 2, generator=generator) * 0.6 + 0.15) * img_size  # 15%..75% of the image
    start = torch.rand(b, k, 2, generator=generator) * (img_size - side)
    coords = torch.arange(img_size).float() + 0.5
    rows = (coords >= start[..., :1]) & (coords < start[..., :1] + side[..., :1])  # [B, K, H]
    cols = (coords >= start[..., 1:]) & (coords < start[..., 1:] + side[..., 1:])  # [B, K, W]
    masks = (rows[..., :, None] & cols[..., None, :]).float()  # [B, K, H, W]
    cover = F.avg_pool2d(masks.flatten(0, 1).unsqueeze(1), patch_size).reshape(b, k, -1)  # [B, K, N]
    return cover >= 0.2, masks.mean(dim=(-2, -1))


class Timer:
    """Wall-clock seconds with device synchronisation."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()

    timer = Timer(device)
    alphas = [float(a) for a in args.alphas.split(",")]

    objmae = create_objmae(args.preset, img_size=args.img_size, patch_size=args.patch_size).to(device).train()
    vit = create_vit_classifier(args.preset, img_size=args.img_size, patch_size=args.patch_size,
                                num_classes=args.num_classes, global_pool="token").to(device).train()
    opt_kw = dict(opt="lookahead_adamw", lr=1.5e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999))
    objmae_opt, vit_opt = create_optimizer_v2(objmae, **opt_kw), create_optimizer_v2(vit, **opt_kw)

    imgs = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    object_patches, object_ratio = synthetic_object_maps(
        args.batch_size, args.img_size, args.patch_size, args.max_objects, torch.Generator().manual_seed(args.seed))
    object_patches, object_ratio = object_patches.to(device), object_ratio.to(device)
    n = objmae.num_patches

    def masks_for(alpha: float):
        return sample_masks(batch_size=args.batch_size, num_patches=n, alpha=alpha, selection="object",
                            padding=args.padding, object_patches=object_patches, object_ratio=object_ratio,
                            generator=gen, device=device)

    def objmae_forward_backward(alpha: float) -> float:
        """One ObjMAE pre-train step; returns the seconds spent in masking."""
        t0 = timer.now()
        m = masks_for(alpha)
        masking_s = timer.now() - t0
        with autocast():
            loss, _ = objmae(imgs, m.src_idx, m.tgt_idx, m.src_valid, m.tgt_valid)
        loss.backward()
        return masking_s

    def vit_forward_backward() -> float:
        with autocast():
            loss = F.cross_entropy(vit(imgs), labels)
        loss.backward()
        return 0.0

    configs = {"supervised": (vit_forward_backward, vit_opt)}
    configs.update({f"alpha={a:g}": ((lambda a=a: objmae_forward_backward(a)), objmae_opt) for a in alphas})

    def step(name: str) -> tuple[float, float, float]:
        """One step: (wall seconds, process CPU seconds, masking wall seconds)."""
        forward_backward, opt = configs[name]
        t0, c0 = timer.now(), time.process_time()
        masking_s = forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return timer.now() - t0, time.process_time() - c0, masking_s

    # FLOPs of forward + backward (the optimizer's elementwise work is not counted by FlopCounterMode)
    flops = {}
    for name, (forward_backward, opt) in configs.items():
        with FlopCounterMode(display=False) as counter:
            forward_backward()
        opt.zero_grad(set_to_none=True)
        flops[name] = counter.get_total_flops()

    names = list(configs)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    masking = {name: [] for name in names}
    for r in range(args.warmup + args.steps):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate to spread drift over configurations
        for name in order:
            seconds, cpu_seconds, masking_s = step(name)
            if r >= args.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
                masking[name].append(masking_s)

    sup_s = statistics.median(times["supervised"])
    sup_cpu_s = statistics.median(cpu_times["supervised"])
    rows = []
    for alpha in alphas:
        name = f"alpha={alpha:g}"
        step_s, mask_s = statistics.median(times[name]), statistics.median(masking[name])
        flop_ratio = flops["supervised"] / flops[name]
        speedup = sup_s / step_s
        speedup_cpu = sup_cpu_s / statistics.median(cpu_times[name]) if device.type == "cpu" else None
        judged = speedup if speedup_cpu is None else speedup_cpu  # targets: CPU time on a CPU, else wall time
        paper = PAPER_SPEEDUP.get(alpha)
        rows.append(dict(
            alpha=alpha, length=target_length(alpha, n), step_ms=1e3 * step_s, masking_ms=1e3 * mask_s,
            masking_share=mask_s / step_s, speedup=speedup, flop_ratio=flop_ratio,
            speedup_over_flop_ratio=speedup / flop_ratio,
            speedup_cpu_time=speedup_cpu, gflops_fwd_bwd=flops[name] / 1e9, paper_speedup=paper,
            meets_flop_target=judged >= 0.85 * flop_ratio,
            meets_paper=None if paper is None or alpha == 0.5 else judged >= paper,
            masking_below_3pct=mask_s / step_s < 0.03,
        ))
    result = dict(
        benchmark="objmae_speedup",
        machine=dict(device=_device_name(device), platform=platform.platform(), cpus=os.cpu_count(),
                     torch_threads=torch.get_num_threads(), torch=torch.__version__),
        settings=dict(preset=args.preset, batch_size=args.batch_size, img_size=args.img_size,
                      patch_size=args.patch_size, num_patches=n, padding=args.padding, selection="object",
                      bf16=args.bf16, steps=args.steps, warmup=args.warmup, optimizer="lookahead_adamw"),
        supervised=dict(step_ms=1e3 * sup_s, gflops_fwd_bwd=flops["supervised"] / 1e9,
                        step_ms_all=[1e3 * t for t in times["supervised"]],
                        cpu_ms=1e3 * sup_cpu_s if device.type == "cpu" else None),
        alphas=rows,
        meets_targets=dict(
            judged_on="speedup_cpu_time" if device.type == "cpu" else "speedup",
            speedup_ge_085_flop_ratio=all(r["meets_flop_target"] for r in rows),
            speedup_ge_paper=all(r["meets_paper"] for r in rows if r["meets_paper"] is not None),
            masking_below_3pct=all(r["masking_below_3pct"] for r in rows),
        ),
    )
    print(json.dumps(result, indent=2))
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


if __name__ == "__main__":
    main()
