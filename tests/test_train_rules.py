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
