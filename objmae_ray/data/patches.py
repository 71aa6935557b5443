"""Per-patch object maps: which ViT patches belong to which object (paper section 3.2).

A patch belongs to an object when at least `threshold` (paper: 20%) of its pixels do. Counts are
compared as integers (pixels in patch >= threshold * patch area), so the boundary is exact.
"""
from __future__ import annotations

import math

import torch


def object_ratio(masks: torch.Tensor) -> torch.Tensor:
    """Eq. (1): object pixels / image pixels.

    masks: [K, H, W] (bool or 0/1 integers) -> [K] float32.
    """
    K, H, W = masks.shape
    return masks.reshape(K, -1).sum(1, dtype=torch.int64).double().div(H * W).float()


def object_ratio_from_counts(counts: torch.Tensor, image_pixels: int) -> torch.Tensor:
    """Eq. (1) from per-patch pixel counts (the patches tile the image): [K, N] int -> [K] float32."""
    return counts.sum(1).double().div(image_pixels).float()


def patch_pixel_counts(masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Object pixels inside each patch (row-major over the H/p x W/p grid).

    masks: [K, H, W] 0/1 -> [K, N] int64 with N = (H/p) * (W/p).
    """
    K, H, W = masks.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"patch_size {patch_size} does not divide image size {H}x{W}")
    rows = masks.reshape(K, H // patch_size, patch_size, W).sum(2, dtype=torch.int32)  # [K, h, W]
    return rows.reshape(K, H // patch_size, W // patch_size, patch_size).sum(3, dtype=torch.int64).reshape(K, -1)


def patch_object_map(masks: torch.Tensor, patch_size: int, threshold: float = 0.2) -> torch.Tensor:
    """Patch n belongs to object k when >= `threshold` of patch n's pixels are object k's.

    masks: [K, H, W] 0/1 -> object_patches [K, N] bool.
    """
    return patch_map_from_counts(patch_pixel_counts(masks, patch_size), patch_size, threshold)


def patch_map_from_counts(counts: torch.Tensor, patch_size: int, threshold: float = 0.2) -> torch.Tensor:
    """[K, N] object pixels per patch -> [K, N] bool (>= threshold of the patch's pixels)."""
    return counts >= math.ceil(threshold * patch_size * patch_size - 1e-9)

