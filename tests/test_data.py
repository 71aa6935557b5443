"""Datasets: patch maps, crop alignment, filtering, bad input, synthetic set, classification loaders."""
from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from objmae_ray.config import DataConfig
from objmae_ray.data import build_classification_dataset, build_pretrain_dataset
from objmae_ray.data import synthetic
from objmae_ray.data.coco import CocoObjects
from objmae_ray.data.patches import object_ratio, patch_object_map
from objmae_ray.data.transforms import CropBox, crop_image, crop_masks, denormalize
from objmae_ray.errors import ConfigError
from objmae_ray.method.masking import eligible_objects, sample_masks, target_length

RED = (230, 20, 20)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


# ----------------------------------------------------------------------------- helpers


def rect_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def rect_rle(x0, y0, x1, y1, height, width):
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def write_coco(root, images, annotations):
    """images: [(file_name, width, height, rect or None)], writes PNGs with a red rectangle + JSON."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for i, (name, width, height, rect) in enumerate(images, start=1):
        pixels = np.full((height, width, 3), 40, np.uint8)
        if rect is not None:
            x0, y0, x1, y1 = rect
            pixels[y0:y1, x0:x1] = RED
        if name is not None:
            Image.fromarray(pixels).save(root / "train" / name)
        entries.append({"id": i, "file_name": name or f"missing{i}.png", "width": width, "height": height})
    for k, ann in enumerate(annotations, start=1):
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", 1)
        ann["id"] = k
    dataset = {"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    ann_file = root / "annotations" / "instances_train.json"
    ann_file.write_text(json.dumps(dataset))
    return ann_file


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    return synthetic.ensure_synthetic(tmp_path_factory.mktemp("cache"), num_images=24, img_size=64, seed=3)


# ----------------------------------------------------------------------------- patch maps


def test_object_ratio_exact_on_known_masks():
    masks = torch.zeros(3, 10, 20, dtype=torch.uint8)
    masks[0, :, :5] = 1  # 50 px
    masks[1, 2:5, 3:10] = 1  # 21 px
    assert torch.equal(object_ratio(masks), torch.tensor([50 / 200, 21 / 200, 0.0]))  # float32, exact


@pytest.mark.parametrize("patch,pixels,expected", [(10, 20, True), (10, 19, False), (16, 52, True), (16, 51, False)])
def test_patch_threshold_exact_at_boundary(patch, pixels, expected):
    masks = torch.zeros(1, 2 * patch, 2 * patch, dtype=torch.uint8)
    block = torch.zeros(patch * patch, dtype=torch.uint8)
    block[:pixels] = 1
    masks[0, patch:, patch:] = block.view(patch, patch)  # only patch 3 (bottom right) has object pixels
    patches = patch_object_map(masks, patch, 0.2)
    assert patches[0].tolist() == [False, False, False, expected]


# ----------------------------------------------------------------------------- crop alignment


@pytest.mark.parametrize("segmentation", ["polygon", "rle"])
def test_full_image_patch_map_of_known_rectangle(tmp_path, segmentation):
    # 100 x 80 image, rectangle x in [25, 75), y in [20, 60) -> squashed to 32 px: [8, 24) x [8, 24)
    seg = rect_polygon(25, 20, 75, 60) if segmentation == "polygon" else rect_rle(25, 20, 75, 60, 80, 100)
    ann_file = write_coco(tmp_path, [("a.png", 100, 80, (25, 20, 75, 60))], [{"image_id": 1, "segmentation": seg, "area": 2000}])
    ds = CocoObjects(tmp_path / "train", ann_file, img_size=32, patch_size=8, max_objects=3, random_crop=False)
    sample = ds[0]
    assert sample["object_patches"].shape == (3, 16) and sample["object_ratio"].shape == (3,)
    assert torch.nonzero(sample["object_patches"][0]).flatten().tolist() == [5, 6, 9, 10]
    assert sample["object_ratio"].tolist() == [0.25, 0.0, 0.0]
    assert not sample["object_patches"][1:].any()


@pytest.mark.parametrize("segmentation", ["polygon", "rle"])
def test_random_crop_keeps_masks_and_pixels_aligned(tmp_path, monkeypatch, segmentation):
    seg = rect_polygon(25, 20, 75, 60) if segmentation == "polygon" else rect_rle(25, 20, 75, 60, 80, 100)
    ann_file = write_coco(tmp_path, [("a.png", 100, 80, (25, 20, 75, 60))], [{"image_id": 1, "segmentation": seg, "area": 2000}])
    # force torchvision's sampler to return crop (top=10, left=15, h=64, w=64) -> scale 0.5 into 32 px
    calls = []
    monkeypatch.setattr("torchvision.transforms.RandomResizedCrop.get_params",
                        lambda img, scale, ratio: calls.append(img.size) or (10, 15, 64, 64))
    ds = CocoObjects(tmp_path / "train", ann_file, img_size=32, patch_size=8, random_crop=True)
    sample = ds[0]
    assert calls == [(100, 80)]
    # in the crop the rectangle covers x in [5, 30), y in [5, 25); share of each patch row / column:
    col_share = np.array([3, 8, 8, 6]) / 8
    row_share = np.array([3, 8, 8, 1]) / 8
    expected = (row_share[:, None] * col_share[None, :] >= 0.2).ravel()
    assert sample["object_patches"][0].numpy().tolist() == expected.tolist()
    assert sample["object_ratio"][0].item() == pytest.approx(25 * 20 / 32**2, abs=1e-7)  # ratio on the crop
    # pixels: the rectangle is red exactly where the mask says (patch centres inside / outside)
    pixels = denormalize(sample["image"]) * 255  # [3, 32, 32]
    assert pixels[:, 15, 15].tolist() == pytest.approx(RED, abs=3)  # inside
    assert pixels[:, 2, 2].tolist() == pytest.approx((40, 40, 40), abs=3)  # outside (above-left)
    assert pixels[:, 28, 15].tolist() == pytest.approx((40, 40, 40), abs=3)  # below the rectangle


def test_crop_masks_matches_nearest_resize():
    masks = (torch.rand(2, 50, 70) > 0.5).to(torch.uint8)
    box = CropBox(top=5, left=9, height=40, width=52)
    expected = torch.nn.functional.interpolate(masks[None, :, 5:45, 9:61], size=(32, 32), mode="nearest-exact")[0]
    assert torch.equal(torch.from_numpy(crop_masks(masks.numpy(), box, 32)), expected)


# ----------------------------------------------------------------------------- filtering and bad input


def _filter_set(tmp_path):
    big = {"image_id": 1, "segmentation": rect_polygon(0, 0, 50, 40), "area": 2000}  # ratio 0.25
    small = {"image_id": 2, "segmentation": rect_polygon(0, 0, 20, 16), "area": 320}  # ratio 0.04 < 0.05
    crowd = {"image_id": 3, "segmentation": rect_rle(0, 0, 100, 80, 80, 100), "area": 8000, "iscrowd": 1}
    valid2 = {"image_id": 5, "segmentation": rect_polygon(10, 10, 60, 50), "area": 2000}
    missing = {"image_id": 6, "segmentation": rect_polygon(0, 0, 50, 40), "area": 2000}
    images = [("a.png", 100, 80, (0, 0, 50, 40)), ("b.png", 100, 80, None), ("c.png", 100, 80, None),
              ("d.png", 100, 80, None), ("e.png", 100, 80, (10, 10, 60, 50)), (None, 100, 80, None)]
    return write_coco(tmp_path, images, [big, small, crowd, valid2, missing])


def test_filtering_drops_images_without_eligible_object(tmp_path, caplog):
    ann_file = _filter_set(tmp_path)
    with caplog.at_level(logging.WARNING, logger="objmae_ray.data"):
        ds = CocoObjects(tmp_path / "train", ann_file, img_size=32, patch_size=8)
    # b: only a 0.04 object, c: only a crowd region (not an object), d: no annotation, image 6: no file
    assert ds.stats == {"images": 6, "kept": 2, "dropped_no_object": 3, "missing_file": 1}
    assert len(ds) == 2 and ds.image_ids == [1, 5]
    assert len([r for r in caplog.records if "kept 2 of 6" in r.getMessage()]) == 1
    assert sorted(ds.all_object_ratios) == pytest.approx([0.04, 0.25, 0.25, 0.25])  # crowd excluded


def test_keeps_the_k_largest_objects_largest_first(tmp_path):
    """max_objects=2 of four objects (listed out of order): the two largest by area, in slots 0 and 1."""
    rects = {"a": (0, 0, 20, 16), "c": (0, 50, 30, 80), "b": (30, 0, 100, 40), "d": (50, 50, 100, 80)}
    anns = [{"image_id": 1, "segmentation": rect_polygon(*r), "area": (r[2] - r[0]) * (r[3] - r[1])}
            for r in rects.values()]  # areas 320, 900, 2800, 1500
    ann_file = write_coco(tmp_path, [("a.png", 100, 80, None)], anns)
    ds = CocoObjects(tmp_path / "train", ann_file, img_size=32, patch_size=8, max_objects=2, random_crop=False)
    assert [a["area"] for a in ds.objects[1]] == [2800, 1500]
    assert sorted(ds.all_object_ratios) == pytest.approx([0.04, 0.1125, 0.1875, 0.35])  # Fig. 5 sees all four
    sample = ds[0]
    assert sample["object_patches"].shape == (2, 16)
    # squashed to 32 px: b covers x 9.6..32, y 0..16 (ratio 0.35); d x 16..32, y 20..32 (ratio 0.1875)
    assert sample["object_ratio"].tolist() == pytest.approx([0.35, 0.1875], abs=0.02)
    assert torch.nonzero(sample["object_patches"][0]).flatten().tolist() == [1, 2, 3, 5, 6, 7]
    assert torch.nonzero(sample["object_patches"][1]).flatten().tolist() == [10, 11, 14, 15]
    wide = CocoObjects(tmp_path / "train", ann_file, img_size=32, patch_size=8, max_objects=6, random_crop=False)
    assert [a["area"] for a in wide.objects[1]] == [2800, 1500, 900, 320]  # fewer objects than slots: all
    assert wide[0]["object_ratio"][4:].tolist() == [0.0, 0.0] and not wide[0]["object_patches"][4:].any()


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog):
    ann_file = _filter_set(tmp_path)
    (tmp_path / "train" / "a.png").write_bytes(b"not a png at all")
    ds = CocoObjects(tmp_path / "train", ann_file, img_size=32, patch_size=8, random_crop=False)
    with caplog.at_level(logging.WARNING, logger="objmae_ray.data"):
        first, again = ds[0], ds[0]
    expected = ds[1]  # index 0 is substituted by the next readable one, deterministically
    assert torch.equal(first["object_patches"], expected["object_patches"])
    assert torch.equal(again["image"], expected["image"])
    assert ds.skipped == 2
    assert len([r for r in caplog.records if "a.png" in r.getMessage()]) == 1  # warned once


def test_missing_paths_name_the_path(tmp_path):
    ann_file = _filter_set(tmp_path)
    with pytest.raises(ConfigError, match=str(tmp_path / "nope")):
        CocoObjects(tmp_path / "nope", ann_file, img_size=32, patch_size=8)
    with pytest.raises(ConfigError, match="instances_val.json: annotation file not found"):
        CocoObjects(tmp_path / "train", tmp_path / "annotations" / "instances_val.json", img_size=32, patch_size=8)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not a readable JSON"):
        CocoObjects(tmp_path / "train", tmp_path / "bad.json", img_size=32, patch_size=8)
    with pytest.raises(ConfigError, match="nowhere: dataset root not found"):
        build_pretrain_dataset(DataConfig(kind="coco", root=str(tmp_path / "nowhere")), img_size=32, patch_size=8)
    (tmp_path / "folder_root").mkdir()
    with pytest.raises(ConfigError, match="folder_root/train: image folder not found"):
        build_pretrain_dataset(DataConfig(kind="folder", root=str(tmp_path / "folder_root")), img_size=32, patch_size=8)
    with pytest.raises(ConfigError, match=str(tmp_path / "cifar-100-python" / "train")):
        build_classification_dataset(DataConfig(kind="cifar100", root=str(tmp_path)), img_size=32, split="train", train=True)
    with pytest.raises(ConfigError, match="missing: image folder not found"):
        build_classification_dataset(DataConfig(kind="folder", root=str(tmp_path)), img_size=32, split="missing", train=True)


# ----------------------------------------------------------------------------- synthetic scenes


def test_synthetic_is_deterministic_and_keyed(tmp_path):
    a = synthetic.ensure_synthetic(tmp_path / "a", num_images=6, img_size=48, seed=1)
    b = synthetic.ensure_synthetic(tmp_path / "b", num_images=6, img_size=48, seed=1)
    c = synthetic.ensure_synthetic(tmp_path / "a", num_images=6, img_size=48, seed=2)
    d = synthetic.ensure_synthetic(tmp_path / "a", num_images=6, img_size=32, seed=1)
    for split in ("train", "val"):
        ja = (a / "annotations" / f"instances_{split}.json").read_bytes()
        assert ja == (b / "annotations" / f"instances_{split}.json").read_bytes()
        assert ja != (c / "annotations" / f"instances_{split}.json").read_bytes()
    assert len({a.name, c.name, d.name}) == 3 and a.name == b.name  # keyed by seed and size
    assert (a / "train" / "000005.png").read_bytes() == (b / "train" / "000005.png").read_bytes()
    assert synthetic.ensure_synthetic(tmp_path / "a", num_images=6, img_size=48, seed=1) == a  # reused
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([a.name, c.name, d.name])  # no temp dirs


def test_synthetic_validation_split_size(tmp_path):
    """data.num_val sizes the val split (a quarter of num_images by default); the train split, the store's
    key and the dataset a phase reads follow it."""
    from objmae_ray.config import DataConfig
    from objmae_ray.data.layout import coco_paths
    from objmae_ray.data.pack import auto_store_path

    default, larger = DataConfig(num_images=8, root=str(tmp_path)), DataConfig(num_images=8, num_val=12, root=str(tmp_path))
    assert (default.val_images, larger.val_images) == (2, 12)
    counts = {}
    for cfg in (default, larger):
        for split in ("train", "val"):
            _, ann = coco_paths(cfg, split, img_size=32)
            counts[cfg.val_images, split] = len(json.loads(ann.read_text())["images"])
    assert counts == {(2, "train"): 8, (2, "val"): 2, (12, "train"): 8, (12, "val"): 12}
    assert auto_store_path(default, img_size=32) != auto_store_path(larger, img_size=32)


def test_synthetic_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real = synthetic.write_split

    def fail_on_val(out, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        real(out, split, *args)

    monkeypatch.setattr(synthetic, "write_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic(tmp_path, num_images=4, img_size=32)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_masks_are_exact_visible_parts(tiny_synthetic):
    data = json.loads((tiny_synthetic / "annotations" / "instances_train.json").read_text())
    assert data["image_classes"] == ["circle", "square", "triangle"]
    assert len(data["images"]) == 24
    by_image = {}
    for ann in data["annotations"]:
        mask = mask_utils.decode(ann["segmentation"])
        assert ann["area"] == int(mask.sum()) > 0
        by_image.setdefault(ann["image_id"], []).append((mask, ann["category_id"]))
    for info in data["images"]:
        masks = np.stack([m for m, _ in by_image[info["id"]]])
        assert masks.sum(0).max() == 1  # visible parts never overlap
        areas = masks.reshape(len(masks), -1).sum(1)
        assert info["label"] == by_image[info["id"]][int(areas.argmax())][1] - 1  # shape of the largest object
        pixels = np.asarray(Image.open(tiny_synthetic / "train" / info["file_name"]), dtype=np.float32)
        for mask, _ in by_image[info["id"]]:  # each object is one flat colour (+ small noise)
            assert pixels[mask.astype(bool)].std(0).max() < 12


def test_synthetic_through_the_coco_loader(tiny_synthetic):
    cfg = DataConfig(kind="synthetic", root=str(tiny_synthetic.parent), num_images=24, max_objects=6)
    ds = build_pretrain_dataset(cfg, img_size=64, patch_size=8, split="val", seed=3)
    assert ds.random_crop is False and len(ds) == ds.stats["kept"] <= 6
    # full image at its own size: object ratio on the crop == COCO area / pixels, exactly
    sample = ds[0]
    anns = ds.objects[ds.image_ids[0]]
    assert sample["object_ratio"][: len(anns)].tolist() == pytest.approx([a["area"] / 64**2 for a in anns], abs=1e-7)
    train = build_pretrain_dataset(cfg, img_size=64, patch_size=8, split="train", seed=3)
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["object_patches"].shape == (4, 6, 64) and batch["object_patches"].dtype == torch.bool
    assert batch["object_ratio"].shape == (4, 6)
    assert (batch["object_ratio"].sum(1) <= 1 + 1e-6).all()
    assert ((batch["object_ratio"] > 0) | ~batch["object_patches"].any(2)).all()  # no patches without pixels


def test_synthetic_classification(tiny_synthetic):
    cfg = DataConfig(kind="synthetic", root=str(tiny_synthetic.parent), num_images=24)
    # classification uses seed 0: a different cache entry from the seed-3 fixture, generated on demand
    ds, num_classes = build_classification_dataset(cfg, img_size=32, split="val", train=False)
    data = json.loads((ds.image_dir.parent / "annotations" / "instances_val.json").read_text())
    assert num_classes == 3 and len(ds) == 6
    image, label = ds[2]
    assert image.shape == (3, 32, 32) and label == data["images"][2]["label"]


# ----------------------------------------------------------------------------- CIFAR-100 and ImageFolder


def test_cifar100_python_format_roundtrip(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [3, 99, 0, 42, 7]
    # the real files are Python 2 pickles: their str keys (b'data' as bytes) load as str under latin1
    with open(base / "train", "wb") as f:
        pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * 5}, f, protocol=2)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f, protocol=2)
    ds, num_classes = build_classification_dataset(DataConfig(kind="cifar100", root=str(tmp_path)), img_size=64,
                                                   split="train", train=False)
    assert num_classes == 100 and len(ds) == 5
    image, label = ds[1]
    assert label == 99 and image.shape == (3, 64, 64)
    raw = data[1].reshape(3, 32, 32)  # CIFAR rows: R plane, G plane, B plane
    assert ds.data[1].transpose(2, 0, 1).tolist() == raw.tolist()


def test_hymenoptera_image_folder(shared_data):
    root = shared_data / "hymenoptera"
    ds, num_classes = build_classification_dataset(DataConfig(kind="folder", root=str(root)), img_size=32,
                                                   split="train", train=True)
    assert num_classes == 2 and ds.classes == ["ants", "bees"]
    names = [p for p, _ in ds.samples]
    assert not any(p.endswith(".gif") for p in names)  # torchvision's extension list leaves the placeholder out
    spaced = [i for i, p in enumerate(names) if " " in p or "(" in p]
    assert spaced
    for i in spaced:
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and label == ds.samples[i][1]
    assert ds.skipped == 0


# ----------------------------------------------------------------------------- real COCO photos


@pytest.fixture(scope="module")
def coco_mini(shared_data):
    cfg = DataConfig(kind="coco", root=str(shared_data / "coco-mini"), train_split="train2017", val_split="val2017")
    return build_pretrain_dataset(cfg, img_size=224, patch_size=16, split="val")


def test_coco_mini_filtering_and_crowd(coco_mini):
    ds = coco_mini
    assert ds.stats["images"] == 79 and ds.stats["missing_file"] == 0
    assert ds.stats["kept"] + ds.stats["dropped_no_object"] == 79 and ds.stats["dropped_no_object"] > 0
    crowd_images = {a["image_id"] for a in ds.coco.dataset["annotations"] if a["iscrowd"]}
    assert crowd_images, "coco-mini val has crowd (RLE) regions"
    for image_id in crowd_images & set(ds.image_ids):
        assert not any(a["iscrowd"] for a in ds.objects[image_id])


def test_coco_mini_masks_agree_with_annotations(coco_mini):
    ds = coco_mini
    for index in range(0, len(ds), 9):
        info = ds.coco.imgs[ds.image_ids[index]]
        sample = ds[index]
        anns = ds.objects[info["id"]]
        area_ratio = torch.tensor([a["area"] / (info["height"] * info["width"]) for a in anns])
        # no crop: the ratio of the polygon rasterised at 224 px matches COCO's area (eq. 1)
        big = area_ratio > 0.05
        assert torch.allclose(sample["object_ratio"][: len(anns)][big], area_ratio[big], rtol=0.08)
        # polygon rasterised in crop coordinates == full-size mask cropped and resized, up to edge pixels
        box = CropBox(0, 0, info["height"], info["width"])
        direct = ds.crop_object_masks(anns, box)
        full = np.stack([ds.coco.annToMask(a) for a in anns])
        resized = crop_masks(full, box, 224)
        for k in np.nonzero(big.numpy())[0]:
            inter = (direct[k] & resized[k]).sum()
            union = (direct[k] | resized[k]).sum()
            assert inter / union > 0.9


# ----------------------------------------------------------------------------- properties and JPEG draft


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 4, 5, 8]), st.sampled_from([0.2, 0.5, 0.01, 1.0]))
def test_patch_map_matches_brute_force(seed, patch, threshold):
    rng = np.random.default_rng(seed)
    masks = torch.from_numpy((rng.random((2, 3 * patch, 2 * patch)) < rng.random()).astype(np.uint8))
    result = patch_object_map(masks, patch, threshold)
    for k in range(2):
        for n in range(6):
            r, c = divmod(n, 2)
            pixels = int(masks[k, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch].sum())
            assert bool(result[k, n]) == (pixels / patch**2 >= threshold - 1e-12)
    assert torch.equal(object_ratio(masks), masks.reshape(2, -1).double().mean(1).float())


def test_jpeg_draft_keeps_crop_geometry(tmp_path):
    pixels = np.full((600, 800, 3), 40, np.uint8)
    pixels[300:450, 200:400] = RED
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    box = CropBox(top=150, left=100, height=400, width=600)  # 600 -> 64 px: JPEG decoded at 1/4 or 1/8
    with Image.open(tmp_path / "a.jpg") as jpg, Image.open(tmp_path / "a.png") as png:
        drafted, exact = crop_image(jpg, box, 64), crop_image(png, box, 64)
        assert jpg.size[0] < 800  # the draft did shrink the decode
    assert (denormalize(drafted) - denormalize(exact)).abs().mean() < 0.02
    # rectangle x in [200, 400) -> crop [100, 300) * 64/600, y in [300, 450) -> [150, 300) * 64/400
    out = denormalize(drafted) * 255
    assert out[:, 36, 21].tolist() == pytest.approx(RED, abs=12)  # inside
    assert out[:, 36, 35].tolist() == pytest.approx((40, 40, 40), abs=12)  # right of it
    assert out[:, 20, 21].tolist() == pytest.approx((40, 40, 40), abs=12)  # above it


# ----------------------------------------------------------------------------- scenes at COCO's object share


def main_object_colour_match(batch: dict, patch: int, flip_maps: bool = False) -> tuple[float, float]:
    """Share of the main object's patches (slot 0) / of the other patches whose mean colour (denormalised) is within
    0.1 (L1 over RGB) of the object's colour, over the batch."""
    images = torch.stack([denormalize(x) for x in batch["image"]])  # [B, 3, S, S]
    B, _, S, _ = images.shape
    g = S // patch
    colours = images.reshape(B, 3, g, patch, g, patch).mean((3, 5)).permute(0, 2, 3, 1)  # [B, g, g, 3]
    maps = batch["object_patches"][:, 0].reshape(B, g, g)
    if flip_maps:
        maps = maps.flip(-1)
    inside, outside = [], []
    for b in range(B):
        colour = colours[b][batch["object_patches"][b, 0].reshape(g, g)].median(0).values  # the object's colour
        close = (colours[b] - colour).abs().sum(-1) < 0.1
        inside.append(close[maps[b]])
        outside.append(close[~maps[b]])
    return float(torch.cat(inside).float().mean()), float(torch.cat(outside).float().mean())


