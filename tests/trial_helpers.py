"""Tiny trial configs shared by the trial tests (no Ray: test_trial.py; Ray: test_trial_ray.py)."""
from __future__ import annotations

from objmae_ray.config import TrialConfig


def tiny_config(root: str, num_images: int = 32, **overrides) -> TrialConfig:
    """micro ViT on 32 px synthetic scenes: 2 pre-train epochs, 1 fine-tune, 1 linear probe, 4 steps each."""
    data = {"kind": "synthetic", "root": root, "num_images": num_images, "loader_workers": 0}
    body = {
        "name": "tiny", "seed": 3,
        "model": {"preset": "micro", "img_size": 32, "patch_size": 8},
        "masking": {"alpha": 0.25, "selection": "object", "padding": "zero"},
        "pretrain": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "lr": 1e-2, "data": data},
        "transfer": [{"mode": "finetune", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-2, "data": data},
                     {"mode": "linear", "epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-1, "data": data}],
    }
    body.update(overrides)
    return TrialConfig.model_validate(body)
