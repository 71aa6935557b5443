"""The device path of the packed pipeline and the trial (marked `cuda`; bench/gpu_check.sh runs them on a GPU).

They run on OBJMAE_TEST_DEVICE (default: cuda when available, else cpu), so the CPU suite keeps them from
rotting: device-side augmentation equals the CPU's on the same boxes, the loader's pinned-memory copies on a
side stream deliver the CPU's bytes, masks on the device are reproducible, and a trial on the device reads
the store, measures its speed-up against the baseline and its input wait (bf16 autocast on CUDA).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from objmae_ray.config import DataConfig, TrialConfig
from objmae_ray.data.augment import DeviceAugment, random_resized_boxes
from objmae_ray.data.loader import PackedLoader, PackedView
from objmae_ray.data.pack import pack_split, source_for
from objmae_ray.data.store import open_split
from objmae_ray.method.masking import sample_masks
from objmae_ray.train.loop import LocalRun, TrialRun
from trial_helpers import tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


@pytest.fixture(scope="module")
def device() -> torch.device:
    name = os.environ.get("OBJMAE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"OBJMAE_TEST_DEVICE={name} but torch sees no CUDA device")
    return torch.device(name)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    cfg = DataConfig(kind="synthetic", root=str(root), num_images=24)
    pack_split(source_for(cfg, "train", img_size=64), root / "store", executor="serial", progress=False)
    return open_split(root / "store", "train")


def host_batch(split, rows) -> dict:
    view = PackedView(split, rows)
    positions = np.arange(len(rows))
    return {k: torch.from_numpy(v) for k, v in view.gather(positions, np.empty(view.batch_bytes(positions), np.uint8)).items()}


def test_augmentation_on_the_device_equals_the_cpu(device, split):
    batch = host_batch(split, np.arange(16))
    boxes = random_resized_boxes(batch["sizes"], scale=(0.2, 1.0), generator=torch.Generator().manual_seed(0))
    flip = torch.arange(16) % 3 == 0
    augment = DeviceAugment(purpose="pretrain", img_size=32, channels=split.channels, patch_size=8, train=True, hflip=True)
    on_cpu = augment(batch, boxes=boxes, flip=flip)
    on_device = augment({k: v.to(device) for k, v in batch.items()}, boxes=boxes.to(device), flip=flip.to(device))
    assert on_device["image"].device.type == device.type
    assert torch.equal(on_device["object_patches"].cpu(), on_cpu["object_patches"])
    assert torch.equal(on_device["object_ratio"].cpu(), on_cpu["object_ratio"])
    assert torch.allclose(on_device["image"].cpu(), on_cpu["image"], atol=1e-4)


@pytest.mark.slow
def test_compiled_augmentation_equals_eager(device, split):
    """OBJMAE_COMPILE_AUGMENT=1 (torch.compile of the crop): the same maps and pixels as eager on the device."""
    batch = {k: v.to(device) for k, v in host_batch(split, np.arange(16)).items()}
    boxes = random_resized_boxes(batch["sizes"], scale=(0.2, 1.0), generator=torch.Generator(device=device).manual_seed(1))
    kwargs = dict(purpose="pretrain", img_size=32, channels=split.channels, patch_size=8, train=True)
    eager, compiled = DeviceAugment(**kwargs)(batch, boxes=boxes), DeviceAugment(**kwargs, compile=True)(batch, boxes=boxes)
    assert torch.equal(compiled["object_patches"], eager["object_patches"])
    assert torch.equal(compiled["object_ratio"], eager["object_ratio"])
    assert torch.allclose(compiled["image"], eager["image"], atol=1e-4)


def test_loader_copies_the_cpu_bytes_to_the_device(device, split):
    def keep(batch):  # the device batch itself, back on the host
        return {k: v.cpu() for k, v in batch.items()}

    loaders = [PackedLoader(PackedView(split, np.arange(24)), 8, augment=keep, device=d, workers=2)
               for d in (torch.device("cpu"), device)]
    for loader in loaders:
        loader.sampler.set_epoch(3)
    for _ in range(2):  # the second pass reuses the (pinned) buffers
        for a, b in zip(*loaders):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_masks_on_the_device_are_reproducible(device, split):
    augment = DeviceAugment(purpose="pretrain", img_size=32, channels=split.channels, patch_size=8, train=False)
    out = augment({k: v.to(device) for k, v in host_batch(split, np.arange(8)).items()})

    def draw(seed):
        g = torch.Generator(device=device).manual_seed(seed)
        return sample_masks(batch_size=8, num_patches=16, alpha=0.25, selection="object", padding="random",
                            object_patches=out["object_patches"], object_ratio=out["object_ratio"], generator=g,
                            device=device)

    a, b = draw(5), draw(5)
    assert a.src_idx.device.type == device.type
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("src_idx", "tgt_idx", "src_valid", "tgt_valid"))


def test_trial_on_the_device_reads_the_store_and_measures(device, tmp_path):
    body = tiny_config(str(tmp_path / "cache")).model_dump()
    for phase in [body["pretrain"], *body["transfer"]]:
        phase["data"].update(store="auto", loader_workers=2)
    cfg = TrialConfig.model_validate(body)
    run = LocalRun(tmp_path / "run", device=str(device))
    run.directory.mkdir()
    TrialRun(cfg, run.worker(), speed_cache=str(tmp_path / "speed")).run()
    pretrain = [r for r in run.reports if r["phase"] == "pretrain"]
    assert len(pretrain) == 2 and all(r["speedup_measured"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in pretrain)
    assert run.reports[-1]["done"] and run.reports[-1]["val_images"] == 8
    [cached] = Path(tmp_path / "speed").iterdir()
    precision = "bf16" if device.type == "cuda" else "fp32"
    assert cached.name.startswith(device.type) and f"-b8-{precision}-" in cached.name
    assert json.loads(cached.read_text())["step_s"] > 0
