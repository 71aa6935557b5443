"""Transfer phase on one worker: fine-tuning or linear probing of the pre-trained encoder.

- fine-tune: timm VisionTransformer (by default global average pooling + fc_norm, as MAE fine-tuning)
  whose encoder is the ObjMAE encoder; all weights train, with layer-wise lr decay (see optim.py) and
  stochastic depth `drop_path`.
- linear probe (as MAE's `main_linprobe.py`): the same ViT (by default the cls token as feature), the
  encoder frozen, and the head `BatchNorm1d(affine=False) -> Linear` the only trained module.
The loss is cross-entropy, with `label_smoothing`, or with timm's `Mixup` (MixUp / CutMix soft targets,
smoothing folded in) and `SoftTargetCrossEntropy` when `mixup` or `cutmix` is set (TransferConfig).
Top-1 / top-5 come from timm's `accuracy` on the held-out split, summed over all workers.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import accuracy
from torch import Tensor, nn

from objmae_ray.config import ModelConfig, TransferConfig
from objmae_ray.method.model import create_vit_classifier
from objmae_ray.train.precision import Precision
from objmae_ray.train.pretrain import (EpochLoss, EpochStats, StepHook, all_reduce_sums, micro_batches,
                                      sync_unless_last)

def build_classifier(model_cfg: ModelConfig, transfer: TransferConfig, *, num_classes: int,
                     encoder_state: dict[str, Tensor] | None) -> nn.Module:
    """timm ViT classifier initialised from `encoder_state` (ObjMAE.encoder_state_dict()).

    mode "finetune": global_pool transfer.pool (default "avg"), drop path transfer.drop_path, every weight
    trainable. mode "linear": global_pool transfer.pool (default "token"), head = BatchNorm1d(affine=False,
    eps=1e-6) + Linear (weights N(0, 0.01), as MAE), every encoder weight frozen (requires_grad=False).
    """
    common = dict(img_size=model_cfg.img_size, patch_size=model_cfg.patch_size,
                  num_classes=num_classes, encoder_state=encoder_state, global_pool=transfer.pool)
    if transfer.mode == "finetune":
        return create_vit_classifier(model_cfg.preset, drop_path_rate=transfer.drop_path, **common)
    model = create_vit_classifier(model_cfg.preset, **common)
    nn.init.trunc_normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("head.")
    return model


def trainable_module(model: nn.Module, mode: str) -> nn.Module:
    """What the optimiser sees: the whole ViT (fine-tune, for layer decay) or only its head (linear)."""
    model = getattr(model, "module", model)  # unwrap DDP
    return model if mode == "finetune" else model.head


class ClassificationLoss:
    """The training loss of a transfer phase: `(logits [B, C], labels [B]) -> loss []`, with the batch first
    mixed by timm's Mixup when MixUp / CutMix is on (`mix(imgs, labels) -> (imgs, soft targets [B, C])`)."""

    def __init__(self, transfer: TransferConfig | None = None, num_classes: int = 0):
        """transfer None: plain cross-entropy."""
        self.mixup, self.smoothing = None, transfer.label_smoothing if transfer else 0.0
        if transfer is not None and (transfer.mixup > 0 or transfer.cutmix > 0):
            self.mixup = Mixup(mixup_alpha=transfer.mixup, cutmix_alpha=transfer.cutmix,
                               label_smoothing=transfer.label_smoothing, num_classes=num_classes)

    def mix(self, imgs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The batch as the loss sees it (Mixup needs an even batch: an odd last image is left out)."""
        if self.mixup is None:
            return imgs, labels
        even = imgs.shape[0] // 2 * 2
        return self.mixup(imgs[:even], labels[:even])

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.mixup is not None:  # soft targets [B, C]
            return SoftTargetCrossEntropy()(logits.float(), targets)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.smoothing)


def train_classifier_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler, *,
                           phase: str, epoch: int, first_update: int, device: torch.device,
                           loss_fn: ClassificationLoss | None = None, on_step: StepHook | None = None,
                           accum_steps: int = 1, precision: Precision | None = None) -> EpochStats:
    """One pass of training over `loader` of (images [B, 3, H, W], labels [B]); `loss_fn` default: plain
    cross-entropy; `precision` default: "auto" on `device` (train/precision.py). `accum_steps` > 1: the (mixed)
    batch runs as that many micro-batches, each loss weighted by its share of the images, one update per batch:
    the full batch's update, except that drop path draws per micro-batch and a linear probe's BatchNorm sees
    micro-batch statistics."""
    loss_fn = loss_fn or ClassificationLoss()
    precision = precision or Precision("auto", device)
    model.train()
    start = time.perf_counter()
    losses, images, steps = EpochLoss(device), 0, 0
    for step, (imgs, labels) in enumerate(loader):
        if on_step is not None:
            on_step(epoch, step)
        scheduler.step_update(first_update + step)
        imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        imgs, targets = loss_fn.mix(imgs, labels)
        optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(imgs.shape[0], accum_steps)
        loss = 0.0
        for index, part in enumerate(parts):
            with sync_unless_last(model, index, len(parts)):
                with precision.autocast():
                    logits = model(imgs[part])  # [b, num_classes]
                part_loss = loss_fn(logits, targets[part])
                if len(parts) > 1:
                    part_loss = part_loss * ((part.stop - part.start) / imgs.shape[0])
                precision.backward(part_loss)
            loss = loss + part_loss.detach()
        losses.add(loss, imgs.shape[0], step)
        precision.step(optimizer)
        images += imgs.shape[0]
        steps += 1
    loss_sum, images = losses.reduce(phase=phase, epoch=epoch, images=images)
    return EpochStats(loss=loss_sum / max(images, 1), images=int(images), steps=steps,
                      seconds=time.perf_counter() - start)


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device,
             precision: Precision | None = None) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean cross-entropy over this worker's share of the held-out split, summed over workers.

    Each worker must see a disjoint share (no padding duplicates), so counts add up to the split exactly.
    Shares can differ by a batch, so the forward passes use the module without its DDP wrapper (whose
    forward is a collective); its buffers (BatchNorm statistics) are first synchronised from rank 0.
    No autograd (a `torch.no_grad()` block, not a decorator: mutmut leaves decorated functions alone).
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        for buffer in model.module.buffers():
            dist.broadcast(buffer, src=0)
        model = model.module
    precision = precision or Precision("auto", device)
    model.eval()
    top1, top5, loss_sum, images = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for imgs, labels in loader:
            imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with precision.autocast():
                logits = model(imgs).float()
            acc1, acc5 = accuracy(logits, labels, topk=(1, 5))  # percent of this batch
            n = labels.shape[0]
            top1 += round(acc1.item() * n / 100.0)  # correct predictions in this batch
            top5 += round(acc5.item() * n / 100.0)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            images += n
    top1, top5, loss_sum, images = all_reduce_sums(top1, top5, loss_sum, images, device=device)
    seen = max(images, 1)  # an empty split scores 0 and reports 0 images
    return {"top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen, "val_loss": loss_sum / seen,
            "val_images": int(images)}
