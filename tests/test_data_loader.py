"""PackedLoader (data/loader.py): every record once per epoch over the ranks, reproducible batches whatever
the number of gather threads, measured input wait, corrupt records stop the epoch."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from objmae_ray.config import DataConfig
from objmae_ray.data import build_packed_loader
from objmae_ray.data.loader import PackedLoader, PackedView, TimedLoader
from objmae_ray.data.pack import pack_split, source_for
from objmae_ray.data.store import StoreError, open_split

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    cfg = DataConfig(kind="synthetic", root=str(root), num_images=20)
    for split in ("train", "val"):
        pack_split(source_for(cfg, split, img_size=32), root / "store", shard_size=7, executor="serial", progress=False)
    return DataConfig(kind="synthetic", root=str(root), num_images=20, store=str(root / "store"))


def loader_for(cfg: DataConfig, split="train", *, batch=4, rank=0, world=1, workers=0, seed=0) -> PackedLoader:
    loader = build_packed_loader(cfg.model_copy(update={"loader_workers": workers}), purpose="pretrain", split=split,
                                 img_size=32, patch_size=8, batch_size=batch, device=torch.device("cpu"), rank=rank,
                                 world_size=world, min_ratio=0.0)
    loader.generator.manual_seed(seed)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(seed)
    return loader


def test_training_batches_cover_each_rank_share_and_evaluation_every_record_once(store):
    ranks = [loader_for(store, rank=r, world=2) for r in range(2)]
    shares = [list(r.sampler) for r in ranks]
    assert sorted(shares[0] + shares[1]) == list(range(20)) and len(ranks[0]) == 2  # 10 per rank -> 2 batches of 4
    for loader, share in zip(ranks, shares):
        seen = []
        loader.view.gather = (lambda gather: lambda positions, buffer: seen.extend(positions.tolist())
                              or gather(positions, buffer))(loader.view.gather)
        assert len(list(loader)) == 2 and seen == share[:8]  # in sampler order, the last partial batch dropped
    evaluation = [loader_for(store, "val", rank=r, world=2, batch=2) for r in range(2)]
    assert sorted(evaluation[0].sampler + evaluation[1].sampler) == list(range(5))  # 5 val images, no padding
    assert [len(e) for e in evaluation] == [2, 1]
    assert sum(b["image"].shape[0] for e in evaluation for b in e) == 5


def test_batches_do_not_depend_on_gather_threads_and_repeat_with_the_seed(store):
    def epoch(workers, seed):
        return [{k: v.clone() for k, v in b.items()} for b in loader_for(store, workers=workers, seed=seed)]

    base = epoch(0, 1)
    for other in (epoch(3, 1), epoch(1, 1)):
        assert len(other) == len(base) == 5
        for a, b in zip(base, other):
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(epoch(0, 2)[0]["image"], base[0]["image"])  # another epoch seed, other order and crops


def test_input_wait_is_measured(store):
    loader = loader_for(store, workers=0)
    gather = loader.view.gather
    loader.view.gather = lambda positions, buffer: time.sleep(0.05) or gather(positions, buffer)
    start = time.perf_counter()
    batches = len(list(loader))
    total = time.perf_counter() - start
    assert batches == 5 and 0.25 <= loader.wait_s <= total and loader.gather_s >= 0.25
    timed = TimedLoader([1, 2, 3])
    assert list(timed) == [1, 2, 3] and len(timed) == 3 and timed.wait_s >= 0


def test_a_corrupt_record_stops_the_epoch_naming_the_shard(tmp_path):
    cfg = DataConfig(kind="synthetic", root=str(tmp_path), num_images=8)
    pack_split(source_for(cfg, "train", img_size=32), tmp_path / "store", shard_size=4, executor="serial",
               progress=False)
    shard = tmp_path / "store" / "train" / "shard-00001" / "data.bin"
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 1
    shard.write_bytes(bytes(blob))
    split = open_split(tmp_path / "store", "train")
    loader = PackedLoader(PackedView(split, np.arange(8)), 4, augment=lambda b: b, device=torch.device("cpu"),
                          workers=2)
    with pytest.raises(StoreError, match=rf"{shard}: record 3 at offset \d+ is corrupt"):
        list(loader)
