"""COCO-format instance segmentation (real COCO or the built-in synthetic scenes) for ObjMAE pre-training.

Per image: apply one random crop to the image and its instance masks (pycocotools; polygons are
rasterised directly in crop coordinates, RLE masks decoded then cropped), then per object: the object ratio on the crop (eq. 1, object pixels / crop pixels:
masking decides eligibility on what the model actually sees) and the per-patch object map (a patch
belongs to an object when >= patch_threshold of its pixels do). Crowd regions are not objects.

Filtering (paper, section 4): an image is dropped when none of its objects has a full-image object
ratio >= min_ratio; the full-image ratio is COCO's `area` field / (height * width) (the mask pixel
count that pycocotools computes), so filtering needs no mask decoding. Dropped and missing images are
counted in `stats` and reported once.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from objmae_ray.data.patches import object_ratio_from_counts, patch_map_from_counts, patch_pixel_counts
from objmae_ray.data.skips import SkipCounter
from objmae_ray.data.transforms import CropBox, crop_image, crop_masks, crop_polygons, sample_crop
from objmae_ray.errors import ConfigError

log = logging.getLogger("objmae_ray.data")


def load_coco(ann_file: str | Path) -> COCO:
    """pycocotools COCO index of an instances JSON; ConfigError naming the file when unusable."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise ConfigError(f"{ann_file}: annotation file not found")
    try:
        with open(ann_file) as f:
            dataset = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{ann_file}: not a readable JSON file ({err})") from None
    if not isinstance(dataset, dict) or not all(k in dataset for k in ("images", "annotations", "categories")):
        raise ConfigError(f"{ann_file}: not a COCO instances file (needs images, annotations, categories)")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def check_image_dir(image_dir: str | Path) -> Path:
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ConfigError(f"{image_dir}: image directory not found")
    return image_dir


