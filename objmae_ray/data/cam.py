"""Class activation maps (paper, appendix A, eq. 2) from a timm ResNet, cached once per dataset.

M_c(x, y) = sum_k w_k^c f_k(x, y): f = last conv features, w^c = the fc weights of the predicted
class c. Negatives are clamped to 0 and the map divided by its max (0..1). Images are squashed to
img_size x img_size for the classifier, so the low-res map [h, w] covers the whole image.

Cache: one safetensors file, tensor `cams` [M, h, w] float32 + metadata (`keys`: JSON list of image
paths relative to the image root, model, weights, img_size, skipped). Trials map a crop onto it with
`cam_patch_saliency` (mean of the bilinearly upsampled map over each patch, via roi_align).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.ops import roi_align

from objmae_ray.data.skips import LOAD_ERRORS
from objmae_ray.data.transforms import CropBox
from objmae_ray.errors import ConfigError

log = logging.getLogger("objmae_ray.data")


@torch.no_grad()
def class_activation_map(model: torch.nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """Eq. (2) for the predicted class, normalised to 0..1.

    imgs: [B, 3, H, W] (model-normalised) -> cams [B, h, w] (h, w: last conv feature grid).
    """
    features = model.forward_features(imgs)  # [B, C, h, w]
    predicted = model.forward_head(features).argmax(1)  # [B]
    weights = model.get_classifier().weight[predicted]  # [B, C]
    cams = torch.einsum("bc,bchw->bhw", weights, features).clamp_min(0)
    peak = cams.flatten(1).amax(1).clamp_min(1e-12)
    return cams / peak[:, None, None]


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file or a timm/torch checkpoint (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets one line
        raise ConfigError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def create_cam_model(name: str = "resnet50", weights: str | Path | None = None, pretrained: bool = True):
    """timm classifier in eval mode: ImageNet-1k weights from timm's hub, or from a local file
    (any number of classes: the head is sized from the file's classifier weight)."""
    model = timm.create_model(name, pretrained=pretrained and weights is None)
    if weights is not None:
        state = load_state(weights)
        head = state.get(f"{model.pretrained_cfg.get('classifier', 'fc')}.weight")
        if head is not None and head.ndim == 2 and head.shape[0] != model.num_classes:
            model.reset_classifier(head.shape[0])
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            reason = " ".join(line.strip() for line in str(err).splitlines()[1:2])[:200]
            raise ConfigError(f"{weights}: does not fit {name} ({reason})") from None
    return model.eval()


def list_images(image_root: Path) -> list[str]:
    """Image paths under image_root (torchvision ImageFolder's extensions), relative, sorted."""
    return sorted(p.relative_to(image_root).as_posix() for p in image_root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def build_cam_cache(image_root: str | Path, out_file: str | Path, *, model: torch.nn.Module, model_name: str,
                    weights: str = "timm-hub", img_size: int = 224, batch_size: int = 16) -> dict:
    """CAM of every readable image under image_root into out_file; returns {"images", "skipped", "shape"}."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise ConfigError(f"{image_root}: image directory not found")
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(input_size=(3, img_size, img_size), mean=config["mean"],
                                           std=config["std"], interpolation=config["interpolation"],
                                           crop_pct=1.0, crop_mode="squash")
    keys, cams, batch, batch_keys, skipped = [], [], [], [], []

    def flush():
        if batch:
            cams.append(class_activation_map(model, torch.stack(batch)))
            keys.extend(batch_keys)
            batch.clear()
            batch_keys.clear()

    for rel in list_images(image_root):
        try:
            with Image.open(image_root / rel) as img:
                batch.append(transform(img.convert("RGB")))
            batch_keys.append(rel)
        except LOAD_ERRORS as err:
            skipped.append(rel)
            log.warning("%s: skipping unreadable image (%s)", image_root / rel, err)
        if len(batch) == batch_size:
            flush()
    flush()
    if not keys:
        raise ConfigError(f"{image_root}: no readable image")
    stacked = torch.cat(cams).contiguous()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"keys": json.dumps(keys), "model": model_name, "weights": str(weights), "img_size": str(img_size),
            "skipped": json.dumps(skipped), "image_root": str(image_root.resolve())}
    save_file({"cams": stacked}, str(out_file), metadata=meta)
    return {"images": len(keys), "skipped": len(skipped), "shape": list(stacked.shape[1:])}


def load_cam_cache(path: str | Path) -> tuple[dict[str, int], torch.Tensor, dict[str, str]]:
    """(relative path -> row, cams [M, h, w], metadata) of a cache written by build_cam_cache."""
    path = Path(path)
    if path.is_dir():
        path = path / "cam.safetensors"
    if not path.is_file():
        raise ConfigError(f"{path}: CAM cache not found (build it with `objmae-data cam`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            cams = f.get_tensor("cams")
        keys = json.loads(meta["keys"])
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"{path}: not a CAM cache ({type(err).__name__}: {err})") from None
    return {k: i for i, k in enumerate(keys)}, cams, meta


def cam_patch_saliency(cam: torch.Tensor, box: CropBox, image_size: tuple[int, int], grid: int) -> torch.Tensor:
    """Per-patch saliency of a crop: mean of the bilinearly upsampled CAM over each patch.

    cam: [h, w] over the whole image of image_size (W, H); box: the crop in image pixels ->
    saliency [grid * grid] in 0..1 (row-major patches).
    """
    h, w = cam.shape
    W, H = image_size
    sx, sy = w / W, h / H
    roi = torch.tensor([[0.0, box.left * sx, box.top * sy, (box.left + box.width) * sx, (box.top + box.height) * sy]])
    pooled = roi_align(cam[None, None].float(), roi, output_size=(grid, grid), spatial_scale=1.0,
                       sampling_ratio=4, aligned=True)
    return pooled.reshape(grid * grid).clamp(0, 1)
