"""One ObjMAE pre-training epoch on one worker (paper section 3): masks -> model -> loss -> step.

The masks (selection -> division -> alignment) are sampled on the worker's device from the batch's
per-patch object maps with a generator the caller seeds per (trial seed, epoch, rank), so a resumed
epoch draws exactly the masks of the original one. An optional `timer` (objmae_ray/train/speed.py's
StepTimer) times each step's compute, from the masks to the optimiser step (speedup_measured).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from objmae_ray.config import MaskingConfig
from objmae_ray.method.masking import ALPHA_STATS, Masks, sample_masks
from objmae_ray.train.precision import Precision

StepHook = Callable[[int, int], None]  # (epoch, step) -> None, called before each step (fault injection in tests)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the phase, epoch and step."""


@dataclass
class EpochStats:
    """What one epoch did, summed over all workers (`loss` is the mean per image)."""

    loss: float
    images: int
    steps: int
    seconds: float
    fallback: int = 0  # pre-train only: images with no eligible object (whole image used)
    zero_loss: float = 0.0  # pre-train only: the loss of predicting zeros on the same targets (mean per image)
    alpha: dict[str, float] | None = None  # pre-train only: what alpha did, means per image (Masks.alpha_sums)
    step_s: float = float("nan")  # pre-train with a timer: median compute seconds of one step on this worker


def autocast(device: torch.device):
    """The autocast of precision "auto" on `device` (train/precision.py): bf16 or fp16 on GPU, fp32 on CPU."""
    return Precision("auto", device).autocast()


def check_finite(loss: torch.Tensor, *, phase: str, epoch: int, step: int) -> float:
    """loss: [] -> its value, or NonFiniteLossError naming where it happened."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"{phase}: loss is {value} at epoch {epoch} step {step}; stopping the trial "
                                 f"(the last checkpoint before it is kept)")
    return value


def all_reduce_sums(*values: float, device: torch.device) -> list[float]:
    """Sum scalars over the worker group (identity without torch.distributed)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def sample_batch_masks(batch: dict, *, num_patches: int, masking: MaskingConfig,
                       generator: torch.Generator, device: torch.device) -> Masks:
    """Masks for a pre-training batch.

    batch: {"image": [B, 3, H, W], and "object_patches": [B, K, N] bool + "object_ratio": [B, K]
    (segmentation datasets) or "saliency": [B, N] (CAM datasets)}.
    """
    return sample_masks(
        batch_size=batch["image"].shape[0],
        num_patches=num_patches,
        alpha=masking.alpha,
        selection=masking.selection,
        padding=masking.padding,
        object_patches=batch.get("object_patches"),
        object_ratio=batch.get("object_ratio"),
        saliency=batch.get("saliency"),
        min_ratio=masking.min_ratio,
        cam_threshold=masking.cam_threshold,
        cam_select=masking.cam_select or "topk",
        generator=generator,
        device=device,
    )


def pretrain_epoch(model: nn.Module, loader: Iterable[dict], optimizer: torch.optim.Optimizer, scheduler, *,
                   epoch: int, first_update: int, num_patches: int, masking: MaskingConfig,
                   generator: torch.Generator, device: torch.device,
                   on_step: StepHook | None = None, timer=None, precision: Precision | None = None) -> EpochStats:
    """Train `model` (ObjMAE, maybe DDP-wrapped) for one pass over `loader`.

    `first_update` is the global index of this epoch's first optimiser update (for the per-update
    lr schedule); `generator` lives on `device` and is already seeded for (seed, epoch, rank).
    Besides the loss, the epoch measures the loss of predicting zeros on the same targets (the baseline a
    reconstruction must beat) and what alpha did (Masks.alpha_sums), accumulated on the device.
    `precision` (train/precision.py): autocast and fp16 loss scaling; default "auto" on `device`.
    """
    precision = precision or Precision("auto", device)
    model.train()
    core = getattr(model, "module", model)  # DDP wraps the ObjMAE
    start = time.perf_counter()
    loss_sum, images, steps = 0.0, 0, 0
    on_device = torch.zeros(2 + len(ALPHA_STATS), dtype=torch.float64, device=device)  # fallback, zero loss, alpha
    for step, batch in enumerate(loader):
        if on_step is not None:
            on_step(epoch, step)
        scheduler.step_update(first_update + step)
        imgs = batch["image"].to(device, non_blocking=True)
        if timer is not None:
            timer.start()
        masks = sample_batch_masks(batch, num_patches=num_patches, masking=masking,
                                   generator=generator, device=device)
        with precision.autocast():
            loss, pred = model(imgs, masks.src_idx, masks.tgt_idx, masks.src_valid, masks.tgt_valid)
        value = check_finite(loss, phase="pretrain", epoch=epoch, step=step)
        precision.backward_step(loss, optimizer)
        if timer is not None:
            timer.stop()
        with torch.no_grad():  # outside the timed step: the statistics are not part of ObjMAE's cost
            zero = core.forward_loss(imgs, torch.zeros_like(pred), masks.tgt_idx, masks.tgt_valid)
            on_device += torch.cat([masks.fallback.sum().reshape(1), zero.reshape(1) * imgs.shape[0],
                                    masks.alpha_sums(num_patches)]).double()
        loss_sum += value * imgs.shape[0]
        images += imgs.shape[0]
        steps += 1
    loss_sum, images, fallback, zero_sum, *alpha_sums = all_reduce_sums(loss_sum, images, *on_device.tolist(),
                                                                        device=device)
    seconds = time.perf_counter() - start
    per_image = max(images, 1)
    return EpochStats(loss=loss_sum / per_image, images=int(images), steps=steps, seconds=seconds,
                      fallback=int(fallback), zero_loss=zero_sum / per_image,
                      alpha={key: value / per_image for key, value in zip(ALPHA_STATS, alpha_sums)},
                      step_s=timer.median() if timer else float("nan"))
