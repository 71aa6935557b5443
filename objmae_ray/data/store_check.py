"""Packed stores checked before a sweep starts (`objmae-sweep validate`): what a trial's phases need of them.

`store_problems(cfg)` gives one "field: reason" line (naming the store split) per problem, for every phase
whose `data.store` exists on this machine (a store that lives only on the workers is checked when the trial
opens it): a split the phase reads is not packed; the store was packed from another dataset kind, or from
another source than the phase's `root` (data/pack.py fingerprints); pre-training with selection `object` or
`inter` on a store without object maps, or `cam` on one without CAM grids. Only manifests are read (and,
with a `root`, the source's file list and annotation hash), never the shards.
"""
from __future__ import annotations

from pathlib import Path

from objmae_ray.config import DataConfig, TrialConfig
from objmae_ray.data.layout import split_name
from objmae_ray.data.pack import check_source, current_fingerprint
from objmae_ray.data.store import MANIFEST, StoreError, read_manifest


def store_problems(cfg: TrialConfig) -> list[str]:
    """One "<phase>.data.store: <reason>" line per problem (module docstring)."""
    phases = [("pretrain", cfg.pretrain.data, ("train",), cfg.masking.selection)]
    phases += [(f"transfer.{i}", t.data, ("train", "val"), None) for i, t in enumerate(cfg.transfer)]
    if cfg.pretrain.epochs == 0:
        phases = phases[1:]
    problems = []
    for path, data, splits, selection in phases:
        if not data.store or data.store == "auto" or "://" in data.store:
            continue
        store = Path(data.store).expanduser()
        if not store.is_dir():
            continue  # on the workers only: the trial checks it when it opens the store
        for split in splits:
            reason = _split_problem(store, data, split, selection, cfg.model.img_size)
            if reason:
                problems.append(f"{path}.data.store: {reason}")
    return problems


def _split_problem(store: Path, data: DataConfig, split: str, selection: str | None, img_size: int) -> str | None:
    name = split_name(data, split)
    split_dir = store / name
    if not (split_dir / MANIFEST).is_file():
        packed = sorted(p.name for p in store.iterdir() if (p / MANIFEST).is_file())
        return f"{store}: has no packed split {name!r} (packed splits: {', '.join(packed) or 'none'})"
    try:
        manifest = read_manifest(split_dir)
        if manifest.get("kind") != data.kind:
            return f"{split_dir}: packed from a {manifest.get('kind')!r} dataset, not {data.kind!r} (data.kind)"
        layout = manifest.get("layout", {})
        if selection in ("object", "inter") and int(layout.get("channels", 3)) <= 3:
            return (f"{split_dir}: packed without object maps; selection {selection!r} needs them "
                    f"(pack a coco or synthetic source)")
        if selection == "cam" and not layout.get("cam_shape"):
            return (f"{split_dir}: packed without CAM grids; selection 'cam' needs them "
                    f"(objmae-data pack --cam-cache CACHE)")
        current = current_fingerprint(data, split, img_size=img_size) if data.root else None
        if current is not None:
            check_source(split_dir, manifest, data.kind, *current)
    except StoreError as err:
        return str(err)
    return None
