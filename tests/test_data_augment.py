"""On-device augmentation (data/augment.py) against the JPEG path on the same crop boxes, and its pieces
against torchvision and brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchvision import transforms as T

from objmae_ray.config import DataConfig
from objmae_ray.data import build_pretrain_dataset, ensure_synthetic
from objmae_ray.data.agreement import agreement, same_box_samples
from objmae_ray.data.coco import CocoObjects
from objmae_ray.data.augment import (DeviceAugment, cam_saliency, center_boxes, patch_counts, random_resized_boxes,
                                     resample_pixels, sample_points, whole_boxes)
from objmae_ray.data.cam import cam_patch_saliency
from objmae_ray.data.loader import PackedView
from objmae_ray.data.pack import Layout, pack_split, source_for
from objmae_ray.data.store import open_split
from objmae_ray.data.transforms import CropBox

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def synthetic_pair(tmp_path_factory):
    """64 px scenes, packed and read by the JPEG path (CocoObjects) at 32 px."""
    root = tmp_path_factory.mktemp("synthetic")
    cfg = DataConfig(kind="synthetic", root=str(root), num_images=16)
    pack_split(source_for(cfg, "train", img_size=64), root / "store", executor="serial", progress=False)
    scenes = ensure_synthetic(str(root), num_images=16, img_size=64)
    reference = CocoObjects(scenes / "train", scenes / "annotations" / "instances_train.json", img_size=32,
                            patch_size=8)
    return reference, open_split(root / "store", "train")


def test_same_boxes_give_the_jpeg_paths_object_maps_exactly_on_synthetic(synthetic_pair):
    reference, split = synthetic_pair
    torch.manual_seed(0)
    pairs = list(same_box_samples(reference, split, img_size=32, patch_size=8, passes=4))
    assert len(pairs) == 64
    for ref, out in pairs:
        assert torch.equal(out["object_patches"], ref["object_patches"])
        assert torch.equal(out["object_ratio"], ref["object_ratio"])
        assert (out["image"] - ref["image"]).abs().mean() < 0.1  # bilinear here, bicubic there (normalised units)


def test_coco_mini_agreement_targets(shared_data, tmp_path):
    """Issue 11: >= 99% of patches' object labels agree, object ratios within 0.01, fallback within 2 points."""
    cfg = DataConfig(kind="coco", root=str(shared_data / "coco-mini"), train_split="val2017")
    pack_split(source_for(cfg, "train", Layout()), tmp_path, executor="serial", progress=False)
    reference = build_pretrain_dataset(cfg, img_size=224, patch_size=16, split="train")
    torch.manual_seed(0)
    result = agreement(same_box_samples(reference, open_split(tmp_path, "val2017"), img_size=224, patch_size=16,
                                        passes=2))
    assert result["crops"] == 2 * len(reference) and result["patch_labels_agree"] >= 0.99
    assert result["object_ratio_abs_diff"]["mean"] <= 0.01 and result["object_ratio_abs_diff"]["p99"] <= 0.01
    assert abs(result["fallback_frac"]["jpeg"] - result["fallback_frac"]["packed"]) <= 0.02


def test_crop_sampler_follows_torchvision():
    """Boxes lie in the image, whole pixels, area share in scale and aspect in ratio when an attempt fits;
    the fallback is torchvision's central crop (checked exactly on an image no attempt can fit)."""
    sizes = torch.tensor([[480, 640]] * 4000 + [[1, 100]])
    g = torch.Generator().manual_seed(0)
    boxes = random_resized_boxes(sizes, scale=(0.2, 1.0), generator=g)
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round()) and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()
    share, aspect = (h * w / (480 * 640))[:-1], (w / h)[:-1]
    assert share.min() > 0.19 and share.max() <= 1.0 and aspect.min() > 0.74 and aspect.max() < 1.34
    assert boxes[-1].tolist() == [0, 49, 1, 1]  # (H - h) // 2, (W - w) // 2 with w = round(1 * 4/3)
    torch.manual_seed(0)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, 480, 640), [0.2, 1.0], [3 / 4, 4 / 3])
                           for _ in range(4000)], dtype=torch.float64)
    ours, theirs = share.mean(), (theirs[:, 2] * theirs[:, 3] / (480 * 640)).mean()
    assert abs(ours - theirs) < 0.02  # same distribution of crop areas (sampling error ~0.004)


