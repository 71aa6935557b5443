"""No host sync inside a training step (bench/host_syncs.py counts them on the CPU), and throwout at a fixed
length (Masks.keep, the train step's form) gives exactly the cut sequences' masks, outputs and loss."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from objmae_ray.method.masking import sample_masks
from objmae_ray.method.model import create_objmae

PATH = Path(__file__).resolve().parents[1] / "bench" / "host_syncs.py"
_spec = importlib.util.spec_from_file_location("bench_host_syncs", PATH)
host_syncs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_syncs)


def test_no_step_reads_a_value_on_the_host():
    """Pre-training (mae; object with every padding, throwout included), the packed augmentation, fine-tuning
    and linear probing: zero host syncs per step (main before issue 21: 1 per step, 2 with throwout, 2 in
    the augmentation)."""
    cases = host_syncs.main()
    assert set(cases) == {"augment_packed", "pretrain_mae", "pretrain_object_throwout", "pretrain_object_zero",
                          "pretrain_object_replicate", "pretrain_object_random", "finetune", "linear"}
    assert {name: case["per_step"] for name, case in cases.items()} == {name: 0.0 for name in cases}


def test_the_counter_sees_each_kind_of_sync():
    """What the test above relies on: every kind of sync is counted, once per call, from project code only."""
    x = torch.ones(3)

    def step():
        x.sum().item()
        bool(x.sum() > 0)
        int(x.sum())
        x.tolist()
        x[x > 0]  # data-dependent shape
        torch.tensor([1.0, 2.0], device="cpu")  # a host-to-device copy on a GPU
        torch.as_tensor(x, device="cpu")  # a tensor argument is not host data: not counted

    with host_syncs.count_host_syncs() as counts:
        for _ in range(2):
            step()
    assert sum(counts.values()) == 12
    assert counts["test_train_syncs.py:item"] == 2 and counts["test_train_syncs.py:torch.tensor(device=)"] == 2
    x.sum().item()  # after the block: nothing is patched any more
    assert sum(counts.values()) == 12


def two_object_batch(grid: int = 8):
    """Three images with one object each of 6, 10 and 21 patches: throwout cuts L from 16 to 3."""
    n = grid * grid
    patches = torch.zeros(3, 1, n, dtype=torch.bool)
    for b, count in enumerate((6, 10, 21)):
        patches[b, 0, 5:5 + count] = True
    return patches, torch.full((3, 1), 0.3)


@pytest.mark.parametrize("selection", ["object", "mae"])
def test_throwout_at_fixed_length_equals_the_cut_sequences(selection):
    patches, ratio = two_object_batch()
    kwargs = dict(batch_size=3, num_patches=64, alpha=0.25, selection=selection, padding="throwout",
                  object_patches=patches, object_ratio=ratio)
    cut = sample_masks(**kwargs, generator=torch.Generator().manual_seed(5))
    fixed = sample_masks(**kwargs, generator=torch.Generator().manual_seed(5), fixed_length=True)
    length = cut.src_idx.shape[1]
    assert fixed.src_idx.shape == (3, 16) and (length == 3 if selection == "object" else length == 16)
    assert torch.equal(fixed.keep, torch.arange(16).expand(3, 16) < length)
    assert torch.equal(fixed.src_idx[:, :length], cut.src_idx) and torch.equal(fixed.tgt_idx[:, :length], cut.tgt_idx)
    assert torch.allclose(fixed.alpha_sums(64), cut.alpha_sums(64))

    torch.manual_seed(0)
    model = create_objmae("micro", img_size=64, patch_size=8)
    imgs = torch.randn(3, 3, 64, 64)
    loss_cut, pred_cut = model(imgs, cut.src_idx, cut.tgt_idx, cut.src_valid, cut.tgt_valid)
    loss_fixed, pred_fixed = model(imgs, fixed.src_idx, fixed.tgt_idx, fixed.src_valid, fixed.tgt_valid, fixed.keep)
    assert torch.allclose(pred_fixed[:, :length], pred_cut, atol=1e-5)
    assert loss_fixed.item() == pytest.approx(loss_cut.item(), rel=1e-5)
    loss_cut.backward()
    grads_cut = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    loss_fixed.backward()
    grads_fixed = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_cut, grads_fixed))
