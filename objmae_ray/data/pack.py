"""`objmae-data pack`: a dataset's split -> a packed store split (format: objmae_ray/data/store.py).

Sources (`source_for(cfg, split)`): COCO (2014 / 2017 layouts, or any `ann_file`) and the built-in
synthetic scenes (pixels + object ids of the `max_objects` largest non-crowd objects, painted largest
first; full-image object ratios from COCO's `area`, as objmae_ray/data/coco.py filters), an ImageFolder
(class labels, plus its CAM grid per image when a CAM cache is given), and CIFAR-100 (labels).

Packing is split into shards of `shard_size` source images; each shard is decoded, resized and written
by a worker (a local process pool, Ray tasks across a cluster, or serially) into a temporary directory
renamed into place when complete, so a shard is visible only whole. An interrupted pack continues where
it stopped (finished shards are kept); the split's manifest is written last. A full disk stops the pack
with one line; the partial shard is removed, finished ones stay.

Each split records its source's fingerprint (annotation file hash, image list hash, CAM cache hash);
`check_source` refuses a store packed from a different source, naming what changed.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from objmae_ray.config import DataConfig
from objmae_ray.data.cam import load_cam_cache
from objmae_ray.data.coco import load_coco
from objmae_ray.data.layout import coco_paths, dataset_root, split_name
from objmae_ray.data.skips import LOAD_ERRORS
from objmae_ray.data.store import (FORMAT, MANIFEST, SHARD_META, VERSION, Record, StoreError, read_manifest,
                                   shard_name, stored_size, write_shard)
from objmae_ray.data.synthetic import dataset_key, default_cache_dir

log = logging.getLogger("objmae_ray.data")
PACK_STATE = "pack.json"  # the pack in progress: fingerprint + layout (a resumed pack must match it)


@dataclass(frozen=True)
class Layout:
    """How images are stored: size bounds, object slots, whether pixels carry object bitmasks, CAM grid shape."""

    short_side: int = 256
    max_side: int = 512
    max_objects: int = 20
    objects: bool = True  # per-pixel object bitmask (store.py: overlapping instances)
    cam_shape: tuple[int, int] | None = None

    @property
    def channels(self) -> int:
        """RGB + ceil(max_objects / 8) bitmask bytes (objects), else RGB."""
        return 3 + (-(-self.max_objects // 8) if self.objects else 0)

    def as_dict(self) -> dict:
        return {"short_side": self.short_side, "max_side": self.max_side, "max_objects": self.max_objects,
                "channels": self.channels, "cam_shape": list(self.cam_shape) if self.cam_shape else None}


# ---- sources ------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and mtime: trials check their store each phase)."""
    stat = Path(path).stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def names_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


@dataclass
class CocoUnit:
    """One shard's work: COCO images (info, largest-first non-crowd annotations) under image_dir."""

    image_dir: str
    entries: list[tuple[dict, list[dict]]]
    layout: Layout

    def load(self) -> tuple[list[Record], list[list[str]]]:
        records, skipped = [], []
        for info, anns in self.entries:
            try:
                records.append(coco_record(Path(self.image_dir), info, anns, self.layout))
            except LOAD_ERRORS as err:
                skipped.append([info["file_name"], f"{type(err).__name__}: {err}"])
        return records, skipped


