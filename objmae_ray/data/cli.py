"""`objmae-data`: make the synthetic set, pack a dataset into a store, object-ratio statistics (Fig. 5),
CAM cache, Fig. 4 pictures.

  objmae-data synth [--cache DIR] [--num-images N] [--img-size S] [--seed K] [--object-ratio R]
  objmae-data pack --kind coco --root DIR --split train2014 [--split val2014] --out STORE [--workers N | --ray auto]
  objmae-data verify STORE [--split S]
  objmae-data stats --kind coco --root DIR [--ann-file F] [--split train2017] [--png hist.png]
  objmae-data cam IMAGE_DIR --out cam.safetensors [--model resnet50] [--weights FILE]
  objmae-data show --kind synthetic [--root DIR] [--index I] [--alpha A] [--selection object] --out fig.png
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from objmae_ray.config import DATASET_KINDS, PADDINGS, SELECTIONS, DataConfig
from objmae_ray.data.cam import build_cam_cache, create_cam_model
from objmae_ray.data.pack import Layout, pack_split, source_for
from objmae_ray.data.store import MANIFEST, open_split
from objmae_ray.data.stats import object_ratio_stats, segmentation_dataset
from objmae_ray.data.synthetic import ensure_synthetic
from objmae_ray.data.transforms import denormalize
from objmae_ray.errors import ConfigError
from objmae_ray.method.masking import sample_masks


OBJECT_RATIO_HELP = "synthetic: mean object ratio of the scenes (0.34: COCO's; default: the v2 scenes, ~0.2)"


def object_ratio_arg(text: str) -> float:
    """--object-ratio: a number in (0, 1), else argparse's one-line error."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1)")
    return value


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["synthetic", "coco"], default="synthetic")  # the segmentation kinds
    p.add_argument("--root", default=None, help="COCO root (coco) or cache dir (synthetic)")
    p.add_argument("--ann-file", default=None, help="instances JSON, relative to --root unless absolute")
    p.add_argument("--split", default="train", help="split directory name, e.g. train2017")
    p.add_argument("--num-images", type=int, default=512, help="synthetic: images in the train split")
    p.add_argument("--object-ratio", type=object_ratio_arg, default=None, help=OBJECT_RATIO_HELP)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--min-ratio", type=float, default=0.05)


def _data_config(args) -> DataConfig:
    return DataConfig(kind=args.kind, root=args.root, ann_file=args.ann_file, num_images=args.num_images,
                      object_ratio=args.object_ratio)


def cmd_synth(args) -> dict:
    root = ensure_synthetic(args.cache, num_images=args.num_images, img_size=args.img_size, seed=args.seed,
                            object_ratio=args.object_ratio)
    return {"root": str(root)}


def cmd_pack(args) -> dict:
    cfg = DataConfig(kind=args.kind, root=args.root, ann_file=args.ann_file, cam_cache=args.cam_cache,
                     num_images=args.num_images, max_objects=args.max_objects, object_ratio=args.object_ratio)
    layout = Layout(short_side=args.short_side, max_side=args.max_side, max_objects=args.max_objects)
    executor = "process"
    if args.ray:
        import ray  # only when packing across a cluster

        ray.init(address=args.ray, configure_logging=False)
        executor = "ray"
    out = {"store": args.out, "splits": {}}
    for split in args.split or [cfg.train_split, cfg.val_split]:
        source = source_for(cfg, split, layout, img_size=args.img_size, seed=args.seed)
        manifest = pack_split(source, args.out, shard_size=args.shard_size, workers=args.workers,
                              executor=executor, progress=not args.quiet)
        out["splits"][split] = {"images": manifest["count"], "shards": len(manifest["shards"]),
                                "bytes": sum(s["bytes"] for s in manifest["shards"]),
                                "skipped": len(manifest["skipped"])}
    return out


def cmd_verify(args) -> dict:
    if not Path(args.store).is_dir():
        raise ConfigError(f"{args.store}: packed store not found")
    splits = args.split or sorted(p.name for p in Path(args.store).iterdir() if (p / MANIFEST).is_file())
    return {split: {"records_checked": open_split(args.store, split).verify()} for split in splits}


def cmd_stats(args) -> dict:
    return object_ratio_stats(_data_config(args), args.split, img_size=args.img_size, patch_size=args.patch_size,
                              min_ratio=args.min_ratio, png=args.png)


def cmd_cam(args) -> dict:
    model = create_cam_model(args.model, weights=args.weights)
    stats = build_cam_cache(args.image_dir, args.out, model=model, model_name=args.model,
                            weights=args.weights or "timm-hub", img_size=args.img_size, batch_size=args.batch_size)
    return {"out": args.out, **stats}


