"""The packed path against the JPEG path on the same crop boxes (issue 11's agreement targets, docs/DATA.md).

`same_box_samples` draws torchvision's RandomResizedCrop box on each source image, has the JPEG path
(CocoObjects) crop it, and the packed path (DeviceAugment) crop the same box scaled to the record;
`agreement` summarises many such pairs: the share of patches whose object labels (one per object slot)
all agree, the object-ratio differences, and the share of crops without an eligible object
(`fallback_frac`) on each path.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torchvision import transforms as T

from objmae_ray.data.augment import DeviceAugment
from objmae_ray.data.coco import CocoObjects
from objmae_ray.data.loader import PackedView
from objmae_ray.data.store import PackedSplit
from objmae_ray.data.transforms import CropBox
from objmae_ray.method.masking import eligible_objects


def single_batch(split: PackedSplit, record: int) -> dict[str, torch.Tensor]:
    """A packed batch of one record (on the CPU)."""
    view = PackedView(split, [record])
    buffer = np.empty(view.batch_bytes([0]), np.uint8)
    return {k: torch.from_numpy(v) for k, v in view.gather(np.array([0]), buffer).items()}


def same_box_samples(reference: CocoObjects, split: PackedSplit, *, img_size: int, patch_size: int, passes: int,
                     scale: tuple[float, float] = (0.2, 1.0)) -> Iterator[tuple[dict, dict]]:
    """(JPEG-path sample, packed sample) for `passes` random boxes per image of `reference` (torch's global RNG)."""
    augment = DeviceAugment(purpose="pretrain", img_size=img_size, channels=split.channels, patch_size=patch_size,
                            patch_threshold=reference.patch_threshold, max_objects=reference.max_objects, train=False)
    record_of = {int(s): i for i, s in enumerate(split.index["source_id"])}
    for index in range(len(reference)):
        info = reference.coco.imgs[reference.image_ids[index]]
        record = record_of[info["id"]]
        batch = single_batch(split, record)
        H, W = info["height"], info["width"]
        sy, sx = split.index["height"][record] / H, split.index["width"][record] / W
        for _ in range(passes):
            top, left, h, w = T.RandomResizedCrop.get_params(torch.empty(1, H, W), list(scale), [3 / 4, 4 / 3])
            ref = reference._load(index, CropBox(top, left, h, w))
            box = torch.tensor([[top * sy, left * sx, h * sy, w * sx]], dtype=torch.float64)
            yield ref, {k: v[0] for k, v in augment(batch, boxes=box).items()}


def agreement(pairs, min_ratio: float = 0.05) -> dict:
    """Summary of (JPEG sample, packed sample) pairs (module docstring)."""
    patches = agree = covered = covered_agree = crops = fallback_jpeg = fallback_packed = 0
    diffs = []
    for ref, out in pairs:
        same = (out["object_patches"] == ref["object_patches"]).all(0)  # [N]: every object's label agrees
        any_object = (out["object_patches"] | ref["object_patches"]).any(0)
        patches, agree = patches + same.numel(), agree + int(same.sum())
        covered, covered_agree = covered + int(any_object.sum()), covered_agree + int((same & any_object).sum())
        present = (ref["object_ratio"] > 0) | (out["object_ratio"] > 0)
        diffs += (out["object_ratio"] - ref["object_ratio"])[present].abs().tolist()
        fallback_jpeg += not bool(eligible_objects(ref["object_patches"][None], ref["object_ratio"][None], min_ratio).any())
        fallback_packed += not bool(eligible_objects(out["object_patches"][None], out["object_ratio"][None], min_ratio).any())
        crops += 1
    diffs = np.asarray(diffs or [0.0])
    return {"crops": crops, "patch_labels_agree": agree / max(patches, 1),
            "object_patch_labels_agree": covered_agree / max(covered, 1),
            "object_ratio_abs_diff": {"mean": float(diffs.mean()), "p99": float(np.quantile(diffs, 0.99)),
                                      "max": float(diffs.max()), "share_within_0.01": float((diffs <= 0.01).mean())},
            "fallback_frac": {"jpeg": fallback_jpeg / max(crops, 1), "packed": fallback_packed / max(crops, 1)}}
