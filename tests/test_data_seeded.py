"""data/seeded.py: per-sample seeding makes a JPEG loader's augmentations a function of (epoch seed, index)
only, so persistent loader workers, any number of them, and a run resumed mid-way all draw the same."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from objmae_ray.data.seeded import EpochSeeded, sample_seed


class Draws(Dataset):
    """Item i: a draw from each global RNG the transforms use (torch, random, numpy), and i itself."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([torch.rand(()).item(), random.random(), float(np.random.rand()), index],
                            dtype=torch.float64)


def epochs(workers: int, persistent: bool, seeds: list[int]) -> list[torch.Tensor]:
    """The items of each epoch, in index order (shuffle off: the order is the sampler's business)."""
    data = EpochSeeded(Draws())
    loader = DataLoader(data, batch_size=4, num_workers=workers, persistent_workers=persistent)
    out = []
    for seed in seeds:
        data.set_epoch_seed(seed)
        out.append(torch.cat(list(loader)))
    return out


def test_draws_depend_on_epoch_seed_and_index_only():
    seeds = [11, 12, 13]
    in_process = epochs(0, False, seeds)
    persistent = epochs(2, True, seeds)
    resumed = epochs(2, True, seeds[1:])  # a run resumed at the second epoch: fresh workers
    for a, b in zip(in_process, persistent):
        assert torch.equal(a, b)
    for a, b in zip(in_process[1:], resumed):
        assert torch.equal(a, b)
    assert not torch.equal(in_process[0][:, :3], in_process[1][:, :3])  # a new epoch draws anew
    assert len({tuple(row[:3].tolist()) for row in in_process[0]}) == 12  # and every sample differently
    torch.manual_seed(sample_seed(11, 5))
    assert in_process[0][5, 0].item() == torch.rand(()).item()  # item 5 of the epoch seeded 11


def test_main_process_rng_is_left_as_it_was():
    """Without loader workers the samples are drawn in the training process: its RNG (drop path, mixup)
    continues as if no sample had been drawn."""
    data = EpochSeeded(Draws())
    data.set_epoch_seed(3)
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = (torch.rand(()).item(), random.random(), float(np.random.rand()))
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    data[4]
    assert (torch.rand(()).item(), random.random(), float(np.random.rand())) == expected
    assert data.dataset.__class__ is Draws and len(data) == 12
