"""Augmentation on the training device: packed batches -> what masking and the model consume.

A packed batch (objmae_ray/data/loader.py) holds its records back to back, unpadded, in one uint8 tensor
`data`: record b starts at pixel row `starts[b]` of `data.view(-1, C)` and is [h_b, w_b, C] (C = 3 + the
object-bitmask bytes, or 3); plus `sizes` [B, 2] (h, w), `labels` [B] and, for CAM stores, `cams`
[B, h, w]. Only image bytes cross the host and the PCIe bus (padding the batch to its largest record
would double them on COCO). Everything below is batched torch on the batch's device (GPU in trials,
CPU in tests), no loop over images:

1. crop boxes: torchvision's `RandomResizedCrop` sampler vectorised (10 attempts, then the central
   crop), the whole image (pre-training eval), or BiT's resize + centre crop (classification eval);
   boxes are float (top, left, height, width) in record pixels, so boxes drawn on the source image
   map exactly (`box * height / orig_height`);
2. optional horizontal flip, applied to pixels and maps together;
3. pixels: bilinear resampling of the box to S x S (the four neighbours of every output pixel centre
   gathered by index from the flat batch, coordinates clamped to each record: what `grid_sample` with
   align_corners=True and border padding computes on one image), ImageNet normalisation;
4. object bitmasks: nearest sampling at the output pixel centres (as objmae_ray/data/transforms.crop_masks),
   then per patch and object the pixel count: `object_patches` = count >= the
   threshold share of the patch (paper: 20%), `object_ratio` = object pixels / crop pixels (eq. 1);
   masking (objmae_ray/method/masking.py) takes its eligible objects (the candidate list) from these;
5. CAM: mean of the bilinearly upsampled CAM grid over each patch (`roi_align`, as
   objmae_ray/data/cam.cam_patch_saliency).
"""
from __future__ import annotations

import math

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision.ops import roi_align

RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params


