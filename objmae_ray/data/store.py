"""The packed store: decoded pixels + per-pixel object ids (or a CAM grid) + labels in memory-mapped shards.

Written once by `objmae-data pack` (objmae_ray/data/pack.py), read at memory speed by
objmae_ray/data/loader.py; the format is plain numpy (docs/DATA.md has the measurement behind the choice).

Layout of one split (a store holds one directory per packed split):

  STORE/<split>/manifest.json          written last: the split is complete (format, source fingerprint,
                                       layout, classes, shards with record counts and byte sizes)
  STORE/<split>/shard-00000/data.bin   records back to back, each uint8 [h, w, C] row-major:
                                       C = 3 + ceil(max_objects / 8): RGB + the pixel's object
                                       bitmask (bit k of the mask bytes, little-endian: inside the
                                       (k+1)-th largest object); C = 3: RGB only
  STORE/<split>/shard-00000/index.npy  one row per record (INDEX_FIELDS + `ratios` [max_objects])
  STORE/<split>/shard-00000/names.json the source file of each record (for messages)
  STORE/<split>/shard-00000/cams.npy   float16 [n, h, w]: the image's CAM grid (folder + CAM cache)

Geometry: a record is the whole source image resized (never enlarged) so that its short side is
`short_side` (default 256) and its long side at most `max_side`: the aspect ratio is kept, so a crop
box in source pixels maps to the record by one scale per axis (`orig_height / height`).

Overlapping instances: the per-pixel map is a bitmask over the object slots, not a single id, so a
pixel inside several objects counts for each of them, exactly as the JPEG path's per-instance masks
(on COCO-mini 8% of object pixels lie in two objects and 0.1% in three or more; one id per pixel
lost up to 65% of an object's area in a crop). Objects are the `max_objects` largest non-crowd
instances; crowd regions are not objects (as in objmae_ray/data/coco.py).

Integrity: opening a split checks every shard's file size and index (a truncated or rewritten shard is
refused, naming the shard and the offset where its data ends); every record carries a CRC-32 that is
checked the first time a process reads it, so no training step sees a corrupt record.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from objmae_ray.errors import ConfigError

FORMAT, VERSION = "objmae-packed-store", 1
MANIFEST, DATA, INDEX, NAMES, CAMS, SHARD_META = "manifest.json", "data.bin", "index.npy", "names.json", "cams.npy", "shard.json"
INDEX_FIELDS = [("offset", "<u8"), ("height", "<u2"), ("width", "<u2"), ("orig_height", "<u4"), ("orig_width", "<u4"),
                ("label", "<i4"), ("crc32", "<u4"), ("source_id", "<i8"), ("has_cam", "u1")]


class StoreError(ConfigError):
    """A store that cannot be used: missing, incomplete, corrupt, or packed from another source."""


def index_dtype(max_objects: int) -> np.dtype:
    """The per-record index row; `ratios` [max_objects]: full-image object ratios of the stored objects (eq. 1)."""
    return np.dtype(INDEX_FIELDS + [("ratios", "<f4", (max_objects,))])


def stored_size(height: int, width: int, short_side: int, max_side: int) -> tuple[int, int]:
    """(h, w) of a record: short side `short_side` (never enlarged), long side <= max_side, aspect kept."""
    scale = min(1.0, short_side / min(height, width), max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def node_name() -> str:
    return socket.gethostname()


@dataclass
class Record:
    """One packed image: pixels (+ ids) at the stored size, and what the index keeps of it."""

    pixels: np.ndarray  # uint8 [h, w, 3]
    ids: np.ndarray | None  # uint8 [h, w, ceil(K / 8)] object bitmask per pixel (bit k: slot k), or None
    orig_size: tuple[int, int]  # (H, W) of the source image
    label: int = -1
    source_id: int = -1
    ratios: np.ndarray | None = None  # float32 [max_objects] full-image object ratios (largest first)
    cam: np.ndarray | None = None  # float [ch, cw] CAM grid over the whole image
    name: str = ""


def write_shard(directory: Path, records: list[Record], *, channels: int, max_objects: int,
                cam_shape: tuple[int, int] | None) -> dict:
    """Write `records` as one shard into `directory` (which must not exist yet); returns its shard.json."""
    directory.mkdir(parents=True)
    index = np.zeros(len(records), dtype=index_dtype(max_objects))
    offset = 0
    with open(directory / DATA, "wb") as f:
        for i, rec in enumerate(records):
            h, w = rec.pixels.shape[:2]
            body = rec.pixels if channels == 3 else np.concatenate([rec.pixels, rec.ids], axis=2)
            body = np.ascontiguousarray(body, dtype=np.uint8)
            f.write(body.data)
            index[i] = (offset, h, w, rec.orig_size[0], rec.orig_size[1], rec.label, zlib.crc32(body.data),
                        rec.source_id, rec.cam is not None,
                        rec.ratios if rec.ratios is not None else np.zeros(max_objects, np.float32))
            offset += body.nbytes
        f.flush()
        os.fsync(f.fileno())
    np.save(directory / INDEX, index)
    if cam_shape is not None:
        cams = np.zeros((len(records), *cam_shape), dtype=np.float16)
        for i, rec in enumerate(records):
            if rec.cam is not None:
                cams[i] = rec.cam
        np.save(directory / CAMS, cams)
    (directory / NAMES).write_text(json.dumps([rec.name for rec in records]))
    meta = {"count": len(records), "bytes": offset,
            "max_height": int(index["height"].max(initial=0)), "max_width": int(index["width"].max(initial=0))}
    (directory / SHARD_META).write_text(json.dumps(meta))
    return meta


@dataclass
class Shard:
    name: str
    path: Path
    count: int
    nbytes: int
    first: int  # global record number of its first record
    data: np.memmap | None = None
    verified: np.ndarray | None = None  # bool [count]: CRC checked in this process


@dataclass
class PackedSplit:
    """One complete split of a store, opened for reading (memory-maps are opened lazily per process).

    `index`: the concatenated index rows of every shard (global record number = row); `cams`: float16
    [M, h, w] or None; `names`: the source file of each record (loaded on demand).
    """

    path: Path
    manifest: dict
    index: np.ndarray
    shards: list[Shard]
    cams: np.ndarray | None
    shard_of: np.ndarray  # int [M] shard number of each record
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pid: int = field(default_factory=os.getpid, repr=False)

    @property
    def channels(self) -> int:
        return int(self.manifest["layout"]["channels"])

    @property
    def max_objects(self) -> int:
        return int(self.manifest["layout"]["max_objects"])

    @property
    def has_ids(self) -> bool:
        return self.channels > 3

    @property
    def classes(self) -> list[str] | None:
        return self.manifest.get("classes")

    def __len__(self) -> int:
        return len(self.index)

    def describe(self, record: int) -> str:
        shard = self.shards[self.shard_of[record]]
        names = json.loads((shard.path / NAMES).read_text())
        return f"{shard.path / DATA} record {record - shard.first} ({names[record - shard.first]})"

    def _data(self, shard: Shard) -> np.memmap:
        if shard.data is None or self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():  # forked: memory maps and CRC marks are per process
                    for s in self.shards:
                        s.data, s.verified = None, None
                    self._pid = os.getpid()
                if shard.data is None:
                    shard.verified = np.zeros(shard.count, dtype=bool)
                    shard.data = np.memmap(shard.path / DATA, dtype=np.uint8, mode="r", shape=(shard.nbytes,)) \
                        if shard.nbytes else np.zeros(0, dtype=np.uint8)
        return shard.data

    def record(self, record: int) -> np.ndarray:
        """uint8 [h, w, C] view of one record (memory-mapped); its CRC is checked on the first read."""
        row = self.index[record]
        shard = self.shards[self.shard_of[record]]
        data = self._data(shard)
        h, w, start = int(row["height"]), int(row["width"]), int(row["offset"])
        body = data[start:start + h * w * self.channels]
        local = record - shard.first
        if not shard.verified[local]:
            if zlib.crc32(body) != int(row["crc32"]):
                raise StoreError(f"{shard.path / DATA}: record {local} at offset {start} is corrupt (CRC-32 "
                                 f"mismatch); re-pack this split with `objmae-data pack`")
            shard.verified[local] = True
        return body.reshape(h, w, self.channels)

    def verify(self) -> int:
        """Check every record's CRC now (`objmae-data verify`); returns the number of records checked."""
        for record in range(len(self)):
            self.record(record)
        return len(self)


