"""The packed store (data/store.py) and `objmae-data pack` (data/pack.py): round trips against the source
files, the overlap rule, geometry, resumable and atomic packing, and every bad input of issue 11."""
from __future__ import annotations

import errno
import json
import os
import pickle
import socket
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from objmae_ray.config import DataConfig
from objmae_ray.data import build_packed_loader, build_pretrain_dataset, open_packed, synthetic
from objmae_ray.data import pack as pack_module
from objmae_ray.data.cli import main as data_main
from objmae_ray.data.pack import Layout, pack_split, source_for
from objmae_ray.data.store import MANIFEST, StoreError, open_split, stored_size
from test_data import rect_polygon, rect_rle, write_coco
from trial_helpers import noise_folder

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def synthetic_cfg(root, **kw) -> DataConfig:
    return DataConfig(kind="synthetic", root=str(root), num_images=24, **kw)


def pack(cfg: DataConfig, out, split="train", layout=Layout(), **kw) -> dict:
    return pack_split(source_for(cfg, split, layout, img_size=64), out, progress=False, executor="serial", **kw)


def files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- round trip ----------------------------------------------------------------------------------------
def test_synthetic_store_holds_the_source_pixels_ids_labels_and_ratios(synthetic_root, tmp_path):
    cfg = synthetic_cfg(synthetic_root)
    manifest = pack(cfg, tmp_path / "store", shard_size=10)
    assert manifest["count"] == 24 and [s["count"] for s in manifest["shards"]] == [10, 10, 4]
    assert manifest["classes"] == ["circle", "square", "triangle"] and manifest["layout"]["channels"] == 6
    split = open_split(tmp_path / "store", "train")
    root = synthetic.ensure_synthetic(str(synthetic_root), num_images=24, img_size=64, seed=0)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    for row, info in enumerate(sorted(coco["images"], key=lambda i: i["id"])):
        record = split.record(row)
        assert record.shape == (64, 64, 6)  # 64 px scenes are stored as they are (never enlarged)
        assert np.array_equal(record[..., :3], np.asarray(Image.open(root / "train" / info["file_name"])))
        anns = sorted([a for a in coco["annotations"] if a["image_id"] == info["id"]], key=lambda a: -a["area"])
        bits = np.unpackbits(record[..., 3:], axis=-1, bitorder="little")  # [64, 64, 24]: slot k = bit k
        for k, ann in enumerate(anns):
            assert np.array_equal(bits[..., k], mask_utils.decode(ann["segmentation"]))
        assert not bits[..., len(anns):].any()
        index = split.index[row]
        assert (index["label"], index["source_id"], index["orig_height"]) == (info["label"], info["id"], 64)
        assert index["ratios"][:len(anns)].tolist() == pytest.approx([a["area"] / 64**2 for a in anns])


def test_stored_size_keeps_the_aspect_ratio_within_bounds():
    assert stored_size(480, 640, 256, 512) == (256, 341)
    assert stored_size(640, 480, 256, 512) == (341, 256)
    assert stored_size(100, 2000, 256, 512) == (26, 512)  # long side bounded, aspect kept
    assert stored_size(20, 30, 256, 512) == (20, 30)  # never enlarged


def test_overlapping_instances_count_for_every_object(tmp_path):
    """A contains B, C overlaps both (pixels in all three): every pixel keeps all its objects."""
    a = {"image_id": 1, "segmentation": rect_polygon(0, 0, 48, 48), "area": 48 * 48}
    b = {"image_id": 1, "segmentation": rect_rle(16, 16, 48, 48, 64, 64), "area": 32 * 32}
    c = {"image_id": 1, "segmentation": rect_polygon(32, 32, 64, 64), "area": 30 * 30}  # area field: smallest
    write_coco(tmp_path / "coco", [("x.png", 64, 64, (0, 0, 48, 48))], [a, b, c])
    cfg = DataConfig(kind="coco", root=str(tmp_path / "coco"))
    pack(cfg, tmp_path / "store")
    record = open_split(tmp_path / "store", "train").record(0)
    assert record[8, 8, 3:].tolist() == [0b001, 0, 0]  # A only (slot 0: largest)
    assert record[20, 20, 3:].tolist() == [0b011, 0, 0]  # A and B
    assert record[40, 40, 3:].tolist() == [0b111, 0, 0]  # A, B and C
    assert record[56, 56, 3:].tolist() == [0b100, 0, 0]  # C only
    # pre-training maps count a shared pixel for both objects, as the JPEG path's per-instance masks do
    # (whole image squashed to 32 px; 8 px patches = 16 source pixels, aligned with the rectangles)
    ref = build_pretrain_dataset(cfg, img_size=32, patch_size=8, split="train", min_ratio=0.0)
    ref.random_crop = False
    expected = ref[0]
    packed_cfg = DataConfig(kind="coco", root=str(tmp_path / "coco"), store=str(tmp_path / "store"),
                            train_split="-", val_split="train")
    loader = build_packed_loader(packed_cfg, purpose="pretrain", split="val", img_size=32, patch_size=8,
                                 batch_size=1, device=torch.device("cpu"), min_ratio=0.0)
    sample = next(iter(loader))
    assert torch.equal(sample["object_patches"][0], expected["object_patches"])
    assert sample["object_ratio"][0, :3].tolist() == expected["object_ratio"][:3].tolist() == [0.5625, 0.25, 0.25]


