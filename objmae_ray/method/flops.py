"""FLOP model of one pre-training step, and the speed-up estimate derived from it.

`objmae_flops` / `supervised_flops` are the closed-form matmul count of one forward + backward on one
image (patch projection, qkv, projection, MLP, attention 4 T^2 D per block, heads; backward = 2x
forward, except the patch projection whose pixel input needs no gradient): instant, so a trial's
`speedup_est` and `objmae-sweep validate`'s GPU-hours use them without building a model.
  - ObjMAE at alpha: L = target_length(alpha, N) source and L target patches (the aligned length;
    throwout can only make it shorter, so this is a lower bound on the speed-up there);
  - the supervised baseline: the timm ViT of the same preset / patch size / image size on all N
    patches with a 1000-class head (paper Table 4 compares with a standard ViT-S step).
`objmae_step_flops` / `supervised_step_flops` count the real models with torch's FlopCounterMode; they
are only the check the tests hold the formula to (on the `meta` device every matmul incl. attention
is counted and equals the formula; on a CPU the fused SDPA kernel has no FLOP formula, so the count
equals the formula with `attention=False`).
The ratio ignores memory traffic, the optimiser and data loading, so it is an upper bound on the
wall-clock speed-up; Table 4 measured 1.9x-9.2x.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from objmae_ray.config import ModelConfig
from objmae_ray.method.masking import target_length
from objmae_ray.method.model import create_objmae, create_vit_classifier, get_preset


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


def blocks_flops(depth: int, width: int, tokens: int, mlp_ratio: float, attention: bool = True) -> float:
    """Forward matmul FLOPs of `depth` ViT blocks on `tokens` tokens: qkv, proj, MLP (+ attention QK^T, AV)."""
    linear = 2 * tokens * width * width * (4 + 2 * mlp_ratio)
    return depth * (linear + (4 * tokens * tokens * width if attention else 0))


def objmae_flops(preset: str, img_size: int, patch_size: int, alpha: float, attention: bool = True) -> float:
    """FLOPs of one ObjMAE forward + backward on one image: L source patches encoded, L targets decoded.

    Forward: patch projection of L patches, encoder on 1 + L tokens, decoder embed, decoder on
    1 + 2L tokens, prediction of L patches. Backward = 2 x forward (gradients of inputs and weights),
    except the patch projection, whose input (pixels) needs no gradient.
    """
    p = get_preset(preset)
    n = (img_size // patch_size) ** 2
    length = target_length(alpha, n)
    pixels = 3 * patch_size * patch_size
    d, dd = p["embed_dim"], p["decoder_embed_dim"]
    embed = 2 * length * pixels * d
    forward = (embed
               + blocks_flops(p["depth"], d, 1 + length, p["mlp_ratio"], attention)
               + 2 * (1 + length) * d * dd
               + blocks_flops(p["decoder_depth"], dd, 1 + 2 * length, p["mlp_ratio"], attention)
               + 2 * length * dd * pixels)
    return 3 * forward - embed


def supervised_flops(preset: str, img_size: int, patch_size: int, num_classes: int = 1000,
                      attention: bool = True) -> float:
    """FLOPs of one supervised ViT forward + backward on one image (all N patches + cls token)."""
    p = get_preset(preset)
    n = (img_size // patch_size) ** 2
    d = p["embed_dim"]
    embed = 2 * n * 3 * patch_size ** 2 * d
    forward = embed + blocks_flops(p["depth"], d, 1 + n, p["mlp_ratio"], attention) + 2 * d * num_classes
    return 3 * forward - embed


def speedup_estimate(model_cfg: ModelConfig, alpha: float) -> float:
    """supervised ViT step FLOPs / ObjMAE step FLOPs (> 1 means ObjMAE pre-training is cheaper).

    ViT-S/16 at 224 px: alpha 1/2 -> 1.7, 1/4 -> 3.5, 1/8 -> 7.2, 1/16 -> 14.0 (paper, wall clock: 1.9, 3.6, 6.4, 9.2).
    """
    m = model_cfg
    return supervised_flops(m.preset, m.img_size, m.patch_size) / objmae_flops(m.preset, m.img_size, m.patch_size, alpha)
