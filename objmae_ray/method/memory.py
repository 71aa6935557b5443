"""Peak GPU memory of one training step, estimated without a GPU, and the gradient accumulation that fits it.

peak = SLACK x (state + micro_batch x (activations per image + input image)) + CUDA_RESERVE, where
  state        weights, gradients and optimiser state per trainable parameter: fp32 weight 4 + gradient 4
               + AdamW moments 8 (+ Lookahead's slow copy 4; LARS / SGD: one momentum 4), frozen weights 4,
               and under bf16 autocast the cached bf16 copy of every weight (2);
  activations  what autograd keeps for backward, per image, from objmae_ray/method/activation_memory.json:
               measured once per preset and patch size on the CPU by bench/activation_memory.py (the saved
               tensors of one forward), at fp32 or bf16 autocast and with timm's fused attention kernel
               (F.scaled_dot_product_attention, no T^2 matrix) or the materialised one (T^2 per head per
               block). pretrain: c*N + a*L + b*L^2 at L = target_length(alpha, N) (throwout keeps L slots);
               finetune: c + a*T + b*T^2 at T = 1 + N; a linear probe keeps nothing for its frozen encoder
               (counted as two blocks' worth of fine-tuning activations in flight);
  SLACK        the caching allocator's fragmentation and backward's transient gradients (1.15);
  CUDA_RESERVE the CUDA context and cuBLAS / cuDNN workspaces (1 GiB).
These are estimates: the accuracy against a real GPU has not been measured (bench/RESULTS.md).
`accumulation_steps` picks the fewest micro-batches per optimiser update whose peak fits a GPU's memory; the
update is the same as the full batch's (objmae_ray/train: loss weights per micro-batch, DDP no_sync).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from objmae_ray.config import ModelConfig
from objmae_ray.method.masking import target_length
from objmae_ray.method.model import create_objmae, create_vit_classifier, get_preset

GIB = 1024 ** 3
SLACK = 1.15
CUDA_RESERVE = 1.0 * GIB
TABLE_FILE = Path(__file__).with_name("activation_memory.json")


@lru_cache(maxsize=1)
def activation_table() -> dict[str, list[float]]:
    """{"<preset>/p<patch>/<pretrain|finetune>/<fp32|bf16>/<fused|materialised>": [c, a, b]}."""
    return json.loads(TABLE_FILE.read_text())["table"]


@lru_cache(maxsize=64)
def parameter_count(preset: str, img_size: int, patch_size: int, phase: str) -> int:
    """Parameters of the phase's model (ObjMAE for pretrain, the timm ViT classifier otherwise), built on `meta`."""
    with torch.device("meta"):
        if phase == "pretrain":
            model = create_objmae(preset, img_size=img_size, patch_size=patch_size)
        else:
            model = create_vit_classifier(preset, img_size=img_size, patch_size=patch_size, num_classes=1000,
                                          encoder_state=None)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class StepMemory:
    """One phase's step on one worker: bytes that do not scale with the batch, and bytes per image."""

    fixed: float  # weights, gradients, optimiser state, bf16 weight copies
    per_image: float  # activations kept for backward + the input image

    def peak(self, micro_batch: int) -> float:
        """Estimated peak bytes at `micro_batch` images per forward."""
        return SLACK * (self.fixed + micro_batch * self.per_image) + CUDA_RESERVE


def step_memory(model: ModelConfig, phase: str, *, alpha: float = 1.0, optimizer: str = "lookahead_adamw",
                precision: str = "bf16", attention: str = "fused") -> StepMemory | None:
    """StepMemory of a pretrain / finetune / linear step; None when the table has no measurement for this
    preset and patch size (then nothing is planned). `precision` is the trial's: fp32 reads the fp32 rows,
    auto / bf16 / fp16 (2-byte activations on a GPU) the bf16 rows."""
    precision = "fp32" if precision == "fp32" else "bf16"
    kind = "pretrain" if phase == "pretrain" else "finetune"
    coef = activation_table().get(f"{model.preset}/p{model.patch_size}/{kind}/{precision}/{attention}")
    if coef is None:
        return None
    c, a, b = coef
    n = (model.img_size // model.patch_size) ** 2
    if phase == "pretrain":
        length = target_length(alpha, n)
        activations = c * n + a * length + b * length * length
    else:
        tokens = n + 1
        activations = c + a * tokens + b * tokens * tokens
        if phase == "linear":  # frozen encoder under no grad: only a couple of blocks' tensors live at once
            activations *= 2 / get_preset(model.preset)["depth"]
    params = parameter_count(model.preset, model.img_size, model.patch_size, kind)
    name = optimizer.lower()
    per_param = 4 + 4 + (8 if "adam" in name else 4) + (4 if "lookahead" in name else 0)
    if phase == "linear":  # only the head trains: every encoder weight is frozen
        state = params * 4
    else:
        state = params * per_param
    if precision == "bf16":
        state += params * 2
    return StepMemory(fixed=float(state), per_image=float(activations + 3 * model.img_size ** 2 * 4))


def accumulation_steps(memory: StepMemory, batch: int, capacity_bytes: float) -> int | None:
    """Fewest micro-batches (each ceil(batch / k) images) per update whose peak fits `capacity_bytes`;
    None when even one image per micro-batch does not fit."""
    for steps in range(1, batch + 1):
        if memory.peak(math.ceil(batch / steps)) <= capacity_bytes:
            return steps
    return None


def planned_accumulation(model: ModelConfig, phase: str, *, batch: int, capacity_bytes: float, alpha: float = 1.0,
                         optimizer: str = "lookahead_adamw", precision: str = "bf16") -> tuple[int, str | None]:
    """(micro-batches per update, why) for `batch` images per worker on a device of `capacity_bytes`: 1 and
    None when the estimate fits or is not measured; else the fewest that fit (`batch` when none does) and a
    line saying so."""
    memory = step_memory(model, phase, alpha=alpha, optimizer=optimizer, precision=precision)
    if memory is None or memory.peak(batch) <= capacity_bytes:
        return 1, None
    steps = accumulation_steps(memory, batch, capacity_bytes)
    if steps is None:
        return batch, (f"{phase}: even one image per micro-batch needs an estimated {memory.peak(1) / GIB:.1f} GiB "
                       f"> {capacity_bytes / GIB:.1f} GiB")
    micro = math.ceil(batch / steps)
    return steps, (f"{phase}: gradient accumulation {steps} x {micro} images (estimated peak "
                   f"{memory.peak(batch) / GIB:.1f} GiB at {batch} > {capacity_bytes / GIB:.1f} GiB; "
                   f"{memory.peak(micro) / GIB:.1f} GiB at {micro})")
