"""A finished run directory as Tune + the trial leave it, with real checkpoints (export and results tests)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from objmae_ray.config import TrialConfig
from objmae_ray.method.model import create_objmae, create_vit_classifier
from objmae_ray.train.checkpoint import save_checkpoint

SPEC = {
    "study": "exp", "objectives": [{"metric": "top1", "mode": "max"}], "num_samples": 3, "repeats": 2,
    "base": {"model": {"preset": "micro", "img_size": 32, "patch_size": 8},
             "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3},
             "transfer": [{"epochs": 2, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-3}]},
    "search_space": {"alpha": {"choices": [0.25, 0.5]}},
}


def make_trial(run_dir: Path, trial_id: str, alpha: float, repeat: int, top1s: list[float], seed: int,
               speedup: float) -> Path:
    """One trial as Tune + the trial (objmae_ray/train) leave it: params.json, result.json, one checkpoint per report."""
    cfg = TrialConfig.model_validate({**SPEC["base"], "seed": seed, "masking": {"alpha": alpha}})
    torch.manual_seed(seed)
    objmae = create_objmae("micro", img_size=32, patch_size=8)
    trial_dir = run_dir / f"trial_{trial_id}"
    trial_dir.mkdir(parents=True)
    (trial_dir / "params.json").write_text(json.dumps({**cfg.model_dump(), "masking.alpha": alpha,
                                                       "__trial_index__": repeat}))
    reports = [{"phase": "pretrain", "phase_index": 0, "epoch": 0, "recon_loss": 0.9 - alpha, "top1": 0.0,
                "top5": 0.0, "speedup_est": speedup, "pretrain_time_s": 1.0, "done": False}]
    reports += [{"phase": "finetune", "phase_index": 1, "epoch": e, "recon_loss": 0.9 - alpha, "top1": t,
                 "top5": min(100.0, t + 10), "speedup_est": speedup, "pretrain_time_s": 1.0,
                 "done": e == len(top1s) - 1} for e, t in enumerate(top1s)]
    lines = []
    for i, report in enumerate(reports):
        checkpoint = run_dir / f"train-{trial_id}" / f"checkpoint_{i}"
        classifier = None
        if report["phase"] == "finetune":
            classifier = create_vit_classifier("micro", img_size=32, patch_size=8, num_classes=3,
                                               encoder_state=objmae.encoder_state_dict())
        save_checkpoint(checkpoint, objmae=objmae, classifier=classifier, train_state={"epoch": i}, config=cfg,
                        metrics=report)
        lines.append(json.dumps({**report, "trial_id": trial_id, "training_iteration": i + 1,
                                 "checkpoint_path": str(checkpoint)}))
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    return trial_dir
