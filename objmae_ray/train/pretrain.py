"""One ObjMAE pre-training epoch on one worker (paper section 3): masks -> model -> loss -> step.

The masks (selection -> division -> alignment) are sampled on the worker's device from the batch's
per-patch object maps with a generator the caller seeds per (trial seed, epoch, rank), so a resumed
epoch draws exactly the masks of the original one. An optional `timer` (objmae_ray/train/speed.py's
StepTimer) times each step's compute, from the masks to the optimiser step (speedup_measured).
"""
from __future__ import annotations

import contextlib
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


class EpochLoss:
    """The epoch's loss sum (loss x images) and its first non-finite loss (step, value), kept on the device.

    `add` reads no value on the host; `reduce` is the epoch's one host sync: it sums over workers and raises
    NonFiniteLossError (on every worker) naming the first non-finite step, so a non-finite epoch is never
    reported nor checkpointed.
    """

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=device)  # (step, loss), step -1: none

    def add(self, loss: torch.Tensor, images: int, step: int) -> None:
        """loss: [] (the batch mean) of a batch of `images` at `step`."""
        loss = loss.detach().double()
        self.total += loss * images
        new = ~torch.isfinite(loss) & (self.first_bad[0] < 0)
        self.first_bad = torch.where(new, torch.stack([torch.full_like(loss, step), loss]), self.first_bad)

    def reduce(self, *, phase: str, epoch: int, images: int, extra: torch.Tensor | None = None) -> list[float]:
        """[loss sum, images, *extra] summed over workers (extra: [E] device sums of the epoch)."""
        extra = torch.zeros(0, dtype=torch.float64, device=self.total.device) if extra is None else extra
        host = torch.cat([self.total.reshape(1), self.first_bad, extra.double()]).tolist()  # the one host sync
        step, value = host[1], host[2]
        loss_sum, bad, images, *rest = all_reduce_sums(host[0], float(step >= 0), images, *host[3:],
                                                       device=self.total.device)
        if step >= 0:
            check_finite(value, phase=phase, epoch=epoch, step=int(step))
        if bad:
            raise NonFiniteLossError(f"{phase}: loss is not finite on another worker in epoch {epoch}; stopping "
                                     f"the trial (the last checkpoint before it is kept)")
        return [loss_sum, images, *rest]


def check_finite(value: float, *, phase: str, epoch: int, step: int) -> float:
    """A loss value read on the host -> itself, or NonFiniteLossError naming where it happened."""
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


def micro_batches(size: int, accum_steps: int) -> list[slice]:
    """A batch of `size` images cut into `accum_steps` consecutive micro-batches of ceil(size / accum_steps)
    images (the last may be smaller; fewer when size < accum_steps)."""
    step = -(-size // max(1, accum_steps))
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def sync_unless_last(model: nn.Module, index: int, count: int):
    """DDP's no_sync() for every micro-batch but the last (gradients all-reduced once per update)."""
    if index + 1 < count and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


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
        fixed_length=True,  # throwout without reading its length on the host (Masks.keep)
    )


def pretrain_epoch(model: nn.Module, loader: Iterable[dict], optimizer: torch.optim.Optimizer, scheduler, *,
                   epoch: int, first_update: int, num_patches: int, masking: MaskingConfig,
                   generator: torch.Generator, device: torch.device,
                   on_step: StepHook | None = None, timer=None, accum_steps: int = 1,
                   precision: Precision | None = None) -> EpochStats:
    """Train `model` (ObjMAE, maybe DDP-wrapped) for one pass over `loader`.

    `first_update` is the global index of this epoch's first optimiser update (for the per-update
    lr schedule); `generator` lives on `device` and is already seeded for (seed, epoch, rank).
    `accum_steps` > 1: gradient accumulation. The masks are drawn for the whole batch, then each micro-batch
    (micro_batches) runs forward + backward with its loss weighted by its share of the batch's valid target
    slots, so the summed gradient is the full batch's; one optimiser update per batch (DDP syncs once).
    Besides the loss, the epoch measures the loss of predicting zeros on the same targets (the baseline a
    reconstruction must beat) and what alpha did (Masks.alpha_sums), accumulated on the device.
    `precision` (train/precision.py): autocast and fp16 loss scaling; default "auto" on `device`.
    """
    precision = precision or Precision("auto", device)
    model.train()
    core = getattr(model, "module", model)  # DDP wraps the ObjMAE
    start = time.perf_counter()
    losses, images, steps = EpochLoss(device), 0, 0
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
        optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(imgs.shape[0], accum_steps)
        valid = masks.tgt_valid.sum().clamp(min=1) if len(parts) > 1 else None
        loss = 0.0
        for index, part in enumerate(parts):
            keep = None if masks.keep is None else masks.keep[part]
            with sync_unless_last(model, index, len(parts)):
                with precision.autocast():
                    part_loss, pred = model(imgs[part], masks.src_idx[part], masks.tgt_idx[part],
                                            masks.src_valid[part], masks.tgt_valid[part], keep)
                if valid is not None:  # this micro-batch's share of the batch's valid target slots
                    part_loss = part_loss * (masks.tgt_valid[part].sum() / valid)
                precision.backward(part_loss)
            loss = loss + part_loss.detach()
        losses.add(loss, imgs.shape[0], step)
        precision.step(optimizer)
        if timer is not None:
            timer.stop()
        with torch.no_grad():  # outside the timed step: the statistics are not part of ObjMAE's cost
            zeros = pred.new_zeros(imgs.shape[0], *pred.shape[1:])  # [B, L, p*p*3]: every micro-batch's shape
            zero = core.forward_loss(imgs, zeros, masks.tgt_idx, masks.tgt_valid)
            on_device += torch.cat([masks.fallback.sum().reshape(1), zero.reshape(1) * imgs.shape[0],
                                    masks.alpha_sums(num_patches)]).double()
        images += imgs.shape[0]
        steps += 1
    loss_sum, images, fallback, zero_sum, *alpha_sums = losses.reduce(phase="pretrain", epoch=epoch, images=images,
                                                                      extra=on_device)
    seconds = time.perf_counter() - start
    per_image = max(images, 1)
    return EpochStats(loss=loss_sum / per_image, images=int(images), steps=steps, seconds=seconds,
                      fallback=int(fallback), zero_loss=zero_sum / per_image,
                      alpha={key: value / per_image for key, value in zip(ALPHA_STATS, alpha_sums)},
                      step_s=timer.median() if timer else float("nan"))