class CocoObjects(Dataset):
    """Pre-training samples with object maps.

    Yields {"image": [3, S, S] float (ImageNet-normalised), "object_patches": [K, N] bool,
    "object_ratio": [K] float}; K = max_objects (largest objects first, empty slots all-False / 0.0),
    N = (S / patch_size)^2. `hflip`: a random horizontal flip of the crop and its masks together.
    """

    def __init__(self, image_dir, ann_file, *, img_size: int, patch_size: int, patch_threshold: float = 0.2,
                 max_objects: int = 20, min_ratio: float = 0.05, random_crop: bool = True,
                 crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = False):
        self.image_dir = check_image_dir(image_dir)
        self.coco = load_coco(ann_file)
        self.img_size, self.patch_size, self.patch_threshold = img_size, patch_size, patch_threshold
        self.max_objects, self.min_ratio = max_objects, min_ratio
        self.random_crop, self.crop_scale, self.hflip = random_crop, crop_scale, hflip
        self.skips = SkipCounter(f"{ann_file}")
        self.image_ids: list[int] = []
        self.objects: dict[int, list[dict]] = {}  # image id -> up to K non-crowd annotations, largest first
        self.all_object_ratios: list[float] = []  # full-image ratio of every non-crowd object (Fig. 5)
        self.stats = {"images": 0, "kept": 0, "dropped_no_object": 0, "missing_file": 0}
        self._index(ann_file)

    def _index(self, ann_file) -> None:
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            self.stats["images"] += 1
            anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and a.get("area", 0) > 0]
            ratios = [a["area"] / (info["height"] * info["width"]) for a in anns]
            self.all_object_ratios.extend(ratios)
            if not (self.image_dir / info["file_name"]).is_file():
                self.stats["missing_file"] += 1
            elif not any(r >= self.min_ratio for r in ratios):
                self.stats["dropped_no_object"] += 1
            else:
                self.image_ids.append(image_id)
                self.objects[image_id] = sorted(anns, key=lambda a: -a["area"])[: self.max_objects]
        self.stats["kept"] = len(self.image_ids)
        if self.stats["missing_file"] or self.stats["dropped_no_object"]:
            log.warning("%s: kept %d of %d images (%d without an object of ratio >= %g, %d image files missing)",
                        ann_file, self.stats["kept"], self.stats["images"], self.stats["dropped_no_object"],
                        self.min_ratio, self.stats["missing_file"])
        if not self.image_ids:
            raise ConfigError(f"{ann_file}: no usable image (none has an object of ratio >= {self.min_ratio})")

    @property
    def skipped(self) -> int:
        """Samples substituted in this process because their file could not be read."""
        return self.skips.skipped

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.skips.load(index, len(self), self._load, self.describe)

    def describe(self, index: int) -> str:
        return str(self.image_dir / self.coco.imgs[self.image_ids[index]]["file_name"])

    def _load(self, index: int, box: CropBox | None = None) -> dict[str, torch.Tensor]:
        """Sample `index` cropped to `box` (default: a random box, or the whole image without random crops)."""
        info = self.coco.imgs[self.image_ids[index]]
        with Image.open(self.image_dir / info["file_name"]) as img:
            if img.size != (info["width"], info["height"]):
                raise ValueError(f"image is {img.size[0]}x{img.size[1]}, annotation says {info['width']}x{info['height']}")
            box = box or sample_crop(img, random=self.random_crop, scale=self.crop_scale)
            image = crop_image(img, box, self.img_size)
        anns = self.objects[info["id"]]
        masks = torch.from_numpy(self.crop_object_masks(anns, box))  # [k, S, S]
        if self.hflip and torch.rand(()) < 0.5:  # image and masks together, before the patch maps
            image, masks = image.flip(-1), masks.flip(-1)
        K, N = self.max_objects, (self.img_size // self.patch_size) ** 2
        object_patches = torch.zeros(K, N, dtype=torch.bool)
        ratios = torch.zeros(K)
        counts = patch_pixel_counts(masks, self.patch_size)  # [k, N] object pixels per patch
        object_patches[: len(anns)] = patch_map_from_counts(counts, self.patch_size, self.patch_threshold)
        ratios[: len(anns)] = object_ratio_from_counts(counts, self.img_size**2)
        return {"image": image, "object_patches": object_patches, "object_ratio": ratios}

    def crop_object_masks(self, anns: list[dict], box: CropBox) -> np.ndarray:
        """Instance masks of `anns` inside the crop, at the training size: [k, S, S] uint8.

        Polygons are rasterised by pycocotools directly in crop coordinates (cheap, no resampling);
        RLE masks are decoded at full size, then cropped and nearest-resized.
        """
        S = self.img_size
        masks = np.empty((len(anns), S, S), dtype=np.uint8)
        for k, ann in enumerate(anns):
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                rles = mask_utils.frPyObjects(crop_polygons(segmentation, box, S), S, S)
                masks[k] = mask_utils.decode(mask_utils.merge(rles))
            else:
                masks[k] = crop_masks(self.coco.annToMask(ann)[None], box, S)[0]
        return masks


class CocoImageLabels(Dataset):
    """Classification view of a COCO-format set whose images carry a `label` (the synthetic scenes).

    Yields (image [3, S, S] float, label int); `num_classes` = len of the JSON's `image_classes`.
    """

    def __init__(self, image_dir, ann_file, *, transform):
        self.image_dir = check_image_dir(image_dir)
        coco = load_coco(ann_file)
        self.classes = coco.dataset.get("image_classes")
        images = sorted(coco.dataset["images"], key=lambda i: i["id"])
        if not self.classes or any("label" not in i for i in images):
            raise ConfigError(f"{ann_file}: images carry no `label` / no `image_classes` list; not a classification set")
        self.num_classes = len(self.classes)
        self.samples = [(self.image_dir / i["file_name"], int(i["label"])) for i in images]
        self.transform = transform
        self.skips = SkipCounter(str(ann_file))

    @property
    def skipped(self) -> int:
        return self.skips.skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.skips.load(index, len(self), self._load, lambda i: str(self.samples[i][0]))

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label
