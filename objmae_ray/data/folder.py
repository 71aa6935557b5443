"""ImageFolder (ImageNet-100 layout: root/<split>/<class>/<image>) for fine-tuning and CAM selection."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from objmae_ray.data.cam import cam_patch_saliency, load_cam_cache
from objmae_ray.data.skips import SkipCounter
from objmae_ray.data.transforms import crop_image, sample_crop
from objmae_ray.errors import ConfigError


def _pil_loader(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def check_folder(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: image folder not found")
    return root


class SafeImageFolder(ImageFolder):
    """torchvision ImageFolder that substitutes the next readable image for a corrupt one (counted)."""

    def __init__(self, root, transform=None):
        root = check_folder(root)
        try:
            super().__init__(str(root), transform=transform, loader=_pil_loader)
        except FileNotFoundError as err:
            raise ConfigError(f"{root}: {err}") from None
        self.num_classes = len(self.classes)
        self.skips = SkipCounter(str(root))

    @property
    def skipped(self) -> int:
        return self.skips.skipped

    def __getitem__(self, index: int):
        return self.skips.load(index, len(self), super().__getitem__, lambda i: self.samples[i][0])


class CamFolder(Dataset):
    """Pre-training samples from an image folder: the same random crop on image and CAM map.

    Yields {"image": [3, S, S] float (ImageNet-normalised), "saliency": [N] float in 0..1}: the CAM
    (normalised on the whole image, not re-normalised on the crop) averaged over each patch.
    Images under root without a cached CAM are dropped and counted in `stats`. `hflip`: a random
    horizontal flip of the crop and its saliency grid together.
    With `cam_cache=None` (selection "mae": MAE pre-training on ImageNet-100) it yields {"image"} only.
    """

    def __init__(self, root, cam_cache, *, img_size: int, patch_size: int, random_crop: bool = True,
                 crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = False):
        self.root = check_folder(root)
        folder = SafeImageFolder(self.root)
        relative = [Path(p).relative_to(self.root).as_posix() for p, _ in folder.samples]
        if cam_cache is None:
            self.cams, self.meta = None, {}
            self.samples = [(rel, -1) for rel in relative]
        else:
            rows, self.cams, self.meta = load_cam_cache(cam_cache)
            self.samples = [(rel, rows[rel]) for rel in relative if rel in rows]
        self.stats = {"images": len(relative), "kept": len(self.samples), "missing_cam": len(relative) - len(self.samples)}
        if not self.samples:
            raise ConfigError(f"{cam_cache}: has no CAM for any image under {self.root} (built for another folder?)")
        self.img_size, self.grid = img_size, img_size // patch_size
        self.random_crop, self.crop_scale, self.hflip = random_crop, crop_scale, hflip
        self.skips = SkipCounter(str(self.root))

    @property
    def skipped(self) -> int:
        return self.skips.skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.skips.load(index, len(self), self._load, lambda i: str(self.root / self.samples[i][0]))

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        rel, row = self.samples[index]
        with Image.open(self.root / rel) as img:
            box = sample_crop(img, random=self.random_crop, scale=self.crop_scale)
            size = img.size
            image = crop_image(img, box, self.img_size)
        flip = self.hflip and bool(torch.rand(()) < 0.5)  # image and saliency grid together
        if self.cams is None:
            return {"image": image.flip(-1) if flip else image}
        saliency = cam_patch_saliency(self.cams[row], box, size, self.grid)
        if flip:
            image, saliency = image.flip(-1), saliency.view(self.grid, self.grid).flip(-1).reshape(-1)
        return {"image": image, "saliency": saliency}
