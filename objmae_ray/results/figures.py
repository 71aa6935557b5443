"""Figures of a finished sweep from real model outputs (PNG, matplotlib Agg).

  reconstruct / plot_reconstructions  paper Fig. 8: source patches, target patches, reconstruction of the
                                      targets (patches outside each set darker), from a trial checkpoint
  encoder_attentions / rollout /      paper Fig. 10: attention rollout (Abnar & Zuidema, 2020) of the
  rollout_map / plot_rollout          encoder's cls token over the patches
  validation_batch                    the first images of a trial's pre-train validation split + their masks
(Fig. 5, the object-ratio histogram, is objmae_ray/data/stats.py; the model of a checkpoint comes from
objmae_ray/train/checkpoint.py's `objmae_from_checkpoint`.)

Shapes: B images, N = grid * grid patches, L source / target slots, T = 1 + L encoder tokens.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure  # object API: renders with Agg, no pyplot / global backend state
from torch import Tensor
from torch.utils.data import default_collate

from objmae_ray.config import TrialConfig
from objmae_ray.data import build_pretrain_dataset
from objmae_ray.data.transforms import denormalize
from objmae_ray.errors import ConfigError
from objmae_ray.method.masking import Masks
from objmae_ray.method.model import ObjMAE
from objmae_ray.train.pretrain import sample_batch_masks

TITLE_CHARS = 30  # characters per line of a 2.2-inch panel's title at 6-7 pt
DARKEN = 0.3  # brightness of patches outside the shown set (paper: "the masked patches are darker")


# ---- model and images ------------------------------------------------------------------------------
def validation_batch(cfg: TrialConfig, num_images: int, *, seed: int = 0) -> tuple[dict, Masks]:
    """The first `num_images` of the trial's pre-train validation split (no random crop) and masks sampled
    with the trial's masking settings (objmae_ray.train.pretrain's `sample_batch_masks`, seeded).

    Returns (batch {"image": [B, 3, H, W], "object_patches"/"object_ratio" or "saliency"}, Masks [B, L]).
    """
    dataset = build_pretrain_dataset(cfg.pretrain.data, img_size=cfg.model.img_size, patch_size=cfg.model.patch_size,
                                     patch_threshold=cfg.masking.patch_threshold, split="val",
                                     min_ratio=cfg.masking.min_ratio)
    if len(dataset) == 0:
        raise ConfigError(f"pretrain.data: the validation split ({cfg.pretrain.data.val_split}) has no images")
    batch = default_collate([dataset[i] for i in range(min(num_images, len(dataset)))])
    generator = torch.Generator().manual_seed(seed)
    masks = sample_batch_masks(batch, num_patches=(cfg.model.img_size // cfg.model.patch_size) ** 2,
                               masking=cfg.masking, generator=generator, device=torch.device("cpu"))
    return batch, masks


def patch_set(idx: Tensor, valid: Tensor, num_patches: int) -> Tensor:
    """idx / valid: [B, L] -> [B, N] bool, True at the patches of the valid slots."""
    rows = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx)
    out = torch.zeros(idx.shape[0], num_patches, dtype=torch.bool)
    out[rows[valid], idx[valid]] = True
    return out


def selected_region(masks: Masks, num_patches: int) -> Tensor:
    """Each image's selected region (its valid source + target patches): [B, N] bool."""
    return patch_set(masks.src_idx, masks.src_valid, num_patches) | patch_set(masks.tgt_idx, masks.tgt_valid,
                                                                              num_patches)


def region_slots(region: Tensor) -> tuple[Tensor, Tensor]:
    """region [B, N] bool -> (idx [B, R], valid [B, R]): each image's region patches in grid order,
    R = the largest region, shorter rows padded with invalid slots (for `rollout_map` of a region)."""
    order = torch.argsort((~region).to(torch.int8), dim=1, stable=True)  # region patches first
    idx = order[:, :max(1, int(region.sum(1).max()))]
    return idx, torch.gather(region, 1, idx)


# ---- reconstruction (Fig. 8) -----------------------------------------------------------------------
@dataclass
class Reconstruction:
    """Panels (denormalised pixels in 0..1) and errors of one batch."""

    source: Tensor  # [B, 3, H, W] image, patches outside the source darker
    target: Tensor  # [B, 3, H, W] image, patches outside the target darker
    reconstruction: Tensor  # [B, 3, H, W] predicted target patches, the rest of the image darker
    error: Tensor  # [B] MSE of the prediction on the valid target patches, in the loss's pixel space
    zero_error: Tensor  # [B] MSE of predicting 0 there (the dataset mean colour; per-patch mean with norm_pix_loss)