# ---- packing: parallel, resumable, atomic ---------------------------------------------------------------
def test_interrupted_pack_continues_and_keeps_finished_shards(synthetic_root, tmp_path, monkeypatch):
    cfg = synthetic_cfg(synthetic_root)
    real = pack_module.pack_shard

    def dies_at_shard_one(unit, split_dir, number):
        if number == 1:
            raise KeyboardInterrupt
        return real(unit, split_dir, number)

    monkeypatch.setattr(pack_module, "pack_shard", dies_at_shard_one)
    with pytest.raises(KeyboardInterrupt):
        pack(cfg, tmp_path / "store", shard_size=10)
    split_dir = tmp_path / "store" / "train"
    assert not (split_dir / MANIFEST).exists() and (split_dir / "shard-00000" / "shard.json").is_file()
    with pytest.raises(StoreError, match="incomplete packed split"):
        open_split(tmp_path / "store", "train")
    first = (split_dir / "shard-00000" / "data.bin").stat()
    packed = []
    monkeypatch.setattr(pack_module, "pack_shard", lambda unit, d, number: packed.append(number) or real(unit, d, number))
    pack(cfg, tmp_path / "store", shard_size=10)
    assert packed == [1, 2]  # the finished shard is not packed again
    again = (split_dir / "shard-00000" / "data.bin").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    pack(cfg, tmp_path / "fresh", shard_size=10)
    assert files(split_dir) == files(tmp_path / "fresh" / "train")
    assert not list(split_dir.glob(".*"))  # no temporary shard, no pack state left


def test_process_pool_pack_equals_serial(synthetic_root, tmp_path):
    cfg = synthetic_cfg(synthetic_root)
    pack(cfg, tmp_path / "serial", shard_size=8)
    pack_split(source_for(cfg, "train", img_size=64), tmp_path / "pool", shard_size=8, workers=2,
               executor="process", progress=False)
    assert files(tmp_path / "serial") == files(tmp_path / "pool")