def resize_image(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The whole image at (h, w) (bicubic, JPEG draft decoding when shrinking) -> uint8 [h, w, 3]."""
    h, w = size
    if img.format == "JPEG" and (w, h) != img.size:
        img.draft("RGB", (w, h))  # decode at 1/2, 1/4, 1/8 while staying >= (w, h)
    img = img.convert("RGB") if img.mode != "RGB" else img
    if img.size != (w, h):
        img = img.resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def object_mask(ann: dict, orig: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """One instance's mask at the stored size: polygons rasterised there, RLE decoded then nearest-sampled.

    -> uint8 [h, w]."""
    (H, W), (h, w) = orig, size
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        polygons = [(np.asarray(p, dtype=np.float64).reshape(-1, 2) * (w / W, h / H)).ravel().tolist()
                    for p in segmentation]
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w)))
    rle = mask_utils.frPyObjects(segmentation, H, W) if isinstance(segmentation.get("counts"), list) else segmentation
    full = mask_utils.decode(rle)
    rows = ((np.arange(h) + 0.5) * H / h).astype(np.int64)
    cols = ((np.arange(w) + 0.5) * W / w).astype(np.int64)
    return full[rows][:, cols] if (h, w) != (H, W) else full


def coco_record(image_dir: Path, info: dict, anns: list[dict], layout: Layout) -> Record:
    H, W = info["height"], info["width"]
    size = stored_size(H, W, layout.short_side, layout.max_side)
    with Image.open(image_dir / info["file_name"]) as img:
        if img.size != (W, H):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}, annotation says {W}x{H}")
        pixels = resize_image(img, size)
    bits = np.zeros((*size, layout.channels - 3), dtype=np.uint8)
    ratios = np.zeros(layout.max_objects, dtype=np.float32)
    for k, ann in enumerate(anns):  # slot k: the (k+1)-th largest object
        bits[..., k // 8] |= object_mask(ann, (H, W), size).astype(np.uint8) << (k % 8)
        ratios[k] = ann["area"] / (H * W)
    return Record(pixels, bits, (H, W), label=int(info.get("label", -1)), source_id=int(info["id"]),
                  ratios=ratios, name=info["file_name"])


@dataclass
class FolderUnit:
    """One shard's work: ImageFolder images (relative path, class index, CAM grid or None) under root."""

    root: str
    entries: list[tuple[str, int, np.ndarray | None]]
    layout: Layout

    def load(self) -> tuple[list[Record], list[list[str]]]:
        records, skipped = [], []
        for rel, label, cam in self.entries:
            try:
                with Image.open(Path(self.root) / rel) as img:
                    size = stored_size(img.height, img.width, self.layout.short_side, self.layout.max_side)
                    orig = (img.height, img.width)
                    pixels = resize_image(img, size)
            except LOAD_ERRORS as err:
                skipped.append([rel, f"{type(err).__name__}: {err}"])
                continue
            records.append(Record(pixels, None, orig, label=label, source_id=-1, cam=cam, name=rel))
        return records, skipped


@dataclass
class ArrayUnit:
    """One shard's work: images already in memory (CIFAR-100 rows), uint8 [n, H, W, 3] + labels."""

    pixels: np.ndarray
    labels: np.ndarray
    first: int
    layout: Layout

    def load(self) -> tuple[list[Record], list[list[str]]]:
        records = []
        for i, (img, label) in enumerate(zip(self.pixels, self.labels)):
            H, W = img.shape[:2]
            size = stored_size(H, W, self.layout.short_side, self.layout.max_side)
            pixels = img if size == (H, W) else resize_image(Image.fromarray(img), size)
            records.append(Record(np.ascontiguousarray(pixels), None, (H, W), label=int(label),
                                  source_id=self.first + i, name=f"row {self.first + i}"))
        return records, []


@dataclass
class Source:
    """A dataset split to pack: its fingerprint, classes, layout and per-image work."""

    kind: str
    split: str
    description: str
    fingerprint: dict
    layout: Layout
    classes: list[str] | None
    entries: list  # per image: what its unit needs
    make_unit: object = field(repr=False, default=None)  # (entries slice, first) -> unit
    estimated_bytes: int | None = None

    def units(self, shard_size: int) -> list:
        return [self.make_unit(self.entries[i:i + shard_size], i) for i in range(0, len(self.entries), shard_size)]


def coco_fingerprint(image_dir: Path, ann_file: Path) -> dict:
    """A COCO-format split's identity: the annotation file's hash and the image directory's file list."""
    if not image_dir.is_dir():
        raise StoreError(f"{image_dir}: image directory not found")
    if not ann_file.is_file():
        raise StoreError(f"{ann_file}: annotation file not found")
    names = sorted(os.listdir(image_dir))
    return {"annotation_file": str(ann_file), "images": len(names), "image_list": names_sha256(names),
            "annotation_sha256": file_sha256(ann_file)}


def coco_source(cfg: DataConfig, split: str, layout: Layout, *, img_size: int = 64, seed: int = 0) -> Source:
    """COCO-format split (coco or the synthetic scenes): images whose file exists, annotations largest first."""
    image_dir, ann_file = coco_paths(cfg, split, img_size=img_size, seed=seed)
    fingerprint = coco_fingerprint(image_dir, ann_file)
    if cfg.kind == "synthetic":
        fingerprint["synthetic"] = image_dir.parent.name
    coco = load_coco(ann_file)
    present = set(os.listdir(image_dir))
    entries = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        if info["file_name"] not in present:
            continue
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and a.get("area", 0) > 0]
        entries.append((info, sorted(anns, key=lambda a: -a["area"])[: layout.max_objects]))
    size = sum(np.prod(stored_size(i["height"], i["width"], layout.short_side, layout.max_side)) for i, _ in entries)
    return Source(cfg.kind, split, f"{image_dir} ({ann_file.name})", fingerprint, layout,
                  coco.dataset.get("image_classes"), entries,
                  lambda part, first: CocoUnit(str(image_dir), part, layout), int(size) * layout.channels)


