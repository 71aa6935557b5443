"""The GPUs of common cloud instance types, for the plan: memory, peak and sustained dense TFLOP/s.

Peak dense tensor-core TFLOP/s at the precision training uses (bf16; fp16 on T4 / V100, which have no bf16
units, so bf16 autocast there is emulated and slower than this table says), from the vendors' datasheets,
without the 2:4-sparsity doubling:
  A10G  70      AWS's A10 variant (g5); NVIDIA publishes no A10G sheet: the figure commonly quoted for
                it (e.g. Baseten, "NVIDIA A10 vs A10G for ML model inference"); the A10's own sheet says 125
  L4    121     NVIDIA L4 datasheet: 242 bf16 with sparsity
  A100  312     NVIDIA A100 datasheet (40 and 80 GB)
  H100  989     NVIDIA H100 SXM datasheet: 1,979 bf16 with sparsity
  H200  989     NVIDIA H200 datasheet: the H100's compute, 141 GB HBM3e
  T4    65      NVIDIA T4 datasheet, fp16 mixed precision
  V100  125     NVIDIA V100 SXM2 datasheet, fp16 tensor
Sustained = peak x MFU. MFU 0.2: timm's published ViT-S/16 training run (1,053 img/s on an RTX 3090 with AMP,
about 14.5 dense TFLOP/s of its 71) is ~20% of peak; a ViT-S is too narrow to fill a bigger card better.
When bench/results/ holds a measured CUDA run of bench/gpu_check.sh on the card (its `speedup` step: the
supervised ViT-S step's FLOPs / step time), that measured rate replaces peak x MFU and the plan says so.
Memory: what the card reports (GiB), less nothing: memory.py keeps its own reserve.

A node type's GPU comes from its `node_config.InstanceType` family (`g5.2xlarge` -> g5 -> A10G); a type may
name it or override the memory through custom resources in the cluster YAML: `resources: {"GPU": 1,
"objmae_gpu_A100": 1}` picks the GPU, `"objmae_gpu_memory_gib": 40` its memory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "bench" / "results"
MFU = 0.2


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    peak_tflops: float  # dense tensor-core bf16 (fp16 on T4 / V100)
    sustained_tflops: float  # peak x MFU, or measured
    source: str  # where sustained_tflops comes from


def _gpu(name: str, memory_gib: float, peak: float) -> Gpu:
    return Gpu(name, memory_gib, peak, peak * MFU, f"{peak:g} peak x MFU {MFU:g}")


GPUS = {g.name: g for g in (
    _gpu("A10G", 22.5, 70.0), _gpu("L4", 22.5, 121.0), _gpu("A100-40GB", 39.5, 312.0),
    _gpu("A100-80GB", 79.2, 312.0), _gpu("H100", 79.6, 989.0), _gpu("H200", 139.8, 989.0),
    _gpu("T4", 14.7, 65.0), _gpu("V100", 15.8, 125.0))}
INSTANCE_FAMILIES = {"g5": "A10G", "g6": "L4", "p4d": "A100-40GB", "p4de": "A100-80GB", "p5": "H100",
                     "p5e": "H200", "p5en": "H200", "g4dn": "T4", "p3": "V100"}
# How gpu_check.py's machine.gpu (torch.cuda.get_device_name) names each card.
DEVICE_NAMES = {"A10G": "A10G", "L4": "L4", "A100-40GB": "A100", "A100-80GB": "A100", "H100": "H100",
                "H200": "H200", "T4": "T4", "V100": "V100"}


def node_type_gpu(node_type: dict[str, Any]) -> Gpu | None:
    """The GPU of a cluster YAML node type (its `resources` override, else its instance type), or None."""
    resources = node_type.get("resources") or {}
    if not resources.get("GPU"):
        return None
    named = [key.removeprefix("objmae_gpu_") for key in resources
             if key.startswith("objmae_gpu_") and key != "objmae_gpu_memory_gib"]
    family = str((node_type.get("node_config") or {}).get("InstanceType", "")).split(".")[0]
    name = named[0] if named and named[0] in GPUS else INSTANCE_FAMILIES.get(family)
    if name is None:
        return None
    gpu = measured(GPUS[name])
    if resources.get("objmae_gpu_memory_gib"):
        gpu = replace(gpu, memory_gib=float(resources["objmae_gpu_memory_gib"]))
    return gpu


def measured(gpu: Gpu, results_dir: Path = RESULTS_DIR) -> Gpu:
    """`gpu` with sustained_tflops from the newest measured CUDA gpu_check run on that card, if any."""
    best = None
    for path in sorted(results_dir.glob("gpu_check*.json")):
        try:
            run = json.loads(path.read_text())
            device = run["machine"]["gpu"]
            supervised = run["speedup"]["result"]["supervised"]
            rate = supervised["gflops_fwd_bwd"] / supervised["step_ms"]  # GFLOP per ms = TFLOP/s
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
        if run.get("mode") == "cuda" and DEVICE_NAMES[gpu.name] in str(device) and rate > 0:
            best = (rate, f"measured {rate:,.0f} by {path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
                          f"on {device}")
    if best is None:
        return gpu
    return replace(gpu, sustained_tflops=best[0], source=best[1])


def default_gpu_type(config: dict[str, Any], fitting: list[str]) -> tuple[str, Gpu] | None:
    """(node type, GPU) a trial runs on by default: the first type it fits on that has a known GPU."""
    types = config.get("available_node_types", {})
    for name in fitting:
        gpu = node_type_gpu(types.get(name, {}))
        if gpu is not None:
            return name, gpu
    return None
