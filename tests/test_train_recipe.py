"""The transfer recipe (TransferConfig -> train/finetune.py, train/loop.py): the loss with label smoothing
and timm's MixUp, the pooled feature, stochastic depth, the low-label split."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from objmae_ray.config import ModelConfig, TransferConfig
from objmae_ray.train.finetune import ClassificationLoss, build_classifier
from objmae_ray.train.loop import labelled_subset

MICRO = ModelConfig(preset="micro", img_size=32, patch_size=8)


def test_label_smoothing_loss_equals_the_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    loss = ClassificationLoss(TransferConfig(label_smoothing=0.1), num_classes=3)(logits, labels)
    log_p = logits.log_softmax(-1)
    # smoothed target: 0.9 on the label + 0.1 / 3 on every class
    expected = -(0.9 * log_p[[0, 1], labels] + 0.1 / 3 * log_p.sum(-1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ClassificationLoss()(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_mixup_mixes_images_and_targets_with_one_lambda():
    torch.manual_seed(0)
    loss_fn = ClassificationLoss(TransferConfig(mixup=0.8), num_classes=4)
    imgs = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = loss_fn.mix(imgs, labels)
    assert targets.shape == (4, 4) and torch.allclose(targets.sum(1), torch.ones(4))
    # timm's batch mode pairs image i with image B-1-i: pixels and targets take the same weight lambda
    lam = targets[0, 0].item()
    assert mixed[0, 0, 0, 0].item() == pytest.approx(lam * 0 + (1 - lam) * 3)
    assert targets[0, 3].item() == pytest.approx(1 - lam)
    logits = torch.randn(4, 4)
    assert loss_fn(logits, targets).item() == pytest.approx((-targets * logits.log_softmax(-1)).sum(-1).mean().item())
    odd_imgs, odd_targets = loss_fn.mix(imgs[:3], labels[:3])  # an odd batch drops its last image
    assert odd_imgs.shape[0] == odd_targets.shape[0] == 2


@pytest.mark.parametrize("mode, pool, expected", [("finetune", None, "avg"), ("linear", None, "token"),
                                                  ("linear", "avg", "avg"), ("finetune", "token", "token")])
def test_the_head_reads_the_configured_feature(mode, pool, expected):
    transfer = TransferConfig(mode=mode, global_pool=pool, drop_path=0.2)
    model = build_classifier(MICRO, transfer, num_classes=3, encoder_state=None)
    assert model.global_pool == expected
    rates = [block.drop_path1.drop_prob if hasattr(block.drop_path1, "drop_prob") else 0.0 for block in model.blocks]
    assert max(rates) == pytest.approx(0.2 if mode == "finetune" else 0.0)  # stochastic depth only when fine-tuning


def test_low_label_split_is_fixed_and_the_same_for_every_trial():
    data = list(range(100))
    first, again = labelled_subset(data, 10), labelled_subset(data, 10)
    assert list(first) == list(again) and len(set(first)) == 10  # seeded by 0, not by the trial
    assert sorted(first) != list(range(10))  # a random subset, not the first 10 files
    assert labelled_subset(data, None) is data and labelled_subset(data, 1000) is data
    assert math.isclose(len(labelled_subset(data, 37)) / 100, 0.37)
