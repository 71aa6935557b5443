"""Tiny trial configs and image folders shared by the tests (no Ray: test_train_trial.py; Ray: test_train_trial_ray.py;
the CAM and packed-store tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from objmae_ray.config import TrialConfig


def noise_folder(root: Path, classes: tuple[str, ...], sizes: list[tuple[int, int]], name: str = "{i}.png") -> Path:
    """An ImageFolder split: per class one uniform-noise RGB image of each (height, width), named `name`."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / name.format(i=i))
    return root


def tiny_config(root: str, num_images: int = 32, **overrides) -> TrialConfig:
    """micro ViT on 32 px synthetic scenes: 2 pre-train epochs, 1 fine-tune, 1 linear probe, 4 steps each;
    a checkpoint every epoch (the default is by wall time)."""
    data = {"kind": "synthetic", "root": root, "num_images": num_images, "loader_workers": 0}
    body = {
        "name": "tiny", "seed": 3, "checkpoint_every": 1,  # per-epoch checkpoints: the resume tests need them
        "model": {"preset": "micro", "img_size": 32, "patch_size": 8},
        "masking": {"alpha": 0.25, "selection": "object", "padding": "zero"},
        "pretrain": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "lr": 1e-2, "data": data},
        "transfer": [{"mode": "finetune", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-2, "data": data},
                     {"mode": "linear", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-1, "data": data}],
    }
    body.update(overrides)
    return TrialConfig.model_validate(body)
