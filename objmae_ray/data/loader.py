"""Batches from a packed store onto the training device, and the input-wait clock of every loader.

The host side only slices: for each batch, a gather thread copies the batch's records out of the
memory-mapped shards, back to back, into a reusable (on CUDA: pinned) buffer (one contiguous copy per
record, no padding); the batch is copied to the device on a side stream, and objmae_ray/data/augment.py's
DeviceAugment turns it into model inputs there. `loader_workers` gather threads run ahead by as many
batches (numpy releases the GIL while copying).

`PackedLoader` follows the DataLoader contract the train loop relies on: `len()` batches per epoch,
`sampler` (a DistributedSampler over the rank's share, re-seeded by the loop each epoch), `generator`
(the augmentation's, on the device), and `wait_s`: seconds the last pass spent blocked on input.
`TimedLoader` adds the same `wait_s` to any other loader (the JPEG path).
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from objmae_ray.data.augment import DeviceAugment
from objmae_ray.data.store import PackedSplit


class PackedView:
    """The records of a split a phase uses (`records`: record numbers), gathered into padded batches."""

    def __init__(self, split: PackedSplit, records: np.ndarray):
        self.split, self.records = split, np.asarray(records, dtype=np.int64)
        self.heights = split.index["height"][self.records].astype(np.int64)
        self.widths = split.index["width"][self.records].astype(np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def batch_bytes(self, positions) -> int:
        """Bytes of the records at these positions."""
        return int((self.heights[positions] * self.widths[positions]).sum()) * self.split.channels

    def gather(self, positions: np.ndarray, buffer: np.ndarray) -> dict[str, np.ndarray]:
        """Copy the records at `positions` back to back into `buffer` (flat uint8, >= batch_bytes) -> numpy
        batch: data uint8 [batch_bytes] (a view of buffer), starts int64 [B] (first pixel row of each record
        in data.reshape(-1, C)), sizes int32 [B, 2], labels int64 [B], cams float16 [B, h, w] (CAM stores)."""
        records = self.records[positions]
        pixels = self.heights[positions] * self.widths[positions]
        starts = np.concatenate([[0], np.cumsum(pixels)[:-1]]).astype(np.int64)
        C = self.split.channels
        data = buffer[:int(pixels.sum()) * C]
        for start, count, record in zip(starts, pixels, records):
            data[start * C:(start + count) * C] = self.split.record(int(record)).reshape(-1)
        index = self.split.index[records]
        batch = {"data": data, "starts": starts,
                 "sizes": np.stack([index["height"], index["width"]], 1).astype(np.int32),
                 "labels": index["label"].astype(np.int64)}
        if self.split.cams is not None:
            batch["cams"] = self.split.cams[records]
        return batch


class PackedLoader:
    """Iterate a PackedView in batches of `batch_size`, yielding `augment(device batch)` (see module docstring).

    Training: a DistributedSampler over `world_size` ranks (shuffled; the loop sets its seed and epoch),
    `drop_last` batches. Evaluation (`shuffle=False`): this rank's disjoint share, every image once.
    """

    def __init__(self, view: PackedView, batch_size: int, *, augment: DeviceAugment, device: torch.device,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, drop_last: bool = True, workers: int = 2):
        self.view, self.batch_size, self.augment, self.device = view, batch_size, augment, torch.device(device)
        self.drop_last, self.workers = drop_last, workers
        if shuffle:
            self.sampler = DistributedSampler(view, num_replicas=world_size, rank=rank, shuffle=True)
        else:
            self.sampler = list(range(rank, len(view), world_size))
        self.generator = getattr(augment, "generator", None)
        self.wait_s = 0.0  # last pass: seconds blocked waiting for a host batch
        self.gather_s = 0.0  # last pass: seconds the gather threads spent copying
        self.cuda = self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._slots: list[torch.Tensor | None] = []
        self._events: list = []

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[np.ndarray]:
        order = np.fromiter(iter(self.sampler), dtype=np.int64, count=len(self.sampler))
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]

    def _fetch(self, slot: int, positions: np.ndarray) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        if self.cuda:
            self._events[slot].synchronize()  # the previous copy out of this slot has finished
        needed = self.view.batch_bytes(positions)
        if self._slots[slot] is None or self._slots[slot].numel() < needed:
            self._slots[slot] = torch.empty(int(needed * 1.1), dtype=torch.uint8, pin_memory=self.cuda)
        batch = self.view.gather(positions, self._slots[slot].numpy())
        self.gather_s += time.perf_counter() - start
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def _to_device(self, host: dict[str, torch.Tensor], slot: int):
        """(device batch, event the compute stream must wait for or None)."""
        if not self.cuda:
            return {k: v.to(self.device) for k, v in host.items()}, None
        with torch.cuda.stream(self._copy_stream):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
            self._events[slot].record(self._copy_stream)
        return batch, self._events[slot]

    def _prepare(self, batch: dict, event):
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for tensor in batch.values():
                tensor.record_stream(stream)
        return self.augment(batch)

    def __iter__(self):
        batches = self._batches()
        self.wait_s = self.gather_s = 0.0
        ahead = max(1, self.workers)
        slots = ahead + 2  # being gathered, copied to the device, consumed
        if len(self._slots) != slots:
            self._slots = [None] * slots
            self._events = [torch.cuda.Event() for _ in range(slots)] if self.cuda else []
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="objmae-gather") if self.workers else None
        pending: deque = deque()

        def submit(k: int) -> None:
            if k < len(batches):
                slot = k % slots
                pending.append(pool.submit(self._fetch, slot, batches[k]) if pool else (slot, batches[k]))

        def take(k: int):
            start = time.perf_counter()
            item = pending.popleft()
            host = item.result() if pool else self._fetch(*item)
            self.wait_s += time.perf_counter() - start
            return self._to_device(host, k % slots)

        try:
            for k in range(ahead):
                submit(k)
            current = take(0) if batches else None
            for k in range(len(batches)):
                out = self._prepare(*current)
                submit(k + ahead)
                current = take(k + 1) if k + 1 < len(batches) else None
                yield out
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class TimedLoader:
    """Any iterable loader plus `wait_s`: seconds its last pass spent in `next()` (the JPEG path's input wait)."""

    def __init__(self, loader):
        self.loader = loader
        self.sampler = getattr(loader, "sampler", None)
        self.wait_s = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.wait_s = 0.0
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - start
            yield batch
