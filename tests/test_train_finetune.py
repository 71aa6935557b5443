"""Transfer phase (train/finetune.py): top-1 / top-5 / val loss on logits with a known answer (ties, 7
classes, uneven batches, two DDP workers), the fine-tune and linear-probe classifiers, one training epoch."""
from __future__ import annotations

import math
import os
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from objmae_ray.config import ModelConfig, TransferConfig
from objmae_ray.method.model import create_objmae
from objmae_ray.train import finetune, pretrain
from objmae_ray.train.finetune import (ClassificationLoss, build_classifier, evaluate, train_classifier_epoch,
                                       trainable_module)
from objmae_ray.train.pretrain import NonFiniteLossError

CPU = torch.device("cpu")

# 7 classes, so top-5 is not trivially 100. (logits, label, in top-1, in top-5); every answer holds for
# any order torch.topk gives tied logits, because no tie straddles the label's rank.
CASES = [
    ([7, 6, 5, 4, 3, 2, 1], 0, True, True),      # label is the strict maximum
    ([1, 9, 8, 4, 3, 2, 0], 3, False, True),     # two classes strictly above the label
    ([6, 5, 4, 3, 2, 1, 0], 5, False, False),    # five classes above: rank 6
    ([5, 5, 4, 0, 0, 0, 0], 2, False, True),     # two tied wrong classes above: rank 3 either way
    ([9, 8, 7, 6, 5, 4, 3], 4, False, True),     # exactly 5th: the top-5 boundary
    ([0, 0, 0, 0, 0, 0, 3], 6, True, True),      # unique maximum, all others tied below
    ([2, 2, 2, 2, 1, 0, 0], 4, False, True),     # four tied above: rank 5 whatever their order
    ([2, 2, 2, 2, 2, 1, 0], 5, False, False),    # five tied above: rank 6 whatever their order
]


def logsumexp_ce(logits: list[float], label: int) -> float:
    """Cross-entropy by hand: log(sum_j exp(z_j)) - z_label."""
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


