"""Built-in synthetic scenes (CLEVR-style), written once as a COCO-format dataset.

Each image: a gradient + noise background, one large "main" object and 1-4 smaller distractors
(circle / square / triangle, random colour, position and rotation; distractors drawn in random order
so they occlude each other, the main object last so its shape stays whole). Instance masks are exact (visible pixels after occlusion, RLE via
pycocotools). Image label (for fine-tuning): the shape of the object with the largest visible area
(3 classes). Image i of a split depends only on (seed, split, i), so the set is deterministic and
the JSON byte-identical for the same parameters.

`object_ratio` (DataConfig.object_ratio, `objmae-data synth --object-ratio`): scenes at a chosen object share.
The v2 scenes' mean object ratio over the eligible objects (ratio >= 0.05) is ~0.20; with `object_ratio: 0.34`
it is COCO's 0.34 (paper section 4.1): the main object is scaled up and kept whole, the distractors stay below
0.05. At 32 px and patch 4 such an object spans ~22 of the 64 patches, enough for an 11 + 11 source / target
division at alpha 0.17. Without it the sets are byte-identical to v2 (same key, same draws).

Layout under `<cache>/<key>/`: `annotations/instances_{train,val}.json`, `{train,val}/%06d.png`.
Written into a temp dir and renamed, so an interrupted generation never leaves a half set.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from objmae_ray.errors import ConfigError

VERSION = 2
SHAPES = ("circle", "square", "triangle")
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 90, 230], [240, 220, 40],
                    [40, 220, 220], [210, 60, 210], [240, 240, 240], [250, 140, 30]], dtype=np.float32)
SPLITS = ("train", "val")
SHAPE_AREA = {"circle": np.pi, "square": 2.0, "triangle": 3 * np.sqrt(3) / 4}  # area / circumradius^2


def default_cache_dir() -> Path:
    return Path(os.environ.get("OBJMAE_CACHE", Path.home() / ".cache" / "objmae-ray"))


def dataset_key(num_images: int, num_val: int, img_size: int, seed: int, object_ratio: float | None = None) -> str:
    key = f"synthetic-v{VERSION}-n{num_images}-val{num_val}-px{img_size}-seed{seed}"
    return key if object_ratio is None else f"{key}-ratio{object_ratio:g}"


def main_radius(rng: np.random.Generator, shape: int, size: int, object_ratio: float | None) -> float:
    """Circumradius of the main object. Default: 0.28-0.36 of the image side. With `object_ratio`: the v2 scene
    scaled so that the shapes cover `object_ratio` of the image on average (the radius, 0.85-1.15 of that
    scale, does not depend on the shape, so a circle is larger than a square, a square than a triangle: area
    is a cue to the label, as in v2), placed to stay whole where it fits (`place_whole`), while the distractors
    shrink to 0.06-0.12 of the side (ratio < 0.05, never eligible), so the mean object ratio over the eligible
    objects (the paper's 0.34 on COCO) is `object_ratio` within ~0.01."""
    if object_ratio is None:
        return rng.uniform(0.28, 0.36) * size
    mean_area = np.mean(list(SHAPE_AREA.values()))  # as in v2, the radius does not depend on the shape
    return float(np.sqrt(object_ratio / mean_area) * rng.uniform(0.85, 1.15) * size)


def shape_mask(shape: int, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Exact pixel-centre mask of one shape: [size, size] bool. `radius` = circumradius."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if SHAPES[shape] == "circle":
        return dx * dx + dy * dy <= radius * radius
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotate into the shape's frame
    if SHAPES[shape] == "square":
        half = radius / np.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    inside = np.ones_like(u, dtype=bool)  # equilateral triangle: three half-planes
    for k in range(3):
        a = angle + np.pi / 2 + k * 2 * np.pi / 3
        inside &= (np.cos(a - angle) * u + np.sin(a - angle) * v) >= -radius / 2
    return inside


def place_whole(rng: np.random.Generator, shape: int, radius: float, size: int, tries: int = 16) -> np.ndarray:
    """Mask of a large shape placed (centre, rotation) so that as much of it as possible lies inside the image:
    the first of `tries` random placements that keeps >= 97% of its area, else the best one. [size, size] bool."""
    full = SHAPE_AREA[SHAPES[shape]] * radius * radius
    best = None
    for _ in range(tries):
        margin = min(radius * 0.5, size / 2)
        cx, cy = rng.uniform(margin, size - margin, 2)
        m = shape_mask(shape, cx, cy, radius, rng.uniform(0, 2 * np.pi), size)
        if best is None or m.sum() > best.sum():
            best = m
        if m.sum() >= 0.97 * full:
            break
    return best


def render_scene(rng: np.random.Generator, size: int, object_ratio: float | None = None):
    """One scene. Returns (pixels [size, size, 3] uint8, visible masks [M, size, size] bool, shapes [M], label).

    object_ratio: the main object's mean share of the image (see `main_radius`); None: the v2 scenes.
    """
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * t[None, :] + np.sin(direction) * t[:, None]) / np.sqrt(2) + 0.5
    low, high = rng.uniform(20, 110, 3), rng.uniform(60, 160, 3)
    pixels = low + (high - low) * ramp[..., None] + rng.normal(0, 6, (size, size, 1))
    num_objects = 1 + int(rng.integers(1, 5))
    if object_ratio is None:  # the v2 draw order, so default sets stay byte-identical
        radii = [main_radius(rng, 0, size, None)] + list(rng.uniform(0.08, 0.15, num_objects - 1) * size)
        shapes = rng.integers(0, len(SHAPES), num_objects)
    else:
        shapes = rng.integers(0, len(SHAPES), num_objects)
        radii = [main_radius(rng, int(shapes[0]), size, object_ratio)]
        radii += list(rng.uniform(0.06, 0.12, num_objects - 1) * size)  # ratio < 0.05: never eligible
    visible = np.zeros((num_objects, size, size), dtype=bool)
    order = [*(1 + rng.permutation(num_objects - 1)), 0]  # distractors in random depth order, main object on top
    for k in order:
        if object_ratio is not None and k == 0:
            m = place_whole(rng, int(shapes[k]), radii[k], size)
        else:
            r = radii[k]
            cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
            m = shape_mask(int(shapes[k]), cx, cy, r, rng.uniform(0, 2 * np.pi), size)
        pixels[m] = COLOURS[rng.integers(len(COLOURS))] + rng.normal(0, 4, (int(m.sum()), 3))
        visible[:, m] = False
        visible[k] = m
    keep = visible.reshape(num_objects, -1).any(1)
    visible, shapes = visible[keep], shapes[keep]
    label = int(shapes[visible.reshape(len(shapes), -1).sum(1).argmax()])
    return np.clip(pixels, 0, 255).astype(np.uint8), visible, shapes, label


def write_split(out: Path, split: str, num_images: int, img_size: int, seed: int,
                object_ratio: float | None = None) -> None:
    """Render one split: PNGs under out/split, annotations under out/annotations."""
    (out / split).mkdir(parents=True)
    images, annotations = [], []
    split_id = SPLITS.index(split)
    for i in range(num_images):
        pixels, masks, shapes, label = render_scene(np.random.default_rng([seed, split_id, i]), img_size,
                                                     object_ratio)
        file_name = f"{i:06d}.png"
        Image.fromarray(pixels).save(out / split / file_name, compress_level=1)
        images.append({"id": i + 1, "file_name": file_name, "height": img_size, "width": img_size, "label": label})
        for mask, shape in zip(masks, shapes):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(shape) + 1,
                "segmentation": {"size": [img_size, img_size], "counts": rle["counts"].decode("ascii")},
                "area": int(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
            })
    dataset = {
        "info": {"description": f"objmae-ray synthetic scenes v{VERSION}", "seed": seed,
                 **({} if object_ratio is None else {"object_ratio": object_ratio})},
        "image_classes": list(SHAPES),
        "categories": [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)],
        "images": images,
        "annotations": annotations,
    }
    (out / "annotations").mkdir(exist_ok=True)
    with open(out / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(dataset, f, sort_keys=True, separators=(",", ":"))


def ensure_synthetic(root: str | Path | None = None, num_images: int = 512, img_size: int = 64, seed: int = 0,
                     num_val: int | None = None, object_ratio: float | None = None) -> Path:
    """Generate the synthetic set once under `root` (default $OBJMAE_CACHE or ~/.cache/objmae-ray).

    Returns the dataset root (holding `annotations/`, `train/`, `val/`); reuses it when it exists.
    object_ratio: the main object's mean share of the image (None: the v2 scenes); see `main_radius`.
    """
    if object_ratio is not None and not 0.0 < object_ratio < 1.0:
        raise ConfigError(f"data.object_ratio: {object_ratio} must be in (0, 1)")
    num_val = max(1, num_images // 4) if num_val is None else num_val
    cache = Path(root) if root is not None else default_cache_dir()
    final = cache / dataset_key(num_images, num_val, img_size, seed, object_ratio)
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache))
    try:
        write_split(tmp, "train", num_images, img_size, seed, object_ratio)
        write_split(tmp, "val", num_val, img_size, seed, object_ratio)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a concurrent writer may have won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