def read_manifest(split_dir: Path) -> dict:
    path = split_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        if split_dir.is_dir():
            raise StoreError(f"{split_dir}: incomplete packed split (no {MANIFEST}); run `objmae-data pack` "
                             f"again to finish it") from None
        raise
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: unreadable manifest ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise StoreError(f"{path}: not an {FORMAT} v{VERSION} manifest")
    return manifest


def open_split(store: str | Path, split: str) -> PackedSplit:
    """Open STORE/<split>, checking its completeness, every shard's size and index; StoreError names the file."""
    store = Path(store).expanduser()
    if not store.is_dir():
        raise StoreError(f"{store}: packed store not found on node {node_name()}")
    split_dir = store / split
    if not split_dir.is_dir():
        packed = sorted(p.name for p in store.iterdir() if (p / MANIFEST).is_file())
        raise StoreError(f"{store}: has no split {split!r} (packed splits: {', '.join(packed) or 'none'})")
    manifest = read_manifest(split_dir)
    dtype = index_dtype(int(manifest["layout"]["max_objects"]))
    channels = int(manifest["layout"]["channels"])
    cam_shape = manifest["layout"].get("cam_shape")
    shards, indices, cams, first = [], [], [], 0
    for entry in manifest["shards"]:
        path = split_dir / entry["name"]
        data = path / DATA
        size = data.stat().st_size if data.is_file() else None
        if size is None:
            raise StoreError(f"{data}: shard data missing on node {node_name()}")
        if size != entry["bytes"]:
            raise StoreError(f"{data}: truncated or rewritten: {size} bytes, the manifest says {entry['bytes']} "
                             f"(data ends at offset {size}); re-pack this split")
        try:
            index = np.load(path / INDEX, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise StoreError(f"{path / INDEX}: unreadable shard index ({err})") from None
        ends = index["offset"].astype(np.int64) + index["height"].astype(np.int64) * index["width"] * channels \
            if index.dtype == dtype else None
        if ends is None or len(index) != entry["count"] or (len(index) and (
                index["offset"][0] != 0 or np.any(index["offset"][1:] != ends[:-1]) or ends[-1] != size)):
            raise StoreError(f"{path / INDEX}: index does not match {data} ({entry['count']} records, {size} bytes)")
        if cam_shape is not None:
            try:
                cams.append(np.load(path / CAMS, allow_pickle=False))
            except (OSError, ValueError) as err:
                raise StoreError(f"{path / CAMS}: unreadable CAM grids ({err})") from None
        shards.append(Shard(entry["name"], path, len(index), size, first))
        indices.append(index)
        first += len(index)
    index = np.concatenate(indices) if indices else np.zeros(0, dtype=dtype)
    shard_of = np.repeat(np.arange(len(shards)), [s.count for s in shards])
    return PackedSplit(split_dir, manifest, index, shards, np.concatenate(cams) if cams else None, shard_of)
