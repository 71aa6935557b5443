"""Measure the activation memory a training step keeps for backward, per image and token, on the CPU; write
objmae_ray/method/activation_memory.json (read by objmae_ray/method/memory.py and the plan).

What is measured: the bytes of every distinct tensor storage autograd saves during one forward pass
(`torch.autograd.graph.saved_tensors_hooks`; parameters and their cached low-precision casts are left out:
memory.py counts weights separately), for
  pretrain  ObjMAE forward on L source + L target slots (encoder 1 + L tokens, decoder 1 + 2L);
  finetune  the timm ViT classifier on all 1 + N tokens (drop path 0.1 as fine-tuning);
at fp32 and under bf16 autocast (CPU autocast: the same lower-precision op list as CUDA for linear / matmul),
with timm's fused attention (F.scaled_dot_product_attention: saves q, k, v, the output and the log-sum-exp)
and with the attention matrix materialised (`fused_attn = False`: softmax input / output kept, T^2 per head).
Each (preset, patch size, phase, precision, attention) is fit exactly as bytes per image = c + a*T + b*T^2 from
three token counts, each measured at batch 1 and 2 (the difference is per image, so per-forward constants
drop out). finetune: T = 1 + N (image size varied); pretrain: T = L at 224 px (64 px for micro), and c is
stored per patch of the image (c * N: the whole image's patchified pixels and targets). A linear probe keeps nothing for its frozen encoder.

    PYTHONPATH=$PWD python bench/activation_memory.py          # ~1 min on one CPU core
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from objmae_ray.method.model import create_objmae, create_vit_classifier

OUT = Path(__file__).resolve().parents[1] / "objmae_ray" / "method" / "activation_memory.json"
PRESETS = {"vit_small": (8, 16, 32), "vit_tiny": (8, 16, 32), "micro": (4, 8)}
IMG_SIZE = {"vit_small": 224, "vit_tiny": 224, "micro": 64}  # pretrain: measured at this image size


def saved_bytes(run, params: set[int]) -> int:
    """Bytes of the distinct storages autograd saves while `run()` runs its forward (parameters excluded)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if tensor.data_ptr() not in params and storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(storages.values())


def measure(preset: str, patch: int, phase: str, bf16: bool, fused: bool) -> list[float]:
    """[c, a, b]: saved bytes per image = c + a*T + b*T^2 (pretrain: c * N + a*L + b*L^2)."""
    points = []
    size = IMG_SIZE[preset]
    for grid in (3, 4, 6):  # finetune: 1 + grid^2 tokens; pretrain: L = N * grid^2 / 144 slots per side
        img = size if phase == "pretrain" else grid * patch
        torch.manual_seed(0)
        if phase == "pretrain":
            model = create_objmae(preset, img_size=img, patch_size=patch)
            tokens = model.num_patches * grid * grid // 144  # N/16, N/9, N/4
        else:
            model = create_vit_classifier(preset, img_size=img, patch_size=patch, num_classes=100, encoder_state=None,
                                          drop_path_rate=0.1)
            tokens = 1 + grid * grid
        model.train()
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused
        params = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
        per_batch = []
        for batch in (1, 2):
            imgs = torch.randn(batch, 3, img, img)

            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    if phase == "pretrain":
                        idx = torch.randperm(model.num_patches)[:2 * tokens].view(1, 2, tokens).expand(batch, -1, -1)
                        return model(imgs, idx[:, 0], idx[:, 1])[0]
                    return model(imgs)
            per_batch.append(saved_bytes(run, params))
        points.append((tokens, per_batch[1] - per_batch[0]))
    t = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    coef = np.linalg.solve(np.stack([np.ones_like(t), t, t * t], 1), y)
    if phase == "pretrain":  # the constant holds what scales with the image's N patches (patchify, targets)
        coef[0] /= (size // patch) ** 2
    return [round(float(v), 3) for v in coef]


def main() -> dict:
    torch.set_num_threads(1)
    table = {}
    for preset, patches in PRESETS.items():
        for patch in patches:
            for phase in ("pretrain", "finetune"):
                for precision in ("fp32", "bf16"):
                    for attention in ("fused", "materialised"):
                        key = f"{preset}/p{patch}/{phase}/{precision}/{attention}"
                        table[key] = measure(preset, patch, phase, precision == "bf16", attention == "fused")
    result = {"measured_by": "bench/activation_memory.py (CPU, saved tensors of one forward)",
              "torch": torch.__version__, "fit": "[c, a, b]: bytes per image = c + a * T + b * T^2; T = 1 + N (finetune) or L with c per patch (c * N, pretrain)", "table": table}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main()["table"], indent=1))
