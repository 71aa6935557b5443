"""Gradient accumulation (train/pretrain.py micro_batches): k micro-batches per update give the full batch's
update and loss, within float tolerance, for pre-training (zero padding: micro-batches hold different numbers
of valid target slots; throwout at a fixed length) and fine-tuning; and the memory plan's choice of k."""
from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from objmae_ray.config import MaskingConfig, ModelConfig, TransferConfig
from objmae_ray.method.memory import GIB, accumulation_steps, step_memory
from objmae_ray.method.model import create_objmae
from objmae_ray.train.finetune import ClassificationLoss, build_classifier, train_classifier_epoch
from objmae_ray.train.pretrain import micro_batches, pretrain_epoch

NO_SCHEDULE = SimpleNamespace(step_update=lambda i: None)


def object_batch(batch: int = 7, grid: int = 4, seed: int = 0) -> dict:
    """Images with one object of 2..12 patches each: zero padding leaves each image a different count of
    valid target slots at alpha 0.25 (L = 4 on 16 patches)."""
    g = torch.Generator().manual_seed(seed)
    n = grid * grid
    patches = torch.zeros(batch, 1, n, dtype=torch.bool)
    for b in range(batch):
        patches[b, 0, :2 + (b * 5) % 11] = True
    return {"image": torch.randn(batch, 3, 32, 32, generator=g), "object_patches": patches,
            "object_ratio": torch.full((batch, 1), 0.3)}


def test_micro_batches_cover_the_batch_in_order():
    assert micro_batches(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert micro_batches(4, 1) == [slice(0, 4)] and micro_batches(2, 5) == [slice(0, 1), slice(1, 2)]


@pytest.mark.parametrize("padding", ["zero", "throwout"])
def test_pretrain_accumulation_gives_the_full_batch_update(padding):
    torch.manual_seed(0)
    full = create_objmae("micro", img_size=32, patch_size=8)
    accumulated = copy.deepcopy(full)
    masking = MaskingConfig(alpha=0.25, selection="object", padding=padding, min_ratio=0.01)
    stats = []
    for model, steps in ((full, 1), (accumulated, 3)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        stats.append(pretrain_epoch(model, [object_batch()], optimizer, NO_SCHEDULE, epoch=0, first_update=0,
                                    num_patches=16, masking=masking, generator=torch.Generator().manual_seed(3),
                                    device=torch.device("cpu"), accum_steps=steps))
    assert stats[0].loss == pytest.approx(stats[1].loss, rel=1e-6)
    assert stats[0].zero_loss == pytest.approx(stats[1].zero_loss, rel=1e-6)
    moved = [not torch.equal(a, b) for a, b in zip(full.parameters(), create_objmae("micro", img_size=32,
                                                                                    patch_size=8).parameters())]
    assert any(moved)
    for (name, a), b in zip(full.named_parameters(), accumulated.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


def test_finetune_accumulation_gives_the_full_batch_update():
    """drop_path 0 (stochastic depth draws per micro-batch); MixUp runs on the whole batch before the split."""
    transfer = TransferConfig(mode="finetune", epochs=1, warmup_epochs=0, batch_size=6, lr=1e-3, drop_path=0.0,
                              mixup=0.2)
    torch.manual_seed(0)
    full = build_classifier(ModelConfig(preset="micro", img_size=32, patch_size=8), transfer, num_classes=4,
                            encoder_state=None)
    accumulated = copy.deepcopy(full)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(6, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3, 0, 1]))
    losses = []
    for model, steps in ((full, 1), (accumulated, 4)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(5), np.random.seed(5), random.seed(5)  # the same MixUp draw
        images = batch[0].clone()  # timm's Mixup mixes the batch in place
        losses.append(train_classifier_epoch(model, [(images, batch[1])], optimizer, NO_SCHEDULE, phase="finetune", epoch=0,
                                             first_update=0, device=torch.device("cpu"),
                                             loss_fn=ClassificationLoss(transfer, 4), accum_steps=steps).loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, a), b in zip(full.named_parameters(), accumulated.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


def test_memory_plan_accumulates_vit_s8_finetuning_on_a_24gb_gpu():
    """The issue's case: ViT-S/8 fine-tuning at batch 256 (785 tokens) needs > 24 GB in bf16; patch 16 fits."""
    vit_s8 = step_memory(ModelConfig(preset="vit_small", patch_size=8), "finetune")
    vit_s16 = step_memory(ModelConfig(preset="vit_small", patch_size=16), "finetune")
    assert vit_s8.peak(256) > 24 * GIB > vit_s8.peak(128) and vit_s16.peak(256) < 24 * GIB
    assert accumulation_steps(vit_s8, 256, 22.5 * GIB) == 2 and accumulation_steps(vit_s16, 256, 22.5 * GIB) == 1
    assert accumulation_steps(vit_s8, 256, 0.5 * GIB) is None  # not even one image fits
    fp32 = step_memory(ModelConfig(preset="vit_small", patch_size=8), "finetune", precision="fp32")
    assert fp32.peak(256) > vit_s8.peak(256)
    for two_bytes in ("auto", "fp16"):  # a trial's precision: 2-byte activations read the bf16 rows
        assert step_memory(ModelConfig(preset="vit_small", patch_size=8), "finetune", precision=two_bytes) == vit_s8
    assert step_memory(ModelConfig(preset="vit_small", patch_size=8), "pretrain", alpha=0.05).peak(128) \
        < step_memory(ModelConfig(preset="vit_small", patch_size=8), "pretrain", alpha=0.5).peak(128)
    assert step_memory(ModelConfig(preset="vit_small", patch_size=14, img_size=224), "finetune") is None