def batches_of(rows: list[tuple[list[float], int]], sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, start = [], 0
    for size in sizes:
        chunk = rows[start:start + size]
        out.append((torch.tensor([r[0] for r in chunk], dtype=torch.float32), torch.tensor([r[1] for r in chunk])))
        start += size
    assert start == len(rows)
    return out


class Moved:
    """A batch tensor that records how it is moved: the worker must ask for its device, without blocking."""

    def __init__(self, tensor: torch.Tensor, moves: list):
        self.tensor, self.moves = tensor, moves

    def to(self, device, non_blocking=False):
        self.moves.append((device, non_blocking))
        return self.tensor


def recorded(batches, moves: list) -> list:
    return [(Moved(x, moves), Moved(y, moves)) for x, y in batches]


@pytest.fixture
def reduce_devices(monkeypatch) -> list:
    """Devices the sums over workers are made on (NCCL needs the worker's device, not the CPU default)."""
    devices = []

    def all_reduce_sums(*values, device):
        devices.append(device)
        return real(*values, device=device)

    real = finetune.all_reduce_sums
    monkeypatch.setattr(finetune, "all_reduce_sums", all_reduce_sums)  # evaluate
    monkeypatch.setattr(pretrain, "all_reduce_sums", all_reduce_sums)  # EpochLoss.reduce (training epochs)
    return devices


class LogitsModel(nn.Module):
    """The 'images' are the logits. Like Dropout / BatchNorm its output depends on the mode (train mode
    shifts every row by one class, which changes every answer above), and it records how it was called."""

    def __init__(self):
        super().__init__()
        self.calls = []  # (training, grad enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x.roll(1, dims=1) if self.training else x


def test_top1_top5_and_loss_on_known_logits_with_ties_and_uneven_batches(reduce_devices):
    rows = [(logits, label) for logits, label, _, _ in CASES]
    # plus 7 identical constant rows, one per label: whichever class topk puts first, exactly one row
    # is right at top-1 and five at top-5 (a collapsed model scores chance, never 100%)
    rows += [([0.0] * 7, label) for label in range(7)]
    top1 = sum(c[2] for c in CASES) + 1
    top5 = sum(c[3] for c in CASES) + 5
    assert (top1, top5, len(rows)) == (3, 11, 15)
    loss = sum(logsumexp_ce([float(z) for z in logits], label) for logits, label in rows) / len(rows)

    model = LogitsModel().train()  # evaluate must switch it to eval mode
    moves = []
    scores = evaluate(model, recorded(batches_of(rows, [4, 1, 3, 7]), moves), device=CPU)
    assert moves == [(CPU, True)] * 8 and reduce_devices == [CPU]
    # per image over the split, not the mean of per-batch percentages (which would be 41.96 here)
    assert scores["top1"] == pytest.approx(100 * 3 / 15, abs=1e-9)
    assert scores["top5"] == pytest.approx(100 * 11 / 15, abs=1e-9)
    assert scores["val_loss"] == pytest.approx(loss, rel=1e-6)
    assert scores["val_images"] == 15
    assert model.calls == [(False, False)] * 4  # eval mode, no autograd, one forward per batch


def test_every_case_alone():
    """Each case in a batch of its own: 100 or 0 per metric, exactly as the table says."""
    for logits, label, in_top1, in_top5 in CASES:
        scores = evaluate(LogitsModel(), batches_of([(logits, label)], [1]), device=CPU)
        assert (scores["top1"], scores["top5"]) == (100.0 * in_top1, 100.0 * in_top5), (logits, label)


def test_fewer_than_five_classes_and_empty_split():
    rows = [([3.0, 2.0, 1.0], 2), ([3.0, 2.0, 1.0], 0), ([0.0, 1.0, 2.0], 0)]
    scores = evaluate(LogitsModel(), batches_of(rows, [2, 1]), device=CPU)
    assert scores["top1"] == pytest.approx(100 / 3) and scores["top5"] == 100.0  # 3 classes: top-5 is all
    empty = evaluate(LogitsModel(), [], device=CPU)  # no division by zero
    assert empty == {"top1": 0.0, "top5": 0.0, "val_loss": 0.0, "val_images": 0}


def test_large_batches_count_exactly():
    """Counts come from timm's batch percentages: exact for batches of any size (60 correct of 60, 59 of 61)."""
    right = [([0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0], 1)] * 60
    wrong = [([0.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0], 6)] * 2
    scores = evaluate(LogitsModel(), batches_of(right, [60]) + batches_of(right[:59] + wrong, [61]), device=CPU)
    assert scores["val_images"] == 121
    assert scores["top1"] == pytest.approx(100 * 119 / 121) and scores["top5"] == pytest.approx(100 * 119 / 121)


# ---- two DDP workers: counts add up over the workers' shares; rank 0's BatchNorm statistics are used ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, rows: list, shares: list, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        linear = nn.Linear(7, 7)
        with torch.no_grad():
            linear.weight.copy_(torch.eye(7))
            linear.bias.zero_()
        norm = nn.BatchNorm1d(7, affine=False)
        norm.running_var.fill_(4.0)  # rank 0: x / 2, every row's ranking kept
        model = nn.parallel.DistributedDataParallel(nn.Sequential(linear, norm))
        if rank == 1:  # statistics that drifted on rank 1 after DDP's start-up sync: would reverse the rankings
            norm.running_var.fill_(1.0)
            norm.running_mean.copy_(torch.arange(7.0) * 100)
        start, sizes = shares[rank]
        mine = rows[start:start + sum(sizes)]
        scores = evaluate(model, batches_of(mine, sizes), device=CPU)  # rank 1 has one batch fewer
        torch.save(scores, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_workers_sum_counts_and_use_rank0_buffers(tmp_path):
    rows = [(logits, label) for logits, label, _, _ in CASES]
    shares = [(0, [2, 3]), (5, [3])]  # rank 0: rows 0-4 in two batches, rank 1: rows 5-7 in one
    context = mp.start_processes(_ddp_worker, args=(_free_port(), rows, shares, str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    for process in context.processes:
        process.join(90)
        if process.is_alive():  # a collective that never completes
            process.kill()
    assert all(p.exitcode == 0 for p in context.processes), [p.exitcode for p in context.processes]
    # x / 2 with rank 0's (mean 0, var 4) statistics (up to eps): rankings of the table hold
    loss = sum(logsumexp_ce([z / math.sqrt(4 + 1e-5) for z in logits], label) for logits, label in rows) / len(rows)
    # one process over the whole split gives the same (and runs evaluate here too, where mutmut sees it)
    alone = evaluate(LogitsModel(), batches_of([([z / math.sqrt(4 + 1e-5) for z in x], y) for x, y in rows], [8]),
                     device=CPU)
    for rank in (0, 1):  # both workers return the totals of the whole split
        scores = torch.load(tmp_path / f"rank{rank}.pt")
        assert scores == pytest.approx(alone, rel=1e-6)
        assert scores["val_images"] == 8
        assert scores["top1"] == pytest.approx(100 * sum(c[2] for c in CASES) / 8)
        assert scores["top5"] == pytest.approx(100 * sum(c[3] for c in CASES) / 8)
        assert scores["val_loss"] == pytest.approx(loss, rel=1e-5)


# ---- the classifiers ---------------------------------------------------------------------------------

MODEL = ModelConfig(preset="micro", img_size=32, patch_size=8)


def _encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_objmae("micro", img_size=32, patch_size=8).encoder_state_dict()


def test_finetune_classifier_avg_pool_drop_path_all_trainable():
    state = _encoder_state()
    model = build_classifier(MODEL, TransferConfig(mode="finetune"), num_classes=5, encoder_state=state)
    assert model.global_pool == "avg" and isinstance(model.fc_norm, nn.LayerNorm)
    assert model.head.out_features == 5
    # timm spreads drop path linearly over depth: 0 at the first block, the recipe's default 0.1 at the last
    assert TransferConfig().drop_path == 0.1
    assert isinstance(model.blocks[0].drop_path1, nn.Identity)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    assert trainable_module(model, "finetune") is model
    wrapped = SimpleNamespace(module=model)  # what DDP looks like to trainable_module
    assert trainable_module(wrapped, "finetune") is model


def test_linear_probe_head_is_batchnorm_then_small_linear_and_encoder_frozen():
    state = _encoder_state()
    torch.manual_seed(1)
    model = build_classifier(MODEL, TransferConfig(mode="linear"), num_classes=100, encoder_state=state)
    assert model.global_pool == "token"
    norm, linear = model.head
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine and norm.eps == 1e-6
    assert norm.num_features == 64 and linear.in_features == 64 and linear.out_features == 100
    assert torch.count_nonzero(linear.bias) == 0
    assert 0.008 < linear.weight.std().item() < 0.012  # N(0, 0.01) over 6,400 weights
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.1.weight", "head.1.bias"}
    assert torch.equal(model.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])
    assert trainable_module(model, "linear") is model.head
    assert trainable_module(SimpleNamespace(module=model), "linear") is model.head


# ---- one training epoch ------------------------------------------------------------------------------

def _epoch(model, batches, lr: float, moves: list | None = None):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    updates, steps = [], []
    scheduler = SimpleNamespace(step_update=updates.append)  # records the per-update schedule calls
    stats = train_classifier_epoch(model, recorded(batches, [] if moves is None else moves), optimizer, scheduler,
                                   phase="finetune", epoch=3, first_update=12, device=CPU,
                                   on_step=lambda e, s: steps.append((e, s)))
    return stats, updates, steps


def test_train_epoch_loss_is_the_per_image_mean_and_steps_follow_the_schedule(reduce_devices):
    rows = [(logits, label) for logits, label, _, _ in CASES[:4]]
    batches = batches_of(rows, [3, 1])
    model = nn.Linear(7, 7)
    with torch.no_grad():
        model.weight.copy_(torch.eye(7))
        model.bias.zero_()
    moves = []
    start = time.perf_counter()
    stats, updates, steps = _epoch(model, batches, lr=0.0, moves=moves)  # lr 0: the model stays the identity
    took = time.perf_counter() - start
    expected = sum(logsumexp_ce([float(z) for z in logits], label) for logits, label in rows) / 4
    assert stats.loss == pytest.approx(expected, rel=1e-6)  # per image (the per-batch mean would differ)
    assert (stats.images, stats.steps) == (4, 2) and 0 < stats.seconds <= took
    assert updates == [12, 13] and steps == [(3, 0), (3, 1)]
    assert moves == [(CPU, True)] * 4 and reduce_devices == [CPU]
    one, _, _ = _epoch(model, batches[1:], lr=0.0)  # a single image: its own loss
    assert one.loss == pytest.approx(logsumexp_ce([float(z) for z in rows[3][0]], rows[3][1]), rel=1e-6)


def test_non_finite_loss_names_phase_epoch_and_step():
    batches = batches_of([(CASES[0][0], 0), (CASES[1][0], 3)], [1, 1])
    batches[1][0][0, 2] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"^finetune: loss is nan at epoch 3 step 1; stopping the trial"):
        _epoch(nn.Linear(7, 7), batches, lr=0.0)


def test_train_epoch_takes_one_sgd_step_per_batch_from_fresh_gradients():
    batches = batches_of([(logits, label) for logits, label, _, _ in CASES[:5]], [2, 3])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.0), nn.Linear(7, 7)).eval()  # eval mode on entry: must be switched
    reference = nn.Linear(7, 7)
    reference.load_state_dict(model[1].state_dict())
    _epoch(model, batches, lr=0.5)
    assert model.training
    for x, y in batches:  # plain SGD by hand: gradient of the batch's mean cross-entropy, then a step
        reference.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.5 * p.grad
    torch.testing.assert_close(model[1].weight, reference.weight)
    torch.testing.assert_close(model[1].bias, reference.bias)