def test_bilinear_taps_equal_grid_sample_on_each_record():
    """The gathered bilinear resampling is grid_sample (align_corners, border padding) on every record alone."""
    g = torch.Generator().manual_seed(0)
    shapes = [(37, 50), (64, 23), (5, 7)]
    records = [torch.randint(0, 256, (h, w, 4), dtype=torch.uint8, generator=g) for h, w in shapes]
    batch = {"data": torch.cat([r.reshape(-1) for r in records]),
             "starts": torch.tensor([0, 37 * 50, 37 * 50 + 64 * 23]), "sizes": torch.tensor(shapes)}
    # the last record's box touches its right and bottom edges: taps there must stay inside it (the data ends)
    boxes = torch.tensor([[3.5, 2.0, 30.0, 41.0], [0, 0, 64, 23], [1, 1, 4, 6]], dtype=torch.float64)
    flip = torch.tensor([False, True, False])
    ys, xs = sample_points(boxes, 16, flip)
    ours = resample_pixels(batch["data"], 4, batch["starts"], batch["sizes"], ys, xs)
    for b, (h, w) in enumerate(shapes):
        u = ((ys[b] - 0.5).clamp(0, h - 1) / max(h - 1, 1) * 2 - 1).float()
        v = ((xs[b] - 0.5).clamp(0, w - 1) / max(w - 1, 1) * 2 - 1).float()
        grid = torch.stack([v[None, :].expand(16, 16), u[:, None].expand(16, 16)], -1)[None]
        image = records[b][..., :3].permute(2, 0, 1)[None].float()
        theirs = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
        assert torch.allclose(ours[b], theirs[0], atol=1e-3)


def test_whole_and_centre_boxes():
    sizes = torch.tensor([[480, 640], [32, 32]])
    assert whole_boxes(sizes).tolist() == [[0, 0, 480, 640], [0, 0, 32, 32]]
    # BiT eval: short side to round(224 / 0.875) = 256, centre 224: 224/256 of the short side, centred
    assert center_boxes(sizes, 224)[0].tolist() == pytest.approx([30.0, 110.0, 420.0, 420.0])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 4, 8]), st.integers(1, 12))
def test_patch_counts_match_brute_force(seed, patch, objects):
    rng = np.random.default_rng(seed)
    S = 2 * patch * 2
    inside = rng.random((2, S, S, 16)) < rng.random()  # membership of 16 slots; slots >= `objects` are ignored
    masks = torch.from_numpy(np.packbits(inside, axis=-1, bitorder="little"))  # [2, S, S, 2]
    counts = patch_counts(masks, patch, objects)
    G = S // patch
    assert counts.shape == (2, objects, G * G)
    for b in range(2):
        for k in range(objects):
            for n in range(G * G):
                r, c = divmod(n, G)
                assert counts[b, k, n] == int(inside[b, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch, k].sum())


def test_agreement_summary_on_known_pairs():
    """One object slot, a 2-patch grid: the pair differs in one patch and by 0.1 in ratio; no eligible
    object on the packed side only."""
    ref = {"object_patches": torch.tensor([[True, True]]), "object_ratio": torch.tensor([0.3])}
    out = {"object_patches": torch.tensor([[True, False]]), "object_ratio": torch.tensor([0.2])}
    result = agreement([(ref, out), (ref, ref)])
    assert result["patch_labels_agree"] == 3 / 4 and result["object_patch_labels_agree"] == 3 / 4
    assert result["object_ratio_abs_diff"]["max"] == pytest.approx(0.1) and result["crops"] == 2
    assert result["fallback_frac"] == {"jpeg": 0.0, "packed": 0.5}  # one patch is too small a region


def test_flip_mirrors_pixels_and_object_maps(synthetic_pair):
    _, split = synthetic_pair
    view = PackedView(split, np.arange(4))
    batch = {k: torch.from_numpy(v) for k, v in view.gather(np.arange(4), np.empty(view.batch_bytes(np.arange(4)), np.uint8)).items()}
    augment = DeviceAugment(purpose="pretrain", img_size=32, channels=split.channels, patch_size=8, train=False)
    boxes = torch.tensor([[3, 5, 40, 50], [0, 0, 64, 64], [10, 2, 30, 30], [1, 1, 60, 33]], dtype=torch.float64)
    plain = augment(batch, boxes=boxes, flip=torch.zeros(4, dtype=torch.bool))
    flipped = augment(batch, boxes=boxes, flip=torch.tensor([True, True, False, True]))
    mirror = lambda x: x.reshape(*x.shape[:-1], 4, 4).flip(-1).reshape(x.shape)  # noqa: E731  [.., N] grids
    for b in range(4):
        want = b != 2
        assert torch.allclose(flipped["image"][b], plain["image"][b].flip(-1) if want else plain["image"][b])
        assert torch.equal(flipped["object_patches"][b], mirror(plain["object_patches"][b]) if want
                           else plain["object_patches"][b])
    assert torch.equal(flipped["object_ratio"], plain["object_ratio"])


