"""Optimiser and learning-rate schedule of one phase, through timm's factories (paper Tables 2-3).

- Optimiser: `create_optimizer_v2(opt="lookahead_adamw", eps=1e-8, betas=(0.9, 0.999), weight_decay=0.05)`;
  biases and norm weights get no weight decay (timm's default `filter_bias_and_bn`). Fine-tuning adds
  layer-wise lr decay (`layer_decay=0.65`): timm gives each parameter group an `lr_scale` of
  `layer_decay ** (num_layers + 1 - layer_id)`, which the scheduler multiplies into every lr it sets.
- Learning rate: the MAE convention `lr = base_lr * global_batch / 256`, so the paper's base lrs
  (1.5e-4 pre-train, 1e-3 fine-tune) hold at any batch size / worker count.
- Schedule: timm `CosineLRScheduler` stepped per optimiser update (`step_update`), linear warm-up over
  `warmup_epochs` from `min_lr` to the peak, then a half cosine down to `min_lr` (1e-5) at the last
  update of the last epoch (warm-up is a prefix, as in MAE's `adjust_learning_rate`).
"""
from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn

from objmae_ray.config import PhaseOptim

REFERENCE_BATCH = 256  # MAE: lr = base_lr * batch / 256
ADAM_EPS = 1e-8
ADAM_BETAS = (0.9, 0.999)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Peak learning rate for `global_batch` images per update: `base_lr * global_batch / 256`."""
    return base_lr * global_batch / REFERENCE_BATCH


def build_optimizer(
    model_or_params: nn.Module | list,
    phase: PhaseOptim,
    *,
    global_batch: int,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """timm optimiser for one phase; `layer_decay` (fine-tuning only) needs a timm ViT (its group_matcher)."""
    kwargs = {}
    if "adam" in phase.optimizer.lower():
        kwargs = {"eps": ADAM_EPS, "betas": ADAM_BETAS}
    return create_optimizer_v2(
        model_or_params,
        opt=phase.optimizer,
        lr=scaled_lr(phase.lr, global_batch),
        weight_decay=phase.weight_decay,
        layer_decay=layer_decay,
        **kwargs,
    )


def build_lr_schedule(optimizer: torch.optim.Optimizer, phase: PhaseOptim, *, updates_per_epoch: int) -> Scheduler:
    """Per-update cosine schedule: warm-up for `warmup_epochs`, cosine to `min_lr` at the end of `epochs`.

    Call `scheduler.step_update(global_update_index)` before each optimiser step (index 0 first).
    """
    if updates_per_epoch < 1:
        raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
    warmup_epochs = min(phase.warmup_epochs, phase.epochs)
    decay_epochs = phase.epochs - warmup_epochs
    # timm's cosine needs >= 1 update of decay; a phase that is all warm-up ends at the peak lr.
    decay_updates = max(1, decay_epochs * updates_per_epoch)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=decay_updates,
        warmup_epochs=warmup_epochs * updates_per_epoch,
        warmup_prefix=True,
        warmup_lr=phase.min_lr,
        min_lr=phase.min_lr,
        step_on_epochs=False,
        updates_per_epoch=1,  # epochs above are already counted in updates
    )
    return scheduler


def peak_lrs(optimizer: torch.optim.Optimizer, phase: PhaseOptim, *, global_batch: int) -> list[float]:
    """The peak lr of each parameter group (scaled lr times the group's layer-decay `lr_scale`)."""
    lr = scaled_lr(phase.lr, global_batch)
    return [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