# ClassificationLoss: expected values from the definitions (timm's Mixup in "batch" mode pairs image i
# with image B-1-i, x_i <- lam x_i + (1 - lam) x_(B-1-i), target lam y_i + (1 - lam) y_(B-1-i); label
# smoothing s over C classes puts 1 - s + s / C on the label and s / C elsewhere), not from the code.

def _constant_images(n: int, size: int = 8) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()  # image i is all i


def _smoothed(labels: torch.Tensor, s: float, C: int) -> torch.Tensor:
    return F.one_hot(labels, C).float() * (1 - s) + s / C


def test_no_mixing_is_cross_entropy_with_the_phases_label_smoothing():
    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]), torch.tensor([0, 1])
    logp = torch.log_softmax(logits, 1)
    nll, uniform = -logp[[0, 1], labels], -logp.mean(1)
    imgs = _constant_images(3)
    for transfer, s in [(None, 0.0), (TransferConfig(), 0.0), (TransferConfig(label_smoothing=0.2), 0.2)]:
        loss = ClassificationLoss(transfer, num_classes=3)
        assert loss.mix(imgs, labels) == (imgs, labels)  # nothing mixed, hard labels kept (odd batch too)
        assert loss(logits, labels).item() == pytest.approx(((1 - s) * nll + s * uniform).mean().item(), rel=1e-6)