def folder_images(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(relative path, class index)]) of an ImageFolder split, as torchvision lists them."""
    if not root.is_dir():
        raise StoreError(f"{root}: image folder not found")
    try:
        classes, to_index = find_classes(str(root))
        samples = make_dataset(str(root), to_index, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as err:
        raise StoreError(f"{root}: {err}") from None
    return classes, [(Path(p).relative_to(root).as_posix(), label) for p, label in samples]


def folder_fingerprint(root: Path, cam_cache: str | None) -> dict:
    _, relative = folder_images(root)
    fingerprint = {"image_dir": str(root), "images": len(relative),
                   "image_list": names_sha256([f"{rel}\t{label}" for rel, label in relative])}
    if cam_cache:
        cache = Path(cam_cache)
        cache = cache / "cam.safetensors" if cache.is_dir() else cache
        fingerprint["cam_cache"] = str(cache)
        if cache.is_file():
            fingerprint["cam_cache_sha256"] = file_sha256(cache)
    return fingerprint


def folder_source(cfg: DataConfig, split: str, layout: Layout) -> Source:
    """ImageFolder split (class = sub-directory); CAM grids from cfg.cam_cache when set."""
    root = dataset_root(cfg) / split
    classes, relative = folder_images(root)
    fingerprint = folder_fingerprint(root, cfg.cam_cache)
    rows, cams = {}, None
    if cfg.cam_cache:
        rows, cams, _ = load_cam_cache(cfg.cam_cache)
        layout = Layout(layout.short_side, layout.max_side, layout.max_objects, False, tuple(cams.shape[1:]))
    else:
        layout = Layout(layout.short_side, layout.max_side, layout.max_objects, False, None)
    entries = [(rel, label, cams[rows[rel]].numpy() if rel in rows else None) for rel, label in relative]
    return Source("folder", split, str(root), fingerprint, layout, classes, entries,
                  lambda part, first: FolderUnit(str(root), part, layout))


def cifar_file(cfg: DataConfig, split: str) -> Path:
    return dataset_root(cfg) / "cifar-100-python" / ("train" if split == cfg.train_split else "test")


def cifar_source(cfg: DataConfig, split: str, layout: Layout) -> Source:
    """CIFAR-100 (python format): the train file for the train split, the test file otherwise."""
    path = cifar_file(cfg, split)
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        with open(path.parent / "meta", "rb") as f:
            classes = pickle.load(f, encoding="latin1")["fine_label_names"]
        pixels = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as err:
        raise StoreError(f"{path}: unreadable CIFAR-100 file ({type(err).__name__}: {err})") from None
    fingerprint = {"file": str(path), "images": len(labels), "file_sha256": file_sha256(path)}
    layout = Layout(layout.short_side, layout.max_side, layout.max_objects, False, None)
    return Source("cifar100", split, str(path), fingerprint, layout, classes, list(range(len(labels))),
                  lambda part, first: ArrayUnit(pixels[part[0]:part[-1] + 1], labels[part[0]:part[-1] + 1],
                                                first, layout), int(pixels.nbytes))


def source_for(cfg: DataConfig, split: str, layout: Layout = Layout(), *, img_size: int = 64, seed: int = 0) -> Source:
    """The Source of `cfg` for "train" / "val" / a literal split name. `img_size`, `seed`: synthetic only."""
    name = split_name(cfg, split)
    if cfg.kind in ("coco", "synthetic"):
        return coco_source(cfg, name, layout, img_size=img_size, seed=seed)
    if cfg.kind == "folder":
        return folder_source(cfg, name, layout)
    return cifar_source(cfg, name, layout)


def current_fingerprint(cfg: DataConfig, split: str, *, img_size: int = 64, seed: int = 0) -> tuple[dict, str] | None:
    """(fingerprint, description) of the source `cfg` names, without decoding it; None when the config names
    no source (`root` unset for a kind that needs one): a store used on its own is not checked."""
    name = split_name(cfg, split)
    if cfg.kind in ("coco", "synthetic"):
        if cfg.kind == "coco" and cfg.root is None:
            return None
        image_dir, ann_file = coco_paths(cfg, name, img_size=img_size, seed=seed)
        fingerprint = coco_fingerprint(image_dir, ann_file)
        if cfg.kind == "synthetic":
            fingerprint["synthetic"] = image_dir.parent.name
        return fingerprint, f"{image_dir} ({ann_file.name})"
    if cfg.root is None:
        return None
    if cfg.kind == "folder":
        root = dataset_root(cfg) / name
        return folder_fingerprint(root, cfg.cam_cache), str(root)
    path = cifar_file(cfg, name)
    if not path.is_file():
        raise StoreError(f"{path}: CIFAR-100 file not found")
    return {"file": str(path), "file_sha256": file_sha256(path)}, str(path)


def fingerprint_changes(packed: dict, current: dict) -> list[str]:
    """What differs between a store's recorded source and the current one (hashes compared when both have them)."""
    labels = {"annotation_sha256": "annotation file", "image_list": "image list", "images": "image count",
              "cam_cache_sha256": "CAM cache", "file_sha256": "data file", "synthetic": "synthetic set"}
    changes = []
    for key, label in labels.items():
        if key in packed and key in current and packed[key] != current[key]:
            old, new = packed[key], current[key]
            shown = (f"{old} -> {new}" if isinstance(old, int) else f"{str(old)[:12]} -> {str(new)[:12]}")
            where = current.get("annotation_file") if key == "annotation_sha256" else current.get("cam_cache")
            changes.append(f"{label} changed ({shown}{f', {where}' if where and key != 'images' else ''})")
    if ("cam_cache" in packed) != ("cam_cache" in current):
        changes.append("CAM cache " + ("removed" if "cam_cache" in packed else "added"))
    return changes


