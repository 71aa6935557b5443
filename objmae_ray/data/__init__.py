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
"""
from __future__ import annotations

from torch.utils.data import Dataset

from objmae_ray.config import DataConfig
from objmae_ray.data.cifar import Cifar100
from objmae_ray.data.coco import CocoImageLabels, CocoObjects
from objmae_ray.data.folder import CamFolder, SafeImageFolder
from objmae_ray.data.layout import coco_paths, dataset_root, split_name
from objmae_ray.data.synthetic import ensure_synthetic
from objmae_ray.data.transforms import finetune_transform
from objmae_ray.errors import ConfigError

__all__ = ["build_pretrain_dataset", "build_classification_dataset", "coco_paths", "ensure_synthetic"]


def build_pretrain_dataset(cfg: DataConfig, *, img_size: int, patch_size: int, patch_threshold: float = 0.2,
                           split: str = "train", seed: int = 0, min_ratio: float = 0.05) -> Dataset:
    """Pre-training dataset of dicts (see CocoObjects / CamFolder). `seed`: the synthetic set's seed."""
    name = split_name(cfg, split)
    random_crop = name == cfg.train_split
    if cfg.kind in ("synthetic", "coco"):
        image_dir, ann_file = coco_paths(cfg, name, img_size=img_size, seed=seed)
        return CocoObjects(image_dir, ann_file, img_size=img_size, patch_size=patch_size,
                           patch_threshold=patch_threshold, max_objects=cfg.max_objects, min_ratio=min_ratio,
                           random_crop=random_crop)
    if cfg.kind == "folder":
        return CamFolder(dataset_root(cfg) / name, cfg.cam_cache, img_size=img_size, patch_size=patch_size,
                         random_crop=random_crop)
    raise ConfigError(f"data.kind: '{cfg.kind}' has no object or CAM information; use it for fine-tuning only")


def build_classification_dataset(cfg: DataConfig, *, img_size: int, split: str, train: bool,
                                 crop_scale: tuple[float, float] | None = None,
                                 hflip: float = 0.5) -> tuple[Dataset, int]:
    """(dataset of (image [3, S, S], label), num_classes) with the fine-tuning train / eval transform.

    crop_scale: RandomResizedCrop scale of the train transform; default (0.08, 1), and (0.35, 1) for the
    synthetic scenes, whose label names the main object (crops must stay large enough to show it).
    """
    name = split_name(cfg, split)
    if crop_scale is None:
        crop_scale = (0.35, 1.0) if cfg.kind == "synthetic" else (0.08, 1.0)
    transform = finetune_transform(img_size, train, crop_scale=crop_scale, hflip=hflip)
    if cfg.kind in ("synthetic", "coco"):
        image_dir, ann_file = coco_paths(cfg, name, img_size=img_size)
        dataset = CocoImageLabels(image_dir, ann_file, transform=transform)
    elif cfg.kind == "folder":
        dataset = SafeImageFolder(dataset_root(cfg) / name, transform=transform)
    else:
        dataset = Cifar100(dataset_root(cfg), train=name == cfg.train_split, transform=transform)
    return dataset, dataset.num_classes