@pytest.mark.parametrize("s", [0.0, 0.1])
def test_mixup_pairs_reversed_images_and_mixes_smoothed_targets(s):
    np.random.seed(0)  # timm draws lam with numpy
    C, labels = 10, torch.tensor([0, 1, 2, 3, 4, 5, 6])
    loss = ClassificationLoss(TransferConfig(mixup=0.8, label_smoothing=s), num_classes=C)
    imgs, targets = loss.mix(_constant_images(7), labels)  # odd batch: the last image is left out
    assert imgs.shape == (6, 3, 8, 8) and targets.shape == (6, C)
    lam = 1 - imgs[0, 0, 0, 0].item() / 5  # image 0 (all 0) mixed with image 5 (all 5)
    assert 0 < lam < 1
    i = torch.arange(6.0).view(6, 1, 1, 1)
    assert torch.allclose(imgs, (lam * i + (1 - lam) * (5 - i)).expand_as(imgs), atol=1e-5)
    expected = lam * _smoothed(labels[:6], s, C) + (1 - lam) * _smoothed(labels[:6].flip(0), s, C)
    assert torch.allclose(targets, expected, atol=1e-6)
    logits = torch.randn(6, C, generator=torch.Generator().manual_seed(0))
    soft_ce = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
    assert loss(logits, targets).item() == pytest.approx(soft_ce.item(), rel=1e-6)


def test_cutmix_alone_pastes_a_box_and_weights_targets_by_its_area():
    C, labels = 4, torch.tensor([0, 1, 2, 3])
    loss = ClassificationLoss(TransferConfig(cutmix=1.0), num_classes=C)
    for seed in range(8):
        np.random.seed(seed)
        imgs, targets = loss.mix(_constant_images(4), labels)
        for i in range(4):  # every pixel comes whole from image i or image 3 - i (no blending)
            own = (imgs[i] == i).float().mean().item()
            assert own + (imgs[i] == 3 - i).float().mean().item() == 1.0
            assert targets[i].tolist() == pytest.approx(
                (own * F.one_hot(labels[i], C) + (1 - own) * F.one_hot(labels[3 - i], C)).tolist(), abs=1e-6)
