"""Datasets for ObjMAE pre-training (object maps / CAM saliency) and for fine-tuning (image, label).

Entry points: `build_pretrain_dataset` and `build_classification_dataset`, both driven by a
`DataConfig`. Layouts:
  synthetic  built-in scenes, generated once (see synthetic.py); `root` = cache dir (None: default)
  coco       `root/<split>/` images + `root/annotations/instances_<split>.json`, or `ann_file`
             (relative to root unless absolute; "{split}" is replaced by the split name)
  folder     ImageFolder `root/<split>/<class>/<image>`; pre-training reads `cam_cache` (selection
             "cam") or, without one, images only (selection "mae")
  cifar100   `root/cifar-100-python/{train,test,meta}` (val split = test file)
`split` is "train" / "val" (mapped to cfg.train_split / cfg.val_split) or a literal split name; only
the train split gets random crops.

With `cfg.store` set, `build_packed_loader` reads the packed store instead (store.py, pack.py) and
augments on the training device (augment.py, loader.py): same samples, same dict / (image, label) batches.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from objmae_ray.config import DataConfig
from objmae_ray.data.augment import DeviceAugment
from objmae_ray.data.cifar import Cifar100
from objmae_ray.data.coco import CocoImageLabels, CocoObjects
from objmae_ray.data.folder import CamFolder, SafeImageFolder
from objmae_ray.data.layout import coco_paths, dataset_root, split_name
from objmae_ray.data.loader import PackedLoader, PackedView, TimedLoader
from objmae_ray.data.pack import check_source, current_fingerprint, ensure_packed
from objmae_ray.data.store import PackedSplit, StoreError, open_split
from objmae_ray.data.synthetic import ensure_synthetic
from objmae_ray.data.transforms import finetune_transform
from objmae_ray.errors import ConfigError

__all__ = ["build_pretrain_dataset", "build_classification_dataset", "build_packed_loader", "coco_paths",
           "ensure_synthetic", "open_packed", "TimedLoader"]
log = logging.getLogger("objmae_ray.data")


def build_pretrain_dataset(cfg: DataConfig, *, img_size: int, patch_size: int, patch_threshold: float = 0.2,
                           split: str = "train", seed: int = 0, min_ratio: float = 0.05) -> Dataset:
    """Pre-training dataset of dicts (see CocoObjects / CamFolder). `seed`: the synthetic set's seed."""
    name = split_name(cfg, split)
    random_crop = name == cfg.train_split
    if cfg.kind in ("synthetic", "coco"):
        image_dir, ann_file = coco_paths(cfg, name, img_size=img_size, seed=seed)
        return CocoObjects(image_dir, ann_file, img_size=img_size, patch_size=patch_size,
                           patch_threshold=patch_threshold, max_objects=cfg.max_objects, min_ratio=min_ratio,
                           random_crop=random_crop, hflip=cfg.hflip and random_crop)
    if cfg.kind == "folder":
        return CamFolder(dataset_root(cfg) / name, cfg.cam_cache, img_size=img_size, patch_size=patch_size,
                         random_crop=random_crop, hflip=cfg.hflip and random_crop)
    raise ConfigError(f"data.kind: '{cfg.kind}' has no object or CAM information; use it for fine-tuning only")


def classification_crop_scale(cfg: DataConfig) -> tuple[float, float]:
    """Fine-tuning crop scale by default: synthetic labels name the main object, so keep crops large enough
    to show it."""
    return (0.35, 1.0) if cfg.kind == "synthetic" else (0.08, 1.0)


def build_classification_dataset(cfg: DataConfig, *, img_size: int, split: str, train: bool,
                                 crop_scale: tuple[float, float] | None = None,
                                 hflip: float = 0.5) -> tuple[Dataset, int]:
    """(dataset of (image [3, S, S], label), num_classes) with the fine-tuning train / eval transform.

    crop_scale: RandomResizedCrop scale of the train transform (default classification_crop_scale).
    """
    name = split_name(cfg, split)
    transform = finetune_transform(img_size, train, crop_scale=crop_scale or classification_crop_scale(cfg),
                                   hflip=hflip)
    if cfg.kind in ("synthetic", "coco"):
        image_dir, ann_file = coco_paths(cfg, name, img_size=img_size)
        dataset = CocoImageLabels(image_dir, ann_file, transform=transform)
    elif cfg.kind == "folder":
        dataset = SafeImageFolder(dataset_root(cfg) / name, transform=transform)
    else:
        dataset = Cifar100(dataset_root(cfg), train=name == cfg.train_split, transform=transform)
    return dataset, dataset.num_classes


