"""Where a `DataConfig`'s files are: split names, the dataset root, a COCO-format split's paths."""
from __future__ import annotations

from pathlib import Path

from objmae_ray.config import DataConfig
from objmae_ray.data.synthetic import ensure_synthetic
from objmae_ray.errors import ConfigError


def split_name(cfg: DataConfig, split: str) -> str:
    """"train" / "val" -> cfg.train_split / cfg.val_split; any other name is a literal split directory."""
    return {"train": cfg.train_split, "val": cfg.val_split}.get(split, split)


def dataset_root(cfg: DataConfig) -> Path:
    """cfg.root as an existing directory, or ConfigError naming the field."""
    if cfg.root is None:
        raise ConfigError(f"data.root: required for kind '{cfg.kind}'")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{root}: dataset root not found (data.root)")
    return root


def coco_paths(cfg: DataConfig, split: str, *, img_size: int, seed: int = 0) -> tuple[Path, Path]:
    """(image dir, instances JSON) of one split of a COCO-format dataset (synthetic: generated if needed)."""
    if cfg.kind == "synthetic":
        root = ensure_synthetic(cfg.root, num_images=cfg.num_images, img_size=img_size, seed=seed,
                                num_val=cfg.val_images, object_ratio=cfg.object_ratio)
        return root / split, root / "annotations" / f"instances_{split}.json"
    root = dataset_root(cfg)
    ann = Path(cfg.ann_file.replace("{split}", split)) if cfg.ann_file else Path("annotations") / f"instances_{split}.json"
    return root / split, ann if ann.is_absolute() else root / ann
