"""Per-sample seeding of a map-style dataset, so that its random augmentations depend only on
(epoch seed, sample index): the same with 0 or N loader workers, persistent or not, and the same in a
run resumed at epoch k as in a clean run (a persistent worker would otherwise carry its RNG from one
epoch to the next, so a resumed run, whose workers start fresh, would augment differently).

The epoch seed lives in a shared-memory tensor that the training loop sets before each epoch's
iteration starts (`set_epoch_seed`); persistent loader workers read it at every sample. Each sample
reseeds torch, `random` and numpy from (epoch seed, index) before the wrapped `__getitem__` runs; in the
main process (no loader workers) the global RNG states are restored afterwards, so the training step's
own randomness (drop path) is untouched.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden ratio: spreads (epoch seed, index) over the seed space


def sample_seed(epoch_seed: int, index: int) -> int:
    """The seed of sample `index` in the epoch seeded `epoch_seed` (a 63-bit int)."""
    return (epoch_seed * _MIX + index) % 2**63


class EpochSeeded(Dataset):
    """`dataset` whose item `index` is drawn with every RNG seeded by sample_seed(epoch seed, index)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.epoch_seed = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch_seed(self, seed: int) -> None:
        """Before an epoch's iteration starts (loader workers read it at each sample)."""
        self.epoch_seed.fill_(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # the wrapped dataset's attributes (classes, num_classes, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        seed = sample_seed(int(self.epoch_seed), int(index))
        if get_worker_info() is not None:  # a loader worker: its RNG serves only the samples
            _seed_all(seed)
            return self.dataset[index]
        states = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                _seed_all(seed)
                return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
