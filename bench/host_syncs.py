"""Host syncs per training step, counted on the CPU: prints JSON {case: syncs per step, ...}.

A host sync is a call that makes the host wait for the device on a GPU: reading a tensor's value
(`Tensor.item`, `tolist`, `cpu`, `numpy`, `bool()` / `int()` / `float()` / `operator.index` of a tensor),
a data-dependent shape (`nonzero`, `masked_select`, `unique`, boolean-mask indexing), or a synchronous
host-to-device copy (`torch.tensor(..., device=...)` / `torch.as_tensor(..., device=...)`). On the CPU none of
these wait for anything, so `count_host_syncs()` counts them by patching those entry points; calls made
from inside torch's own Python code are not counted (e.g. an optimiser reading its CPU step counter, which
lives on the host on a GPU too). Each case runs one epoch of 1 step and one of 3 steps: the difference / 2
is the count per step (the once-per-epoch reduction cancels out).

Cases: pre-training (objmae_ray/train/pretrain.py) with selection mae, and object with each padding
(throwout included), on batches from the on-device augmentation of a packed batch (data/augment.py);
fine-tuning and linear probing (train/finetune.py).

    PYTHONPATH=$PWD python bench/host_syncs.py            # tests/test_train_syncs.py asserts all zeros
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from types import SimpleNamespace

import torch

TORCH_DIR = os.path.dirname(torch.__file__)
_VALUE_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero")
_FUNCTIONS = ("nonzero", "masked_select", "unique")
_COPIES = ("tensor", "as_tensor")


def _caller_outside_torch() -> str | None:
    """The file of the first frame outside this module; None when it lies inside torch."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    name = frame.f_code.co_filename if frame is not None else "?"
    return None if name.startswith(TORCH_DIR) else name


@contextlib.contextmanager
def count_host_syncs():
    """Patch the sync entry points; yields a Counter {"<file>:<what>": calls} that fills while the block runs."""
    counts: Counter = Counter()
    saved: list[tuple[object, str, object]] = []

    def patch(owner, name: str, counting) -> None:
        original = getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, counting(original, name))

    def value_read(original, name):
        def wrapper(*args, **kwargs):
            where = _caller_outside_torch()
            if where:
                counts[f"{os.path.basename(where)}:{name}"] += 1
            return original(*args, **kwargs)
        return wrapper

    def copy(original, name):
        def wrapper(*args, **kwargs):
            where = _caller_outside_torch()
            if where and kwargs.get("device") is not None and not isinstance(args[0] if args else None, torch.Tensor):
                counts[f"{os.path.basename(where)}:torch.{name}(device=)"] += 1
            return original(*args, **kwargs)
        return wrapper

    def getitem(original, name):
        def wrapper(self, index):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                where = _caller_outside_torch()
                if where:
                    counts[f"{os.path.basename(where)}:bool-mask index"] += 1
            return original(self, index)
        return wrapper

    for name in _VALUE_READS:
        patch(torch.Tensor, name, value_read)
    for name in _FUNCTIONS:
        patch(torch, name, value_read)
    for name in _COPIES:
        patch(torch, name, copy)
    patch(torch.Tensor, "__getitem__", getitem)
    try:
        yield counts
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


# ---- the cases ------------------------------------------------------------------------------------

IMG, PATCH, BATCH = 32, 8, 4