def check_source(split_dir: Path, manifest: dict, kind: str, fingerprint: dict, description: str) -> None:
    """StoreError naming the store split and what changed when it was packed from another source."""
    if manifest.get("kind") != kind:
        raise StoreError(f"{split_dir}: packed from a {manifest.get('kind')!r} dataset, not {kind!r}")
    changes = fingerprint_changes(manifest["source"], fingerprint)
    if changes:
        raise StoreError(f"{split_dir}: packed from a different source than {description}: "
                         + "; ".join(changes) + " (re-pack it with `objmae-data pack`)")


# ---- packing ------------------------------------------------------------------------------------------
def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-"


def pack_shard(unit, split_dir: str, number: int) -> tuple[int, dict]:
    """Load one unit's images and write shard `number` atomically; returns (number, its shard.json)."""
    split_dir = Path(split_dir)
    name = shard_name(number)
    final = split_dir / name
    records, skipped = unit.load()
    tmp = split_dir / f"{_tmp_prefix(name)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    layout = unit.layout
    try:
        meta = write_shard(tmp, records, channels=layout.channels, max_objects=layout.max_objects,
                           cam_shape=layout.cam_shape)
        meta["skipped"] = skipped
        (tmp / SHARD_META).write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)
        except OSError:  # a concurrent packer finished this shard first: keep theirs
            if not (final / SHARD_META).is_file():
                raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(split_dir).free
            raise StoreError(f"{split_dir}: disk full while writing {name} ({free / 1e6:.0f} MB free); the partial "
                             f"shard was removed, finished shards are kept: free space and rerun to continue") from None
        raise StoreError(f"{split_dir / name}: cannot write shard ({err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return number, json.loads((final / SHARD_META).read_text())


def _remove_stale_tmp(split_dir: Path) -> None:
    """Temporary shard directories left by dead packers on this host."""
    host = socket.gethostname()
    for tmp in split_dir.glob(".shard-*.tmp-*"):
        owner = tmp.name.split(".tmp-", 1)[1]
        if owner.startswith(f"{host}-"):
            pid = int(owner[len(host) + 1:].split("-")[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(tmp, ignore_errors=True)
            except PermissionError:
                pass


def _start_state(split_dir: Path, source: Source) -> None:
    """Record (or, on resume, check) what this split is being packed from."""
    state = {"kind": source.kind, "source": source.fingerprint, "layout": source.layout.as_dict()}
    path = split_dir / PACK_STATE
    if path.is_file():
        previous = json.loads(path.read_text())
        changes = fingerprint_changes(previous["source"], source.fingerprint)
        if previous["layout"] != state["layout"]:
            changes.append(f"layout changed ({previous['layout']} -> {state['layout']})")
        if changes or previous["kind"] != source.kind:
            raise StoreError(f"{split_dir}: an unfinished pack of another source or layout is here ("
                             + "; ".join(changes or ["kind changed"]) + "); remove the directory or choose another --out")
        return
    path.write_text(json.dumps(state))


def _run_units(todo: list[tuple[int, object]], split_dir: Path, *, workers: int, executor: str,
               on_done) -> None:
    if executor == "serial" or workers <= 1 and executor == "process":
        for number, unit in todo:
            on_done(*pack_shard(unit, str(split_dir), number))
        return
    if executor == "ray":
        import ray  # only for packing across a cluster

        task = ray.remote(num_cpus=1)(pack_shard)
        pending = {task.remote(unit, str(split_dir), number) for number, unit in todo}
        while pending:
            ready, pending = ray.wait(list(pending), num_returns=1)
            pending = set(pending)
            on_done(*ray.get(ready[0]))
        return
    context = get_context("forkserver")  # no fork of a threaded parent; the server imports this module once
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(pack_shard, unit, str(split_dir), number) for number, unit in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_done(*future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def pack_split(source: Source, out: str | Path, *, shard_size: int = 512, workers: int = 0,
               executor: str = "process", progress: bool = True) -> dict:
    """Pack `source` into out/<split> (resuming an interrupted pack); returns the split's manifest.

    executor: "process" (a pool of `workers` processes; serial when workers <= 1), "ray" (one Ray task
    per shard on the connected cluster; `out` must be storage every node sees) or "serial".
    """
    out = Path(out).expanduser()
    split_dir = out / source.split
    if (split_dir / MANIFEST).is_file():
        manifest = read_manifest(split_dir)
        check_source(split_dir, manifest, source.kind, source.fingerprint, source.description)
        return manifest
    split_dir.mkdir(parents=True, exist_ok=True)
    _start_state(split_dir, source)
    _remove_stale_tmp(split_dir)
    units = source.units(shard_size)
    metas: dict[int, dict] = {}
    todo = []
    for number, unit in enumerate(units):
        meta_file = split_dir / shard_name(number) / SHARD_META
        if meta_file.is_file():
            metas[number] = json.loads(meta_file.read_text())
        else:
            todo.append((number, unit))
    if source.estimated_bytes is not None and todo:
        needed = source.estimated_bytes * len(todo) // max(len(units), 1)
        free = shutil.disk_usage(split_dir).free
        if needed > free:
            raise StoreError(f"{split_dir}: packing needs about {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(source.entries), initial=sum(min(shard_size, len(source.entries) - n * shard_size)
                                                          for n in metas), unit="img",
                   desc=f"pack {source.split}", leave=False)

    def on_done(number: int, meta: dict) -> None:
        metas[number] = meta
        if bar is not None:
            bar.update(min(shard_size, len(source.entries) - number * shard_size))

    try:
        _run_units(todo, split_dir, workers=workers, executor=executor, on_done=on_done)
    finally:
        if bar is not None:
            bar.close()
    shards = [{"name": shard_name(n), "count": metas[n]["count"], "bytes": metas[n]["bytes"]} for n in sorted(metas)]
    skipped = [s for n in sorted(metas) for s in metas[n].get("skipped", [])]
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": source.kind, "split": source.split,
        "source": source.fingerprint, "layout": source.layout.as_dict(), "classes": source.classes,
        "count": sum(s["count"] for s in shards), "skipped": skipped, "shards": shards,
        "max_height": max((metas[n]["max_height"] for n in metas), default=0),
        "max_width": max((metas[n]["max_width"] for n in metas), default=0),
    }
    if skipped:
        log.warning("%s: %d unreadable image(s) not packed (first: %s: %s)", split_dir, len(skipped), *skipped[0])
    tmp = split_dir / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.rename(tmp, split_dir / MANIFEST)
    (split_dir / PACK_STATE).unlink(missing_ok=True)
    return manifest


def auto_store_path(cfg: DataConfig, *, img_size: int, seed: int = 0, layout: Layout = Layout()) -> Path:
    """Where `store: auto` keeps the packed synthetic set: <cache>/packed/<synthetic key>-s<short>-m<max>."""
    cache = Path(cfg.root) if cfg.root is not None else default_cache_dir()
    key = dataset_key(cfg.num_images, cfg.val_images, img_size, seed, cfg.object_ratio)
    return cache / "packed" / f"{key}-s{layout.short_side}-m{layout.max_side}-k{cfg.max_objects}"


def ensure_packed(cfg: DataConfig, *, img_size: int, seed: int = 0) -> Path:
    """The store of `cfg`: its path, packing the synthetic set first when `store` is "auto"."""
    if cfg.store != "auto":
        return Path(cfg.store).expanduser()
    layout = Layout(max_objects=cfg.max_objects)
    path = auto_store_path(cfg, img_size=img_size, seed=seed, layout=layout)
    for split in ("train", "val"):
        if not (path / split_name(cfg, split) / MANIFEST).is_file():
            pack_split(source_for(cfg, split, layout, img_size=img_size, seed=seed), path, executor="serial",
                       progress=False)
    return path