def random_resized_boxes(sizes: Tensor, *, scale: tuple[float, float], ratio: tuple[float, float] = RATIO,
                         generator: torch.Generator | None = None) -> Tensor:
    """torchvision `RandomResizedCrop.get_params`, vectorised: sizes [B, 2] (h, w) -> boxes [B, 4] float
    (top, left, height, width) in whole pixels."""
    B, device = sizes.shape[0], sizes.device
    H, W = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    u = torch.rand(B, CROP_ATTEMPTS, 2, generator=generator, device=device, dtype=torch.float64)
    area = H * W * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # [B, attempts]
    first = ok.double().argmax(1, keepdim=True)  # first attempt that fits (0 when none does)
    h, w, found = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0], ok.any(1)
    H, W = H[:, 0], W[:, 0]
    in_ratio = W / H  # fallback: the central crop, clamped to the ratio range
    fw = torch.where(in_ratio < ratio[0], W, torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W))
    fh = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    h, w = torch.where(found, h, fh), torch.where(found, w, fw)
    pos = torch.rand(B, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.where(found, torch.floor(pos[:, 0] * (H - h + 1)), torch.floor((H - h) / 2))
    left = torch.where(found, torch.floor(pos[:, 1] * (W - w + 1)), torch.floor((W - w) / 2))
    return torch.stack([top, left, h, w], 1)


def whole_boxes(sizes: Tensor) -> Tensor:
    """The whole record: [B, 2] -> [B, 4] (0, 0, h, w)."""
    zeros = torch.zeros_like(sizes[:, 0], dtype=torch.float64)
    return torch.stack([zeros, zeros, sizes[:, 0].double(), sizes[:, 1].double()], 1)


def center_boxes(sizes: Tensor, img_size: int, crop_pct: float = 0.875) -> Tensor:
    """BiT / timm eval: resize the short side to round(S / crop_pct), centre crop S -> [B, 4] in record pixels."""
    H, W = sizes[:, 0].double(), sizes[:, 1].double()
    side = img_size * torch.minimum(H, W) / round(img_size / crop_pct)
    return torch.stack([(H - side) / 2, (W - side) / 2, side, side], 1)


def sample_points(boxes: Tensor, size: int, flip: Tensor | None) -> tuple[Tensor, Tensor]:
    """Record coordinates (pixel k spans [k, k+1)) of the output pixel centres.

    boxes [B, 4], flip [B] bool or None -> ys [B, S], xs [B, S] float64 (xs reversed where flipped).
    """
    odd = 2 * torch.arange(size, device=boxes.device, dtype=torch.float64) + 1  # (i + 0.5) * extent / S, rounded
    ys = boxes[:, 0:1] + odd * boxes[:, 2:3] / (2 * size)  # once, so whole-pixel boxes hit pixel edges exactly
    xs = boxes[:, 1:2] + odd * boxes[:, 3:4] / (2 * size)
    if flip is not None:
        xs = torch.where(flip[:, None], xs.flip(1), xs)
    return ys, xs


def record_index(starts: Tensor, sizes: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Pixel row (in data.view(-1, C)) of (rows [B, S], cols [B, S]) in each record -> int64 [B, S, S]."""
    return starts[:, None, None] + rows[:, :, None] * sizes[:, 1, None, None] + cols[:, None, :]


def resample_pixels(data: Tensor, channels: int, starts: Tensor, sizes: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Bilinear RGB at record coordinates (ys [B, S], xs [B, S]), clamped to each record -> float [B, 3, S, S] (0..255)."""
    h, w = sizes[:, 0:1].long(), sizes[:, 1:2].long()
    u = torch.minimum((ys - 0.5).clamp_min(0), h - 1)  # index coordinates: pixel k's centre at k
    v = torch.minimum((xs - 0.5).clamp_min(0), w - 1)
    y0, x0 = u.floor().long(), v.floor().long()
    step_y = (torch.minimum(y0 + 1, h - 1) - y0) * w  # [B, S]: 0 on the last row
    step_x = torch.minimum(x0 + 1, w - 1) - x0  # [B, S]: 0 on the last column
    wy = (u - y0).float()[:, :, None, None]  # [B, S, 1, 1]
    wx = (v - x0).float()[:, None, :, None]  # [B, 1, S, 1]
    rgb = data.view(-1, channels)[:, :3]
    index = record_index(starts.long(), sizes.long(), y0, x0)  # top-left neighbour
    down, right = step_y[:, :, None], step_x[:, None, :]
    top = torch.lerp(rgb[index].float(), rgb[index + right].float(), wx)
    bottom = torch.lerp(rgb[index + down].float(), rgb[index + down + right].float(), wx)
    return torch.lerp(top, bottom, wy).permute(0, 3, 1, 2)


def nearest_masks(data: Tensor, channels: int, starts: Tensor, sizes: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Object-bitmask bytes of the record pixel containing each output pixel centre -> uint8 [B, S, S, C - 3]."""
    rows = torch.minimum(ys.floor().long(), sizes[:, 0:1].long() - 1)  # [B, S]
    cols = torch.minimum(xs.floor().long(), sizes[:, 1:2].long() - 1)
    return data.view(-1, channels)[:, 3:][record_index(starts.long(), sizes.long(), rows, cols)]


def patch_counts(masks: Tensor, patch_size: int, max_objects: int) -> Tensor:
    """Pixels of each object slot inside each patch: bitmask bytes uint8 [B, S, S, nb] (bit k of byte k // 8:
    slot k; slots from max_objects on are ignored) -> int64 [B, K, N], N = (S / p)^2 row-major."""
    B, S = masks.shape[:2]
    G, K, p = S // patch_size, max_objects, patch_size
    slot = torch.arange(K, device=masks.device)
    bits = (masks[..., slot // 8] >> (slot % 8).to(torch.uint8)) & 1  # [B, S, S, K]
    counts = bits.reshape(B, G, p, G, p, K).sum((2, 4), dtype=torch.int64)  # [B, G, G, K]
    return counts.reshape(B, G * G, K).transpose(1, 2)


def cam_saliency(cams: Tensor, sizes: Tensor, boxes: Tensor, grid: int, flip: Tensor | None) -> Tensor:
    """Per-patch mean of the bilinearly upsampled CAM over each patch of the crop.

    cams [B, h, w] over the whole record, sizes [B, 2], boxes [B, 4] in record pixels -> [B, grid * grid] in 0..1.
    """
    B, h, w = cams.shape
    sy, sx = h / sizes[:, 0].double(), w / sizes[:, 1].double()
    top, left, bh, bw = boxes.unbind(1)
    rois = torch.stack([torch.arange(B, device=cams.device, dtype=torch.float64), left * sx, top * sy,
                        (left + bw) * sx, (top + bh) * sy], 1).float()
    pooled = roi_align(cams[:, None].float(), rois, output_size=(grid, grid), spatial_scale=1.0,
                       sampling_ratio=4, aligned=True)[:, 0]  # [B, grid, grid]
    if flip is not None:
        pooled = torch.where(flip[:, None, None], pooled.flip(2), pooled)
    return pooled.reshape(B, grid * grid).clamp(0, 1)


def crop_batch(data: Tensor, starts: Tensor, sizes: Tensor, ys: Tensor, xs: Tensor, *, channels: int,
               patch_size: int, max_objects: int, objects: bool) -> tuple[Tensor, Tensor | None]:
    """Steps 3-4 at the sample points: (normalised image [B, 3, S, S], object pixels per patch [B, K, N] or None).

    One function so that `torch.compile` can fuse its gathers and arithmetic (DeviceAugment(compile=True)).
    """
    image = normalize(resample_pixels(data, channels, starts, sizes, ys, xs))
    if not objects:
        return image, None
    return image, patch_counts(nearest_masks(data, channels, starts, sizes, ys, xs), patch_size, max_objects)


def normalize(image: Tensor) -> Tensor:
    """float [B, 3, S, S] in 0..255 -> ImageNet-normalised: (x / 255 - mean) / std, a multiply-add per channel with
    Python constants (no tensor built from host data: that would be a synchronous copy every batch)."""
    return torch.stack([image[:, c] * (1.0 / (255.0 * std)) + (-mean / std)
                        for c, (mean, std) in enumerate(zip(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))], dim=1)


class DeviceAugment:
    """The device-side transform of one phase's packed batches.

    purpose "pretrain": -> {"image": [B, 3, S, S], and "object_patches" [B, K, N] bool + "object_ratio"
    [B, K] (stores with object ids), or "saliency" [B, N] (stores with CAM grids, `cams` set)}, the same
    as objmae_ray/data/coco.CocoObjects / folder.CamFolder. purpose "classify": -> (image, labels [B]).
    `train`: random resized crop (scale `crop_scale`) and a horizontal flip with probability `hflip` (the
    loader passes data.hflip for pre-training, the transfer recipe's for classification); otherwise the whole record (pre-training) or
    BiT's centre crop (classification). `generator` lives on the batch's device; `channels`: the store's.
    `compile`: run `crop_batch` through torch.compile (dynamic shapes; fuses the gathers: 4x faster on a
    CPU core, one compilation of ~25 s first); objmae_ray/data/__init__.py turns it on with
    OBJMAE_COMPILE_AUGMENT=1.
    """

    def __init__(self, *, purpose: str, img_size: int, channels: int, patch_size: int = 16,
                 patch_threshold: float = 0.2, max_objects: int = 20, train: bool = True,
                 crop_scale: tuple[float, float] = (0.2, 1.0), hflip: float = 0.0, cams: bool = False,
                 generator: torch.Generator | None = None, compile: bool = False):
        self.purpose, self.img_size, self.patch_size, self.channels = purpose, img_size, patch_size, channels
        self.min_pixels = math.ceil(patch_threshold * patch_size * patch_size - 1e-9)  # as data/patches.py
        self.max_objects, self.train, self.crop_scale = max_objects, train, crop_scale
        self.hflip = float(hflip)  # probability of a horizontal flip in training
        self.cams, self.generator = cams, generator
        self.crop_batch = torch.compile(crop_batch, dynamic=True) if compile else crop_batch

    def boxes(self, sizes: Tensor) -> Tensor:
        if self.train:
            return random_resized_boxes(sizes, scale=self.crop_scale, generator=self.generator)
        return whole_boxes(sizes) if self.purpose == "pretrain" else center_boxes(sizes, self.img_size)

    def flips(self, batch_size: int, device: torch.device) -> Tensor | None:
        if not (self.train and self.hflip > 0):
            return None
        return torch.rand(batch_size, generator=self.generator, device=device) < self.hflip

    def __call__(self, batch: dict, boxes: Tensor | None = None, flip: Tensor | None = None):
        """batch: a packed batch on the device; `boxes` / `flip` override the sampled ones (agreement checks)."""
        data, starts, sizes, C = batch["data"], batch["starts"], batch["sizes"], self.channels
        boxes = self.boxes(sizes) if boxes is None else boxes
        flip = self.flips(len(sizes), data.device) if flip is None else flip
        ys, xs = sample_points(boxes, self.img_size, flip)
        objects = self.purpose == "pretrain" and not self.cams and C > 3
        image, counts = self.crop_batch(data, starts, sizes, ys, xs, channels=C, patch_size=self.patch_size,
                                        max_objects=self.max_objects, objects=objects)
        if self.purpose == "classify":
            return image, batch["labels"]
        out = {"image": image}
        if self.cams:
            out["saliency"] = cam_saliency(batch["cams"], sizes, boxes, self.img_size // self.patch_size, flip)
        elif objects:
            out["object_patches"] = counts >= self.min_pixels
            out["object_ratio"] = counts.sum(-1).double().div(self.img_size ** 2).float()
        return out