def cmd_show(args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    torch.manual_seed(args.seed)
    dataset = segmentation_dataset(_data_config(args), args.split, img_size=args.img_size,
                                   patch_size=args.patch_size, min_ratio=args.min_ratio)
    sample = dataset[args.index % len(dataset)]
    generator = torch.Generator().manual_seed(args.seed)
    grid = args.img_size // args.patch_size
    masks = sample_masks(batch_size=1, num_patches=grid * grid, alpha=args.alpha, selection=args.selection,
                         padding=args.padding, object_patches=sample["object_patches"][None],
                         object_ratio=sample["object_ratio"][None], min_ratio=args.min_ratio, generator=generator)
    image = denormalize(sample["image"]).permute(1, 2, 0).numpy()
    eligible = sample["object_patches"][sample["object_ratio"] >= args.min_ratio]  # [k, N]
    region = np.zeros((grid * grid, 4))  # RGBA, transparent where no object
    colours = plt.get_cmap("tab10")(np.arange(max(1, len(eligible))) % 10)[:, :3]
    for k, patches in enumerate(eligible):
        region[patches.numpy()] = [*colours[k], 0.55]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(image)
    axes[1].imshow(region.reshape(grid, grid, 4), extent=(0, args.img_size, args.img_size, 0))
    axes[1].set_title("objects (ratio >= %.2f)" % args.min_ratio)
    axes[2].imshow(image)
    for idx, valid, colour in ((masks.src_idx[0], masks.src_valid[0], "red"), (masks.tgt_idx[0], masks.tgt_valid[0], "blue")):
        for n in idx[valid].tolist():
            r, c = divmod(n, grid)
            axes[2].add_patch(Rectangle((c * args.patch_size, r * args.patch_size), args.patch_size, args.patch_size,
                                        fill=False, edgecolor=colour, lw=1.2))
    axes[2].set_title(f"source (red) / target (blue), alpha={args.alpha}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    return {"out": args.out, "source": int(masks.src_valid.sum()), "target": int(masks.tgt_valid.sum()),
            "fallback": bool(masks.fallback[0])}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="objmae-data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="generate the built-in synthetic COCO-format set")
    s.add_argument("--cache", default=None, help="cache dir (default $OBJMAE_CACHE or ~/.cache/objmae-ray)")
    s.add_argument("--num-images", type=int, default=512)
    s.add_argument("--img-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--object-ratio", type=object_ratio_arg, default=None, help=OBJECT_RATIO_HELP)
    s.set_defaults(run=cmd_synth)
    s = sub.add_parser("pack", help="pack dataset splits into a store read by `data.store` (docs/DATA.md)")
    s.add_argument("--kind", choices=list(DATASET_KINDS), required=True)
    s.add_argument("--root", default=None, help="dataset root (synthetic: cache dir)")
    s.add_argument("--ann-file", default=None, help="COCO instances JSON, relative to --root unless absolute")
    s.add_argument("--split", action="append", default=[],
                   help="split directory name, repeatable (default: train and val)")
    s.add_argument("--cam-cache", default=None, help="folder: CAM cache to store with the images (selection cam)")
    s.add_argument("--out", required=True, help="store directory")
    s.add_argument("--short-side", type=int, default=256, help="stored short side in pixels (never enlarged)")
    s.add_argument("--max-side", type=int, default=512, help="stored long side at most")
    s.add_argument("--max-objects", type=int, default=20, help="object slots per image (largest first)")
    s.add_argument("--shard-size", type=int, default=512, help="images per shard")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local packing processes")
    s.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="pack with Ray tasks on this cluster ('auto'); --out must be storage every node sees")
    s.add_argument("--num-images", type=int, default=512, help="synthetic: images in the train split")
    s.add_argument("--img-size", type=int, default=64, help="synthetic: image size")
    s.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    s.add_argument("--object-ratio", type=object_ratio_arg, default=None, help=OBJECT_RATIO_HELP)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_pack)
    s = sub.add_parser("verify", help="check every record of a store against its CRC-32")
    s.add_argument("store")
    s.add_argument("--split", action="append", default=[])
    s.set_defaults(run=cmd_verify)
    s = sub.add_parser("stats", help="object-ratio distribution (Fig. 5) as JSON, optional PNG histogram")
    _add_dataset_args(s)
    s.add_argument("--png", default=None)
    s.set_defaults(run=cmd_stats)
    s = sub.add_parser("cam", help="build the CAM cache of an image folder")
    s.add_argument("image_dir")
    s.add_argument("--out", required=True, help="output .safetensors file")
    s.add_argument("--model", default="resnet50", help="timm model name (paper: resnet50, ImageNet-1k)")
    s.add_argument("--weights", default=None, help="local weights (.safetensors or checkpoint); default timm hub")
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--batch-size", type=int, default=16)
    s.set_defaults(run=cmd_cam)
    s = sub.add_parser("show", help="Fig. 4: image, object region, source and target patches (PNG)")
    _add_dataset_args(s)
    s.add_argument("--index", type=int, default=0)
    s.add_argument("--alpha", type=float, default=0.34)
    s.add_argument("--selection", choices=[c for c in SELECTIONS if c != "cam"], default="object")
    s.add_argument("--padding", choices=PADDINGS, default="zero")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(run=cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="objmae-data: %(message)s")
    args = parser().parse_args(argv)
    try:
        result = args.run(args)
    except ConfigError as err:
        print(f"objmae-data: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("objmae-data: interrupted (pack: rerun the same command to continue; finished shards are kept)",
              file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
