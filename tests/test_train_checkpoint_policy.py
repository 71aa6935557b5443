"""The default checkpoint policy (train/loop.py): by wall time (`checkpoint_minutes`) and at every phase end;
`checkpoint_every` (epochs) overrides it."""
from __future__ import annotations

import pytest

from objmae_ray.data import ensure_synthetic
from objmae_ray.train.loop import LocalRun, TrialRun
from trial_helpers import tiny_config

PHASE_ENDS = ["checkpoint_p0_pretrain_e0001", "checkpoint_p1_finetune_e0000", "checkpoint_p2_linear_e0000"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, num_images=32, img_size=32, seed=0)
    return str(root)


def run(cfg, directory) -> list[str]:
    local = LocalRun(directory)
    TrialRun(cfg, local.worker()).run()
    assert len(local.reports) == 4  # one report per epoch whatever the checkpoints
    return [p.name for p in local.checkpoints]


def test_default_checkpoints_only_at_phase_ends_within_the_interval(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, checkpoint_every=None)
    assert cfg.checkpoint_every is None and cfg.checkpoint_minutes == 15.0
    assert run(cfg, tmp_path) == PHASE_ENDS


def test_an_elapsed_interval_checkpoints_mid_phase(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, checkpoint_every=None, checkpoint_minutes=1e-9)  # always elapsed
    assert run(cfg, tmp_path) == ["checkpoint_p0_pretrain_e0000", *PHASE_ENDS]