def packed_batches(steps: int, *, objects: bool, seed: int = 0) -> list[dict]:
    """`steps` pre-training batches made by DeviceAugment from a packed batch (RGB + object ids), on the CPU."""
    from objmae_ray.data.augment import DeviceAugment

    g = torch.Generator().manual_seed(seed)
    channels = 4 if objects else 3
    sizes = torch.tensor([[40, 48]] * BATCH)
    pixels = int((sizes[:, 0] * sizes[:, 1]).sum())
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (sizes[:, 0] * sizes[:, 1]).cumsum(0)[:-1]])
    data = torch.randint(0, 256, (pixels * channels,), generator=g, dtype=torch.uint8)
    if objects:  # object ids: three blocks per image
        ids = data.view(pixels, channels)[:, 3]
        ids.copy_((1 << (torch.arange(pixels) // 400 % 3)).to(torch.uint8))
    augment = DeviceAugment(purpose="pretrain", img_size=IMG, channels=channels, patch_size=PATCH, max_objects=3,
                            train=True, generator=torch.Generator().manual_seed(seed))
    host = {"data": data, "starts": starts, "sizes": sizes}
    return [augment(host) for _ in range(steps)]


def pretrain_syncs(selection: str, padding: str) -> float:
    from objmae_ray.config import MaskingConfig, PretrainConfig
    from objmae_ray.method.model import create_objmae
    from objmae_ray.train.optim import build_optimizer
    from objmae_ray.train.pretrain import pretrain_epoch

    torch.manual_seed(0)
    model = create_objmae("micro", img_size=IMG, patch_size=PATCH)
    optimizer = build_optimizer(model, PretrainConfig(), global_batch=BATCH)  # lookahead_adamw, as a trial
    masking = MaskingConfig(alpha=0.25, selection=selection, padding=padding, min_ratio=0.01)

    def epoch(steps: int) -> int:
        batches = packed_batches(steps, objects=selection != "mae")

        with count_host_syncs() as counts:
            pretrain_epoch(model, batches, optimizer, SimpleNamespace(step_update=lambda i: None), epoch=0,
                           first_update=0, num_patches=model.num_patches, masking=masking,
                           generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
        return sum(counts.values()), counts

    return _per_step(epoch)


def augment_syncs() -> float:
    """The on-device augmentation of one packed pre-training batch (objects)."""
    def epoch(steps: int):
        with count_host_syncs() as counts:
            packed_batches(steps, objects=True)
        return sum(counts.values()), counts
    return _per_step(epoch)


def classifier_syncs(mode: str) -> float:
    from objmae_ray.config import ModelConfig, TransferConfig
    from objmae_ray.train.finetune import ClassificationLoss, build_classifier, train_classifier_epoch, trainable_module
    from objmae_ray.train.optim import build_optimizer

    torch.manual_seed(0)
    transfer = TransferConfig(mode=mode, epochs=1, warmup_epochs=0, batch_size=BATCH, lr=1e-3)
    model = build_classifier(ModelConfig(preset="micro", img_size=IMG, patch_size=PATCH), transfer, num_classes=5,
                             encoder_state=None)
    optimizer = build_optimizer(trainable_module(model, mode), transfer, global_batch=BATCH,
                                layer_decay=transfer.layer_decay if mode == "finetune" else None)

    def epoch(steps: int):
        batches = [(torch.randn(BATCH, 3, IMG, IMG), torch.randint(0, 5, (BATCH,))) for _ in range(steps)]
        with count_host_syncs() as counts:
            train_classifier_epoch(model, batches, optimizer, SimpleNamespace(step_update=lambda i: None),
                                   phase=mode, epoch=0, first_update=0, device=torch.device("cpu"),
                                   loss_fn=ClassificationLoss(transfer, 5))
        return sum(counts.values()), counts

    return _per_step(epoch)


def _per_step(epoch) -> dict:
    one, one_where = epoch(1)
    three, three_where = epoch(3)
    where = {k: (three_where[k] - one_where.get(k, 0)) / 2 for k in three_where if three_where[k] != one_where.get(k, 0)}
    return {"per_step": (three - one) / 2, "where": where}


def main() -> dict:
    cases = {"augment_packed": augment_syncs(), "pretrain_mae": pretrain_syncs("mae", "zero")}
    for padding in ("throwout", "zero", "replicate", "random"):
        cases[f"pretrain_object_{padding}"] = pretrain_syncs("object", padding)
    cases["finetune"] = classifier_syncs("finetune")
    cases["linear"] = classifier_syncs("linear")
    return cases


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
