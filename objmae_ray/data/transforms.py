"""Pre-processing shared by image, instance masks and CAM maps.

Pre-training: one `RandomResizedCrop` box (torchvision's sampler) is applied to the image *and* to
everything aligned with it (instance masks, CAM maps), then ImageNet normalisation. Eval: the whole
image resized to the training size. Fine-tuning: random resized crop + horizontal flip for train
(scale and flip probability from the transfer phase's recipe), resize + center crop for eval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
_SCALE, _SHIFT = 1.0 / (255.0 * _STD), -_MEAN / _STD  # (x / 255 - mean) / std = x * _SCALE + _SHIFT


@dataclass(frozen=True)
class CropBox:
    """A crop in original-image pixel coordinates."""

    top: int
    left: int
    height: int
    width: int


def sample_crop(img: Image.Image, *, random: bool, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> CropBox:
    """torchvision `RandomResizedCrop` box for `img` (reads only the header), or the whole image."""
    if not random:
        return CropBox(0, 0, img.height, img.width)
    top, left, h, w = T.RandomResizedCrop.get_params(img, scale=list(scale), ratio=list(ratio))
    return CropBox(top, left, h, w)


def crop_image(img: Image.Image, box: CropBox, size: int) -> torch.Tensor:
    """Crop `box` out of `img`, resize to size x size (bicubic), ImageNet-normalise -> [3, size, size].

    For JPEGs the decoder's `draft` mode shrinks by 2/4/8 while the crop keeps >= `size` pixels.
    """
    W, H = img.size
    if img.format == "JPEG":
        img.draft("RGB", (math.ceil(W * size / box.width), math.ceil(H * size / box.height)))
    sx, sy = img.size[0] / W, img.size[1] / H
    if img.mode != "RGB":  # converting an RGB image would only copy it
        img = img.convert("RGB")
    area = (box.left * sx, box.top * sy, (box.left + box.width) * sx, (box.top + box.height) * sy)
    img = img.resize((size, size), Image.BICUBIC, box=area)
    return normalize(torch.from_numpy(np.array(img)).permute(2, 0, 1))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] -> ImageNet-normalised float32 [3, H, W]."""
    return torch.addcmul(_SHIFT, pixels.float(), _SCALE)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised [3, H, W] -> float [3, H, W] in 0..1 (for plots)."""
    return (image * _STD + _MEAN).clamp(0, 1)


def crop_masks(masks: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Same crop for full-image instance masks, nearest resize (torch's "nearest-exact" sampling).

    masks: [K, H, W] uint8 -> [K, size, size] uint8.
    """
    rows = box.top + ((np.arange(size) + 0.5) * box.height / size).astype(np.int64)
    cols = box.left + ((np.arange(size) + 0.5) * box.width / size).astype(np.int64)
    return masks[:, rows][:, :, cols]


def crop_polygons(polygons: list[list[float]], box: CropBox, size: int) -> list[list[float]]:
    """COCO polygons [x0, y0, x1, y1, ...] (continuous pixel coordinates) mapped into the resized crop,
    so pycocotools can rasterise them directly at size x size (same geometry as `crop_image`)."""
    scale = np.array([size / box.width, size / box.height])
    return [((np.asarray(p, dtype=np.float64).reshape(-1, 2) - (box.left, box.top)) * scale).ravel().tolist()
            for p in polygons]


def finetune_transform(img_size: int, train: bool, crop_scale: tuple[float, float] = (0.08, 1.0),
                       hflip: float = 0.5) -> T.Compose:
    """PIL -> normalised [3, img_size, img_size]: train (random resized crop + flip) / eval (resize + center crop)."""
    if train:
        ops = [T.RandomResizedCrop(img_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
               T.RandomHorizontalFlip(hflip)]
    else:
        ops = [T.Resize(int(round(img_size / 0.875)), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(img_size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
