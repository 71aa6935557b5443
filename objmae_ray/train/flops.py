"""Pre-training speed-up estimate: FLOPs of a supervised ViT step / FLOPs of an ObjMAE step.

Both are counted once, with `torch.utils.flop_counter.FlopCounterMode`, for forward + backward of a
batch of 1 (FLOPs per image do not depend on the batch size):
  - ObjMAE at this alpha: L = target_length(alpha, N) source and L target patches (the aligned
    length; throwout can only make it shorter, so this is a lower bound on the speed-up there);
  - the supervised baseline: the timm ViT of the same preset / patch size / image size on all N
    patches with a 1000-class head (paper Table 4 compares with a standard ViT-S step).
`speedup_estimate` counts on the `meta` device (shapes only: ~2 s for ViT-S/224 instead of ~10 s of
CPU arithmetic). There scaled-dot-product attention decomposes into `bmm`s, so every matmul is counted:
linears, patch projection and attention (4 T^2 D per block forward, backward 2x forward), which equals
`objmae_ray.spec`'s formula with attention. Called on a CPU, `objmae_step_flops` / `supervised_step_flops`
miss the attention (the fused CPU SDPA kernel has no FLOP formula), i.e. the formula without attention.
The ratio ignores memory traffic, optimiser and data loading, so it is an upper bound on the wall-clock
speed-up; Table 4 measured 1.9x-9.2x.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from objmae_ray.config import ModelConfig
from objmae_ray.masking import target_length
from objmae_ray.model import create_objmae, create_vit_classifier


def _train_step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def objmae_step_flops(model_cfg: ModelConfig, alpha: float) -> int:
    """FLOPs of one ObjMAE forward + backward on one image at this alpha."""
    model = create_objmae(model_cfg.preset, img_size=model_cfg.img_size, patch_size=model_cfg.patch_size)
    length = target_length(alpha, model.num_patches)
    imgs = torch.randn(1, 3, model_cfg.img_size, model_cfg.img_size)
    src_idx = torch.arange(length).unsqueeze(0)  # [1, L]
    tgt_idx = (torch.arange(length) + length) % model.num_patches  # [L], may overlap src when 2L > N
    return _train_step_flops(lambda: model(imgs, src_idx, tgt_idx.unsqueeze(0))[0].backward())


def supervised_step_flops(model_cfg: ModelConfig, num_classes: int = 1000) -> int:
    """FLOPs of one supervised ViT forward + backward on one image (all N patches)."""
    model = create_vit_classifier(model_cfg.preset, img_size=model_cfg.img_size, patch_size=model_cfg.patch_size,
                                  num_classes=num_classes)
    imgs = torch.randn(1, 3, model_cfg.img_size, model_cfg.img_size)
    labels = torch.zeros(1, dtype=torch.long)
    return _train_step_flops(lambda: torch.nn.functional.cross_entropy(model(imgs), labels).backward())


def speedup_estimate(model_cfg: ModelConfig, alpha: float) -> float:
    """supervised ViT step FLOPs / ObjMAE step FLOPs (> 1 means ObjMAE pre-training is cheaper).

    ViT-S/16 at 224 px: alpha 1/2 -> 1.7, 1/4 -> 3.5, 1/8 -> 7.2, 1/16 -> 14.0 (paper, wall clock: 1.9, 3.6, 6.4, 9.2).
    """
    with torch.device("meta"):
        return supervised_step_flops(model_cfg) / objmae_step_flops(model_cfg, alpha)