@pytest.fixture(scope="module")
def coco_share(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco-share")
    synthetic.ensure_synthetic(root, num_images=64, img_size=32, seed=0, object_ratio=0.34)
    return DataConfig(kind="synthetic", root=str(root), num_images=64, object_ratio=0.34, hflip=True, max_objects=6)


def test_coco_share_scenes_are_keyed_and_leave_the_default_set_alone(tmp_path):
    assert synthetic.dataset_key(8, 2, 32, 0) == "synthetic-v2-n8-val2-px32-seed0"  # default caches stay valid
    a = synthetic.ensure_synthetic(tmp_path, num_images=8, img_size=32, object_ratio=0.34)
    b = synthetic.ensure_synthetic(tmp_path, num_images=8, img_size=32)
    assert a.name.endswith("-ratio0.34") and a != b
    assert (a / "train" / "000003.png").read_bytes() != (b / "train" / "000003.png").read_bytes()
    info = json.loads((a / "annotations" / "instances_train.json").read_text())["info"]
    assert info["object_ratio"] == 0.34
    with pytest.raises(ConfigError, match=r"^data.object_ratio: -0.1 must be in \(0, 1\)$"):
        synthetic.ensure_synthetic(tmp_path, num_images=8, img_size=32, object_ratio=-0.1)


def test_object_path_on_coco_share_scenes(coco_share):
    """The object path end to end at the sanity study's scale (32 px, patch 4, alpha 0.17): after random crop and
    flip the object map still covers the object's pixels (a map flipped apart from its image would not), and
    object selection puts every source and target patch inside one eligible object, disjoint, each side filled
    mostly with real object patches (an object spans ~2L patches on average, as alpha = half the mean ratio)."""
    train = build_pretrain_dataset(coco_share, img_size=32, patch_size=4, split="train")
    torch.manual_seed(0)
    batch = next(iter(DataLoader(train, batch_size=64)))
    inside, outside = main_object_colour_match(batch, 4)
    misaligned, _ = main_object_colour_match(batch, 4, flip_maps=True)
    assert inside > 0.6 and outside < 0.02 and misaligned < inside - 0.1  # seen: 0.71, 0.0005, 0.49
    val = build_pretrain_dataset(coco_share, img_size=32, patch_size=4, split="val")
    for data in (batch, next(iter(DataLoader(val, batch_size=16)))):
        patches, ratios = data["object_patches"], data["object_ratio"]
        masks = sample_masks(batch_size=len(ratios), num_patches=64, alpha=0.17, selection="object", padding="zero",
                             object_patches=patches, object_ratio=ratios, generator=torch.Generator().manual_seed(0))
        assert masks.src_idx.shape[1] == target_length(0.17, 64) == 11 and not masks.fallback.any()
        eligible = eligible_objects(patches, ratios, 0.05)
        for b in range(len(ratios)):
            src = set(masks.src_idx[b][masks.src_valid[b]].tolist())
            tgt = set(masks.tgt_idx[b][masks.tgt_valid[b]].tolist())
            assert src and tgt and not src & tgt
            assert any(eligible[b, k] and src | tgt <= set(patches[b, k].nonzero().flatten().tolist())
                       for k in range(patches.shape[1]))
    real = torch.stack([masks.src_real, masks.tgt_real])  # uncropped val images: object patches per side, of 11
    assert real.min() >= 5 and real.float().mean() / 11 >= 0.85  # seen: 7 and 0.93