@torch.no_grad()
def reconstruct(model: ObjMAE, imgs: Tensor, masks: Masks) -> Reconstruction:
    """Run the model on imgs [B, 3, H, W] (ImageNet-normalised) with masks [B, L]; panels + errors."""
    model.eval()
    _, pred = model(imgs, masks.src_idx, masks.tgt_idx, masks.src_valid, masks.tgt_valid)  # [B, L, p*p*3]
    patches = model.patchify(imgs)  # [B, N, p*p*3]
    target = torch.gather(patches, 1, masks.tgt_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    if model.norm_pix_loss:  # the loss compares with per-patch normalised pixels: undo that for display
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        shown = pred * (var + 1.0e-6) ** 0.5 + mean
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    else:
        shown = pred
    weight = masks.tgt_valid.float()  # [B, L]
    count = weight.sum(1).clamp(min=1) * patches.shape[-1]
    error = (((pred - target) ** 2).sum(-1) * weight).sum(1) / count
    zero_error = ((target ** 2).sum(-1) * weight).sum(1) / count

    n = model.num_patches
    src_set = patch_set(masks.src_idx, masks.src_valid, n)  # [B, N]
    tgt_set = patch_set(masks.tgt_idx, masks.tgt_valid, n)
    filled = patches.clone()
    rows = torch.arange(imgs.shape[0]).unsqueeze(1).expand_as(masks.tgt_idx)[masks.tgt_valid]
    filled[rows, masks.tgt_idx[masks.tgt_valid]] = shown[masks.tgt_valid]

    def panel(pixels: Tensor, keep: Tensor) -> Tensor:  # [B, N, p*p*3], [B, N] -> [B, 3, H, W] in 0..1
        shade = torch.where(keep, 1.0, DARKEN)[..., None].expand_as(pixels)
        images = torch.stack([denormalize(img) for img in model.unpatchify(pixels)])
        return images * model.unpatchify(shade)

    return Reconstruction(panel(patches, src_set), panel(patches, tgt_set), panel(filled, tgt_set), error, zero_error)


def plot_reconstructions(rec: Reconstruction, path: str | Path) -> None:
    """PNG grid: one row per image, columns source / target / reconstruction (Fig. 8)."""
    rows = rec.source.shape[0]
    fig = Figure(figsize=(6.6, 2.2 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        panels = (rec.source[i], rec.target[i], rec.reconstruction[i])
        titles = ("source", "target", f"reconstruction (MSE {rec.error[i]:.3f}, zero {rec.zero_error[i]:.3f})")
        for ax, image, title in zip(axes[i], panels, titles):
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_axis_off()
            if i == 0 or ax is axes[i][2]:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- attention rollout (Fig. 10) -----------------------------------------------------------------
@torch.no_grad()
def encoder_attentions(model: ObjMAE, imgs: Tensor, src_idx: Tensor | None = None,
                       src_valid: Tensor | None = None) -> list[Tensor]:
    """Attention weights of every encoder block: list of [B, heads, T, T], T = 1 + L (cls first).

    timm's Attention uses fused SDPA and stores no weights, so a forward hook on each `blocks[i].attn`
    recomputes softmax(q k^T * scale) from its qkv projection of the block's input.
    src_idx: [B, L] patches fed to the encoder (default: all N patches).
    """
    if src_idx is None:
        src_idx = torch.arange(model.num_patches).expand(imgs.shape[0], -1)
    attentions: list[Tensor] = []

    def hook(attn, inputs, output):
        x = inputs[0]  # [B, T, D]
        b, t, _ = x.shape
        q, k, _ = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        attentions.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))

    handles = [block.attn.register_forward_hook(hook) for block in model.blocks]
    try:
        model.eval()
        model.forward_encoder(imgs, src_idx, src_valid)
    finally:
        for handle in handles:
            handle.remove()
    return attentions


def rollout(attentions: list[Tensor]) -> Tensor:
    """Attention rollout: per layer average the heads, add the identity, renormalise the rows, then
    multiply through the layers (last layer leftmost). [B, heads, T, T] per layer -> [B, T, T], rows sum to 1."""
    result = None
    for attn in attentions:
        a = attn.mean(dim=1)  # [B, T, T]
        a = a + torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def rollout_map(model: ObjMAE, imgs: Tensor, src_idx: Tensor | None = None,
                src_valid: Tensor | None = None) -> Tensor:
    """The cls token's rollout row over the fed patches, on the patch grid: [B, grid, grid] (patches not fed: 0)."""
    if src_idx is None:
        src_idx = torch.arange(model.num_patches).expand(imgs.shape[0], -1)
    cls_row = rollout(encoder_attentions(model, imgs, src_idx, src_valid))[:, 0, 1:]  # [B, L]
    if src_valid is not None:
        cls_row = cls_row * src_valid
    grid = torch.zeros(imgs.shape[0], model.num_patches, dtype=cls_row.dtype).scatter_add_(1, src_idx, cls_row)
    return grid.reshape(-1, model.grid_size, model.grid_size)


def plot_rollout(imgs: Tensor, region: Tensor, whole: Tensor, inside: Tensor, path: str | Path) -> None:
    """PNG: per image, the image with the selected region lighter, rollout over the whole image, rollout of the
    region's patches only. imgs [B, 3, H, W] normalised; region [B, N] bool; whole / inside [B, grid, grid]."""
    rows, size, grid = imgs.shape[0], imgs.shape[-1], whole.shape[-1]
    fig = Figure(figsize=(6.6, 2.2 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        image = denormalize(imgs[i]).permute(1, 2, 0).numpy()
        shade = torch.where(region[i], 1.0, DARKEN).reshape(grid, grid).repeat_interleave(size // grid, 0)
        shade = shade.repeat_interleave(size // grid, 1)[..., None].numpy()
        axes[i][0].imshow(image * shade)
        for ax, heat in ((axes[i][1], whole[i]), (axes[i][2], inside[i])):
            ax.imshow(image)
            ax.imshow((heat / heat.max().clamp(min=1e-12)).numpy(), cmap="jet", alpha=0.5,
                      extent=(0, size, size, 0), interpolation="nearest")
        for ax, title in zip(axes[i], ("selected region (lighter)", "rollout: whole image", "rollout: region only")):
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- the whole-object probe (Fig. 2 / 7) -----------------------------------------------------------
def object_probe_masks(batch: dict, min_ratio: float) -> Masks:
    """Masks that hide one whole object: target = every patch of each image's largest eligible object,
    source = every other patch (paper Fig. 7: predict one object from the rest of the image).

    batch: {"object_patches": [B, K, N] bool, "object_ratio": [B, K]} (slots largest first). Sides have
    different lengths per image: slots past an image's own count are invalid (zero padding).
    """
    patches, ratio = batch["object_patches"].bool(), batch["object_ratio"]
    eligible = (ratio >= min_ratio) & (patches.sum(-1) >= 2)  # [B, K]
    if not eligible.any(1).all():
        raise ConfigError("object probe: an image has no eligible object")
    first = eligible.float().argmax(1)  # the largest eligible object (slots are sorted by area)
    obj = patches[torch.arange(patches.shape[0]), first]  # [B, N]
    tgt_idx, tgt_valid = region_slots(obj)
    src_idx, src_valid = region_slots(~obj)
    return Masks(src_idx, tgt_idx, src_valid, tgt_valid, torch.zeros(obj.shape[0], dtype=torch.bool))


def _wrap(*lines: str, width: int = TITLE_CHARS) -> str:
    """A panel title in lines of at most `width` characters (a 2.2-inch column at 6 pt holds about 34)."""
    return "\n".join(textwrap.fill(line, width) for line in lines)


def plot_object_probe(imgs: Tensor, probes: dict[str, tuple[Reconstruction, Tensor]], path: str | Path) -> None:
    """PNG: per image, the hidden object (lighter), then per model its reconstruction of the object and the
    attention rollout of its encoder over the rest of the image. probes: label -> (Reconstruction, rollout
    [B, grid, grid])."""
    rows, size = imgs.shape[0], imgs.shape[-1]
    first = next(iter(probes.values()))[0]
    fig = Figure(figsize=(2.2 * (1 + 2 * len(probes)), 2.2 * rows))
    axes = fig.subplots(rows, 1 + 2 * len(probes), squeeze=False)
    for i in range(rows):
        panels = [("hidden object (lighter)", first.target[i], None)]
        for label, (rec, heat) in probes.items():
            panels += [(_wrap(f"{label}: object rebuilt", f"MSE {rec.error[i]:.3f}, zero {rec.zero_error[i]:.3f}"),
                        rec.reconstruction[i], None),
                       (_wrap(f"{label}: rollout over the rest"), denormalize(imgs[i]), heat[i])]
        for ax, (title, image, heat) in zip(axes[i], panels):
            ax.imshow(image.permute(1, 2, 0).numpy())
            if heat is not None:
                ax.imshow((heat / heat.max().clamp(min=1e-12)).numpy(), cmap="jet", alpha=0.5,
                          extent=(0, size, size, 0), interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
