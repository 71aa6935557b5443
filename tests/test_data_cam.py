"""CAM (paper eq. 2) against a hand computation, the CAM cache and the CAM-backed folder dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from objmae_ray.config import DataConfig
from objmae_ray.data import build_pretrain_dataset
from objmae_ray.data.cam import build_cam_cache, cam_patch_saliency, class_activation_map, create_cam_model, load_cam_cache
from objmae_ray.data.cli import main
from objmae_ray.data.folder import CamFolder
from objmae_ray.data.transforms import CropBox, crop_image
from objmae_ray.errors import ConfigError
from trial_helpers import noise_folder


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()


def test_cam_equals_hand_computation(resnet):
    imgs = torch.randn(3, 3, 64, 96)
    cams = class_activation_map(resnet, imgs)
    with torch.no_grad():
        x = imgs
        for name in ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"]:
            x = getattr(resnet, name)(x)  # last conv features f_k(x, y): [3, 512, 2, 3]
        logits = resnet.fc(x.mean((2, 3)))
    assert cams.shape == (3, 2, 3)
    for b in range(3):
        c = int(logits[b].argmax())
        m = sum(resnet.fc.weight[c, k] * x[b, k] for k in range(x.shape[1]))  # eq. (2)
        m = m.clamp(min=0)
        expected = m / m.max()
        assert torch.allclose(cams[b], expected, atol=1e-5)
        assert cams[b].max().item() == pytest.approx(1.0)


def test_cam_patch_saliency_is_patch_mean_of_bilinear_map():
    cam = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # map cell centres at image pixels 16 and 48
    full = cam_patch_saliency(cam, CropBox(0, 0, 64, 64), (64, 64), grid=2)
    # bilinear field along one axis: 1 up to 16, linear to 0 at 48; its mean over [0, 32) is 0.875,
    # over [32, 64) 0.125; in 2-D the products
    assert full.tolist() == pytest.approx([0.875**2, 0.875 * 0.125, 0.125 * 0.875, 0.125**2], abs=1e-6)
    crop = cam_patch_saliency(cam, CropBox(0, 0, 32, 32), (64, 64), grid=1)  # top-left quarter only
    assert crop.tolist() == pytest.approx([0.875**2], abs=1e-6)
    assert torch.equal(cam_patch_saliency(torch.full((7, 7), 0.5), CropBox(3, 5, 20, 30), (80, 60), 4), torch.full((16,), 0.5))


@pytest.fixture()
def image_folder(tmp_path):
    root = noise_folder(tmp_path / "images" / "train", ("a", "b b"), [(40, 56), (48, 56)], name="img ({i}).png")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def test_cam_cache_cli_and_folder_dataset(tmp_path, image_folder, resnet, capsys):
    weights = tmp_path / "resnet10t.safetensors"
    save_file(resnet.state_dict(), str(weights))
    out = tmp_path / "cam.safetensors"
    rc = main(["cam", str(image_folder), "--out", str(out), "--model", "resnet10t", "--weights", str(weights),
               "--img-size", "64", "--batch-size", "3"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and report["skipped"] == 1 and report["shape"] == [2, 2]
    rows, cams, meta = load_cam_cache(out)
    assert sorted(rows) == ["a/img (0).png", "a/img (1).png", "b b/img (0).png", "b b/img (1).png"]
    assert meta["model"] == "resnet10t" and json.loads(meta["skipped"]) == ["a/broken.jpg"]
    # the cached map is the CAM of the squashed, model-normalised image
    model = create_cam_model("resnet10t", weights=weights)
    config = timm.data.resolve_data_config({}, model=model)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[config["interpolation"]]
    img = Image.open(image_folder / "b b" / "img (1).png").convert("RGB").resize((64, 64), resample)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(config["mean"]).view(3, 1, 1)) / torch.tensor(config["std"]).view(3, 1, 1)
    assert torch.allclose(cams[rows["b b/img (1).png"]], class_activation_map(model, x[None])[0], atol=1e-3)

    cfg = DataConfig(kind="folder", root=str(image_folder.parent), cam_cache=str(out))
    val = build_pretrain_dataset(cfg, img_size=32, patch_size=8, split="train")
    assert val.stats == {"images": 5, "kept": 4, "missing_cam": 1}
    sample = val[0]
    assert set(sample) == {"image", "saliency"}
    assert sample["image"].shape == (3, 32, 32) and sample["saliency"].shape == (16,)
    assert 0 <= sample["saliency"].min() and sample["saliency"].max() <= 1
    # without the random crop the saliency is the patch mean of the whole cached map
    cfg = DataConfig(kind="folder", root=str(image_folder.parent), cam_cache=str(out), train_split="-", val_split="train")
    whole = build_pretrain_dataset(cfg, img_size=32, patch_size=8, split="val")
    rel, row = whole.samples[3]
    size = Image.open(image_folder / rel).size
    expected = cam_patch_saliency(cams[row], CropBox(0, 0, size[1], size[0]), size, grid=4)
    assert torch.equal(whole[3]["saliency"], expected)


def test_cam_errors_name_the_path(tmp_path, resnet):
    with pytest.raises(ConfigError, match="nothing.safetensors: CAM cache not found"):
        load_cam_cache(tmp_path / "nothing.safetensors")
    with pytest.raises(ConfigError, match="w.pt: weights file not found"):
        create_cam_model("resnet10t", weights=tmp_path / "w.pt")
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 3)}}, tmp_path / "small.pt")
    with pytest.raises(ConfigError, match="small.pt: does not fit resnet10t"):
        create_cam_model("resnet10t", weights=tmp_path / "small.pt")
    with pytest.raises(ConfigError, match="missing: image directory not found"):
        build_cam_cache(tmp_path / "missing", tmp_path / "c.safetensors", model=resnet, model_name="resnet10t")


def test_folder_without_cam_cache_serves_images_for_mae(image_folder):
    """MAE pre-training on an image folder (paper Table 4, alpha 1/2 row): images only, every file kept."""
    from objmae_ray.method.masking import sample_masks

    cfg = DataConfig(kind="folder", root=str(image_folder.parent))
    ds = build_pretrain_dataset(cfg, img_size=32, patch_size=8, split="train")
    assert len(ds) == 5  # 4 images + the broken one (replaced at load time, counted)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert set(batch) == {"image"} and batch["image"].shape == (5, 3, 32, 32)
    assert ds.skipped == 1
    masks = sample_masks(batch_size=5, num_patches=16, alpha=0.5, selection="mae", padding="zero")
    assert masks.src_valid.all() and masks.tgt_valid.all()


def test_random_crop_saliency_is_the_crop_of_the_full_image_saliency(tmp_path, monkeypatch):
    """CamFolder with a forced crop box: the sample's saliency equals the full-image saliency map cut to
    the box, and the pixels are that box of the image. The image is not square (96 x 64), so swapping
    width and height anywhere shows."""
    root = tmp_path / "folder" / "train"
    (root / "c").mkdir(parents=True)
    pixels = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "c" / "x.png")
    cam = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))  # [h, w] over the whole image
    save_file({"cams": cam[None].contiguous()}, str(tmp_path / "cam.safetensors"), metadata={"keys": json.dumps(["c/x.png"])})
    calls = []
    monkeypatch.setattr("torchvision.transforms.RandomResizedCrop.get_params",
                        lambda img, scale, ratio: calls.append((img.size, tuple(scale))) or (16, 24, 32, 48))
    ds = CamFolder(root, tmp_path / "cam.safetensors", img_size=32, patch_size=8, crop_scale=(0.3, 0.9))
    sample = ds[0]
    assert calls == [((96, 64), (0.3, 0.9))]
    box = CropBox(top=16, left=24, height=32, width=48)
    # full-image saliency on an 8 x 8 grid: cells of 12 x 8 pixels; the box is exactly cells [2:6, 2:6],
    # and each of the crop's 4 x 4 patches is one such cell
    full = cam_patch_saliency(cam, CropBox(0, 0, 64, 96), (96, 64), grid=8).view(8, 8)
    torch.testing.assert_close(sample["saliency"], full[2:6, 2:6].flatten(), rtol=0, atol=1e-6)
    # the same from the bilinearly upsampled map, by pixel means (roi_align samples 4 x 4 points per
    # patch instead of every pixel centre: equal to a few thousandths)
    dense = F.interpolate(cam[None, None], size=(64, 96), mode="bilinear", align_corners=False)[0, 0]
    by_pixels = dense[16:48, 24:72].reshape(4, 8, 4, 12).mean((1, 3)).flatten()
    torch.testing.assert_close(sample["saliency"], by_pixels, rtol=0, atol=5e-3)
    with Image.open(root / "c" / "x.png") as img:
        assert torch.equal(sample["image"], crop_image(img, box, 32))