def test_cam_saliency_equals_the_jpeg_paths(synthetic_pair):
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(3, 7, 7, generator=g)
    orig = [(480, 640), (333, 500), (64, 64)]  # (H, W) of the sources
    stored = torch.tensor([[256, 341], [256, 384], [64, 64]])
    boxes_src = [CropBox(10, 20, 300, 400), CropBox(0, 100, 333, 250), CropBox(5, 7, 40, 50)]
    scale = [(s[0].item() / o[0], s[1].item() / o[1]) for s, o in zip(stored, orig)]
    boxes = torch.tensor([[b.top * sy, b.left * sx, b.height * sy, b.width * sx] for b, (sy, sx) in zip(boxes_src, scale)],
                         dtype=torch.float64)
    ours = cam_saliency(cams, stored, boxes, grid=4, flip=None)
    for i, (box, (H, W)) in enumerate(zip(boxes_src, orig)):
        assert torch.allclose(ours[i], cam_patch_saliency(cams[i], box, (W, H), 4), atol=1e-5)


def test_classification_batches_follow_the_bit_recipe(synthetic_pair):
    """Eval: BiT's resize + centre crop box; train: random crops and flips, labels passed through."""
    _, split = synthetic_pair
    view = PackedView(split, np.arange(8))
    batch = {k: torch.from_numpy(v) for k, v in view.gather(np.arange(8), np.empty(view.batch_bytes(np.arange(8)), np.uint8)).items()}
    evaluate = DeviceAugment(purpose="classify", img_size=32, channels=split.channels, train=False)
    images, labels = evaluate(batch)
    assert images.shape == (8, 3, 32, 32) and labels.tolist() == split.index["label"][:8].tolist()
    # torchvision's resize (64 -> 37) + centre crop (32) of a smooth image: the same picture up to the
    # half-pixel rounding of CenterCrop (0.5 px of a 2-level-per-pixel ramp: ~0.02 normalised)
    y, x = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    ramp = torch.stack([2 * x + y, 2 * y + x, x + y], -1).to(torch.uint8)  # [64, 64, 3]
    smooth = {"data": ramp.reshape(-1), "starts": torch.tensor([0]), "sizes": torch.tensor([[64, 64]]),
              "labels": torch.tensor([0])}
    theirs = T.Compose([T.Resize(round(32 / 0.875), antialias=True), T.CenterCrop(32),
                        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(ramp.permute(2, 0, 1).float() / 255)
    rgb_only = DeviceAugment(purpose="classify", img_size=32, train=False, channels=3)
    assert (rgb_only(smooth)[0][0] - theirs).abs().max() < 0.05
    train = DeviceAugment(purpose="classify", img_size=32, channels=split.channels, train=True, crop_scale=(0.35, 1.0),
                          hflip=0.5, generator=torch.Generator().manual_seed(0))  # the recipe's default flip
    a, _ = train(batch)
    b, _ = train(batch)
    assert not torch.equal(a, b) and a.shape == images.shape
    assert math.isclose(train.flips(10000, torch.device("cpu")).float().mean().item(), 0.5, abs_tol=0.02)


def test_jpeg_path_flips_image_and_maps_together_when_asked(synthetic_pair, monkeypatch):
    """data.hflip on the JPEG path: a flipped sample is the unflipped one mirrored (pixels and patch maps)."""
    reference, _ = synthetic_pair
    scenes = reference.image_dir.parent
    kwargs = dict(img_size=32, patch_size=8, random_crop=False)
    plain = CocoObjects(scenes / "train", scenes / "annotations" / "instances_train.json", **kwargs)[3]
    flipping = CocoObjects(scenes / "train", scenes / "annotations" / "instances_train.json", hflip=True, **kwargs)
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros(()) if a == ((),) else real_rand(*a, **k))
    flipped = flipping[3]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    mirror = plain["object_patches"].reshape(-1, 4, 4).flip(-1).reshape(plain["object_patches"].shape)
    assert torch.equal(flipped["object_patches"], mirror) and torch.equal(flipped["object_ratio"], plain["object_ratio"])
