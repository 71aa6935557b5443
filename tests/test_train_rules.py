"""Pre-flight rules of a trial (train/rules.py: trial_problems), each at its boundary."""
from __future__ import annotations

import pytest

from objmae_ray.config import TrialConfig
from objmae_ray.train.rules import trial_problems


def config(**body) -> TrialConfig:
    return TrialConfig.model_validate(body)


def test_a_default_trial_breaks_no_rule():
    assert trial_problems(TrialConfig()) == []


@pytest.mark.parametrize("workers, problems", [
    (64, []),  # 128 pre-train, 256 fine-tune images per update: 2 and 4 per worker
    (128, []),  # exactly one pre-train image per worker is enough
    (129, ["pretrain.batch_size: 128 is less than one image per worker (resources.num_workers=129)"]),
    (257, ["pretrain.batch_size: 128 is less than one image per worker (resources.num_workers=257)",
           "transfer.0.batch_size: 256 is less than one image per worker (resources.num_workers=257)"]),
])
def test_batch_below_the_worker_count_is_refused_per_phase(workers, problems):
    assert trial_problems(config(resources={"num_workers": workers})) == problems


def test_cifar100_is_not_a_pretraining_set():
    cfg = config(pretrain={"data": {"kind": "cifar100", "root": "/data/cifar"}})
    assert trial_problems(cfg) == ["pretrain.data.kind: 'cifar100' has no object masks or CAM; use it for transfer only"]
    for selection in ("mae", "cam", "inter"):  # whatever the selection: the one line, nothing about the selection
        cfg = config(masking={"selection": selection}, pretrain={"data": {"kind": "cifar100", "root": "/d"}})
        assert trial_problems(cfg) == [
            "pretrain.data.kind: 'cifar100' has no object masks or CAM; use it for transfer only"], selection
    # as a transfer set it is fine
    assert trial_problems(config(transfer=[{"data": {"kind": "cifar100", "root": "/data/cifar"}}])) == []


def test_every_broken_rule_is_one_line():
    cfg = config(model={"preset": "vit_huge", "img_size": 100, "patch_size": 16},
                 pretrain={"epochs": 2, "warmup_epochs": 3, "data": {"kind": "coco"}},
                 resources={"use_gpu": True, "gpus_per_worker": 0})
    assert [p.split(": ")[0] for p in trial_problems(cfg)] == [
        "model.preset", "model.patch_size", "pretrain.data.root", "pretrain.warmup_epochs",
        "resources.gpus_per_worker"]


def test_layer_decay_defaults_by_phase_and_is_refused_below_one_from_scratch():
    """Layer-wise decay protects pre-trained features: 0.65 (Table 2) after pre-training, 1.0 on a random
    encoder; an explicit decay below 1 from scratch is refused naming both fields, unless allowed."""
    phases = [{"mode": "finetune"}, {"mode": "linear"}, {"mode": "finetune", "layer_decay": 0.8}]
    pretrained, scratch = config(transfer=phases), config(pretrain={"epochs": 0}, transfer=phases[:2])
    assert [pretrained.transfer_layer_decay(i) for i in range(3)] == [0.65, 0.65, 0.8]
    assert [scratch.transfer_layer_decay(i) for i in range(2)] == [1.0, 1.0]
    assert trial_problems(pretrained) == [] and trial_problems(scratch) == []
    refused = config(pretrain={"epochs": 0}, transfer=phases)
    assert trial_problems(refused) == [
        "transfer.2.layer_decay: 0.8 < 1 with pretrain.epochs 0: layer-wise decay protects pre-trained features "
        "and a random encoder has none, so it only slows the early blocks (leave layer_decay out for 1.0, or set "
        "transfer.2.allow_layer_decay_from_scratch: true)"]
    allowed = config(pretrain={"epochs": 0},
                     transfer=[*phases[:2], {**phases[2], "allow_layer_decay_from_scratch": True}])
    assert trial_problems(allowed) == [] and allowed.transfer_layer_decay(2) == 0.8
    # exactly 1.0 from scratch is no decay; a linear probe has no layer-wise lr at all
    assert trial_problems(config(pretrain={"epochs": 0}, transfer=[{"layer_decay": 1.0},
                                                                     {"mode": "linear", "layer_decay": 0.5}])) == []