def open_packed(cfg: DataConfig, split: str, *, img_size: int, seed: int = 0) -> PackedSplit:
    """The store split of `cfg` ("train" / "val" / a split name), packing the synthetic set first for
    store "auto", refused when it was packed from another source than the one `cfg` names."""
    packed = open_split(ensure_packed(cfg, img_size=img_size, seed=seed), split_name(cfg, split))
    current = current_fingerprint(cfg, split, img_size=img_size, seed=seed)
    if current is not None:
        check_source(packed.path, packed.manifest, cfg.kind, *current)
    return packed


def pretrain_records(packed: PackedSplit, *, selection: str, min_ratio: float) -> np.ndarray:
    """Record numbers pre-training uses, filtered as the JPEG path filters (coco.py, folder.py)."""
    if selection == "cam":
        if packed.cams is None:
            raise StoreError(f"{packed.path}: packed without a CAM cache, but masking.selection 'cam' needs one "
                             f"(pack with `objmae-data pack --cam-cache`)")
        keep = packed.index["has_cam"] == 1
    elif packed.has_ids:
        keep = (packed.index["ratios"] >= min_ratio).any(1)
    else:
        keep = np.ones(len(packed), dtype=bool)
    if not keep.any():
        raise StoreError(f"{packed.path}: no usable image (none has an object of ratio >= {min_ratio} / a CAM)")
    if not keep.all():
        log.info("%s: pre-training on %d of %d images", packed.path, int(keep.sum()), len(packed))
    return np.flatnonzero(keep)


def low_label_positions(n: int, count: int | None) -> np.ndarray | None:
    """The first `count` positions of a fixed random order of n (seed 0: the same for every trial and worker,
    so a low-label split is one split), or None when the whole set is used."""
    if count is None or count >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:count].numpy()


def build_packed_loader(cfg: DataConfig, *, purpose: str, split: str, img_size: int, batch_size: int,
                        device: torch.device, patch_size: int = 16, patch_threshold: float = 0.2,
                        min_ratio: float = 0.05, selection: str = "object", rank: int = 0, world_size: int = 1,
                        seed: int = 0, crop_scale: tuple[float, float] | None = None, hflip: float = 0.5,
                        train_images: int | None = None) -> PackedLoader:
    """A PackedLoader over cfg.store's split for "pretrain" (dict batches, as build_pretrain_dataset) or
    "classify" ((image, label) batches, as build_classification_dataset), augmented on `device`.
    The train split is shuffled over `world_size` ranks (whole batches); other splits give this rank's share.
    Classification takes the transfer recipe's crop_scale (default classification_crop_scale) and flip
    probability; `train_images` keeps that many labelled records (low_label_positions: a low-label split)."""
    train = split_name(cfg, split) == cfg.train_split
    packed = open_packed(cfg, split, img_size=img_size, seed=seed)
    generator = torch.Generator(device=device)
    compile = os.environ.get("OBJMAE_COMPILE_AUGMENT") == "1"  # torch.compile the crop (augment.py)
    if purpose == "pretrain":
        if cfg.max_objects > packed.max_objects:
            raise StoreError(f"data.max_objects: {cfg.max_objects}, but {packed.path} keeps {packed.max_objects} "
                             f"objects per image (pack with --max-objects {cfg.max_objects})")
        records = pretrain_records(packed, selection=selection, min_ratio=min_ratio)
        augment = DeviceAugment(purpose="pretrain", img_size=img_size, patch_size=patch_size,
                                patch_threshold=patch_threshold, max_objects=cfg.max_objects,
                                train=train, hflip=0.5 if cfg.hflip else 0.0, cams=selection == "cam",
                                generator=generator,
                                channels=packed.channels, compile=compile)
    else:
        records = np.flatnonzero(packed.index["label"] >= 0)
        if not len(records) or not packed.classes:
            raise StoreError(f"{packed.path}: images carry no labels; not a classification set")
        positions = low_label_positions(len(records), train_images) if train else None
        if positions is not None:
            records = records[positions]
        augment = DeviceAugment(purpose="classify", img_size=img_size, train=train,
                                crop_scale=crop_scale or classification_crop_scale(cfg), hflip=hflip,
                                generator=generator, channels=packed.channels, compile=compile)
    loader = PackedLoader(PackedView(packed, records), batch_size, augment=augment, device=device, rank=rank,
                          world_size=world_size, shuffle=train, drop_last=train, workers=cfg.loader_workers)
    loader.num_classes = len(packed.classes or [])
    return loader