def test_full_disk_stops_with_one_line_and_removes_the_partial_shard(synthetic_root, tmp_path, monkeypatch):
    cfg = synthetic_cfg(synthetic_root)
    real = pack_module.write_shard

    def disk_fills_in_shard_one(directory, records, **kw):
        if directory.name.startswith(".shard-00001"):
            directory.mkdir(parents=True)
            (directory / "data.bin").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, records, **kw)

    monkeypatch.setattr(pack_module, "write_shard", disk_fills_in_shard_one)
    with pytest.raises(StoreError, match=r"disk full while writing shard-00001 .*partial shard was removed"):
        pack(cfg, tmp_path / "store", shard_size=10)
    split_dir = tmp_path / "store" / "train"
    assert sorted(p.name for p in split_dir.iterdir()) == ["pack.json", "shard-00000"]
    monkeypatch.setattr(pack_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(StoreError, match=r"packing needs about 0\.\d+ GB, 0\.00 GB free"):
        pack(cfg, tmp_path / "store", shard_size=10)


# ---- bad input --------------------------------------------------------------------------------------------
def test_store_of_a_different_source_is_refused_naming_what_changed(tmp_path):
    a = {"image_id": 1, "segmentation": rect_polygon(0, 0, 40, 40), "area": 1600}
    ann_file = write_coco(tmp_path / "coco", [("x.png", 64, 64, (0, 0, 40, 40)), ("y.png", 64, 64, None)], [a])
    cfg = DataConfig(kind="coco", root=str(tmp_path / "coco"), store=str(tmp_path / "store"))
    pack(cfg, tmp_path / "store")
    assert len(open_packed(cfg, "train", img_size=32)) == 2
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["area"] = 1500
    ann_file.write_text(json.dumps(data))
    with pytest.raises(StoreError, match=rf"{tmp_path / 'store' / 'train'}: packed from a different source .*"
                                         r"annotation file changed \(.*instances_train.json\)"):
        open_packed(cfg, "train", img_size=32)
    with pytest.raises(StoreError, match="annotation file changed"):
        pack(cfg, tmp_path / "store")  # packing into it again is refused too
    data["annotations"][0]["area"] = 1600
    ann_file.write_text(json.dumps(data))
    Image.new("RGB", (8, 8)).save(tmp_path / "coco" / "train" / "z.png")
    with pytest.raises(StoreError, match=r"image list changed \(\w+ -> \w+\); image count changed \(2 -> 3\)"):
        open_packed(cfg, "train", img_size=32)
    # the store on its own (no source named) is trusted
    assert len(open_packed(DataConfig(kind="coco", store=str(tmp_path / "store")), "train", img_size=32)) == 2


def test_truncated_or_corrupt_shards_are_refused_naming_shard_and_offset(synthetic_root, tmp_path, capsys):
    pack(synthetic_cfg(synthetic_root), tmp_path / "store", shard_size=10)
    shard = tmp_path / "store" / "train" / "shard-00001" / "data.bin"
    size = shard.stat().st_size
    record = 64 * 64 * 6
    blob = bytearray(shard.read_bytes())
    blob[3 * record + 77] ^= 0xFF  # one flipped byte in record 3 of shard 1
    shard.write_bytes(bytes(blob))
    split = open_split(tmp_path / "store", "train")
    split.record(12)  # record 2 of shard 1 is fine
    with pytest.raises(StoreError, match=rf"{shard}: record 3 at offset {3 * record} is corrupt \(CRC-32 mismatch\)"):
        split.record(13)
    assert data_main(["verify", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{shard}: record 3 at offset {3 * record} is corrupt" in err
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(StoreError, match=rf"{shard}: truncated or rewritten: {size - 1000} bytes, the manifest says "
                                         rf"{size} \(data ends at offset {size - 1000}\)"):
        open_split(tmp_path / "store", "train")
    (tmp_path / "store" / "train" / "shard-00002" / "index.npy").write_bytes(b"garbage")
    shard.write_bytes(bytes(blob))
    with pytest.raises(StoreError, match=r"shard-00002/index.npy: unreadable shard index"):
        open_split(tmp_path / "store", "train")


def test_missing_store_split_and_node_are_named(tmp_path, synthetic_root):
    with pytest.raises(StoreError, match=rf"{tmp_path / 'none'}: packed store not found on node {socket.gethostname()}"):
        open_split(tmp_path / "none", "train")
    pack(synthetic_cfg(synthetic_root), tmp_path / "store")
    with pytest.raises(StoreError, match=r"has no split 'val2017' \(packed splits: train\)"):
        open_split(tmp_path / "store", "val2017")
    os.remove(tmp_path / "store" / "train" / "shard-00000" / "data.bin")
    with pytest.raises(StoreError, match=rf"shard-00000/data.bin: shard data missing on node {socket.gethostname()}"):
        open_split(tmp_path / "store", "train")


# ---- other kinds and the CLI ---------------------------------------------------------------------------
def test_cifar100_and_folder_stores_serve_labelled_batches(tmp_path):
    base = tmp_path / "cifar" / "cifar-100-python"
    base.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, (6, 3072), dtype=np.uint8)
    with open(base / "train", "wb") as f:
        pickle.dump({"data": data, "fine_labels": [5, 1, 99, 0, 3, 3]}, f, protocol=2)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f, protocol=2)
    cfg = DataConfig(kind="cifar100", root=str(tmp_path / "cifar"), store=str(tmp_path / "cifar-store"))
    pack(cfg, tmp_path / "cifar-store")
    split = open_split(tmp_path / "cifar-store", "train")
    assert np.array_equal(split.record(2), data[2].reshape(3, 32, 32).transpose(1, 2, 0))
    assert split.index["label"].tolist() == [5, 1, 99, 0, 3, 3] and len(split.classes) == 100
    loader = build_packed_loader(cfg, purpose="classify", split="train", img_size=64, batch_size=3,
                                 device=torch.device("cpu"))
    loader.sampler.set_epoch(0)
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and sorted(labels.tolist()) != [] and loader.num_classes == 100

    root = tmp_path / "folder" / "train"
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(root / cls / "a (1).jpg")
    (root / "bees" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = DataConfig(kind="folder", root=str(tmp_path / "folder"))
    manifest = pack(cfg, tmp_path / "folder-store")
    assert manifest["count"] == 2 and manifest["skipped"][0][0] == "bees/broken.jpg"
    split = open_split(tmp_path / "folder-store", "train")
    assert split.record(1).shape == (256, 341, 3) and split.index["label"].tolist() == [0, 1]


def test_pack_cli_then_verify(synthetic_root, tmp_path, capsys):
    store = tmp_path / "store"
    assert data_main(["pack", "--kind", "synthetic", "--root", str(synthetic_root), "--num-images", "24",
                      "--out", str(store), "--workers", "1", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"]["train"]["images"] == 24 and out["splits"]["val"]["images"] == 6
    assert data_main(["verify", str(store)]) == 0
    assert json.loads(capsys.readouterr().out) == {"train": {"records_checked": 24}, "val": {"records_checked": 6}}
    assert data_main(["pack", "--kind", "coco", "--root", str(tmp_path / "none"), "--split", "train2017",
                      "--out", str(store), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith("none: dataset root not found (data.root)")


@pytest.mark.ray
def test_ray_tasks_pack_the_same_store(ray_session, synthetic_root, tmp_path):
    cfg = synthetic_cfg(synthetic_root)
    pack(cfg, tmp_path / "serial", shard_size=8)
    pack_split(source_for(cfg, "train", img_size=64), tmp_path / "ray", shard_size=8, executor="ray", progress=False)
    assert files(tmp_path / "serial") == files(tmp_path / "ray")


def test_cam_store_gives_the_jpeg_paths_saliency(tmp_path):
    """A folder packed with its CAM cache: the same boxes give CamFolder's per-patch saliency; a store
    packed without one is refused for selection cam."""
    import timm

    from objmae_ray.data.augment import DeviceAugment
    from objmae_ray.data.cam import build_cam_cache
    from objmae_ray.data.folder import CamFolder
    from objmae_ray.data.loader import PackedView
    from objmae_ray.data.transforms import CropBox

    root = noise_folder(tmp_path / "folder" / "train", ("a", "b"), [(300, 400), (340, 400)])
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    build_cam_cache(root, tmp_path / "cam.safetensors", model=model, model_name="resnet10t", img_size=64)
    cfg = DataConfig(kind="folder", root=str(tmp_path / "folder"), cam_cache=str(tmp_path / "cam.safetensors"))
    pack(cfg, tmp_path / "store")
    split = open_split(tmp_path / "store", "train")
    reference = CamFolder(root, cfg.cam_cache, img_size=32, patch_size=8, random_crop=True)
    augment = DeviceAugment(purpose="pretrain", img_size=32, patch_size=8, train=False, cams=True, channels=3)
    box = CropBox(20, 30, 200, 250)
    for i, (rel, _) in enumerate(reference.samples):
        with mock.patch("objmae_ray.data.folder.sample_crop", lambda *a, **k: box):
            expected = reference[i]["saliency"]
        row = [split.describe(r).endswith(f"({rel})") for r in range(len(split))].index(True)
        view = PackedView(split, [row])
        batch = {k: torch.from_numpy(v) for k, v in view.gather(np.array([0]), np.empty(view.batch_bytes([0]), np.uint8)).items()}
        sy, sx = split.index["height"][row] / split.index["orig_height"][row], split.index["width"][row] / split.index["orig_width"][row]
        scaled = torch.tensor([[box.top * sy, box.left * sx, box.height * sy, box.width * sx]], dtype=torch.float64)
        assert torch.allclose(augment(batch, boxes=scaled)["saliency"][0], expected, atol=2e-3)  # float16 grids
        with mock.patch("objmae_ray.data.folder.sample_crop", lambda *a, **k: box), \
                mock.patch("objmae_ray.data.folder.torch.rand", lambda *a: torch.zeros(())):
            reference.hflip = True
            flipped = reference[i]["saliency"]  # the JPEG path's flip of image and saliency together
            reference.hflip = False
        mirrored = augment(batch, boxes=scaled, flip=torch.tensor([True]))["saliency"][0]
        assert torch.allclose(mirrored, flipped, atol=2e-3) and not torch.allclose(flipped, expected, atol=2e-3)
    plain = DataConfig(kind="folder", root=str(tmp_path / "folder"))
    pack(plain, tmp_path / "plain")
    with pytest.raises(StoreError, match=r"plain/train: packed without a CAM cache, but masking.selection 'cam'"):
        build_packed_loader(plain.model_copy(update={"store": str(tmp_path / "plain")}), purpose="pretrain",
                            split="train", img_size=32, patch_size=8, batch_size=2, device=torch.device("cpu"),
                            selection="cam")
