"""Object-ratio statistics of a segmentation dataset (paper section 4.1 and Fig. 5).

`object_ratio_stats(cfg, ...)` counts kept / dropped images (`kept_of_total`: the paper keeps 72,452 of
COCO 2014 train's 82,783 images, dropping those without an object of ratio >= 0.05) and summarises the
full-image object
ratio (eq. 1) of every non-crowd object; `plot_object_ratios` draws the Fig. 5 histogram. Both
`objmae-data stats` and the report's Fig. 5 use them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from objmae_ray.config import DataConfig
from objmae_ray.data.coco import CocoObjects
from objmae_ray.data.layout import coco_paths

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def ratio_stats(ratios: np.ndarray, min_ratio: float) -> dict:
    """Object-ratio distribution (paper Fig. 5) as numbers; `eligible_mean` is the paper's 0.34 on COCO."""
    eligible = ratios[ratios >= min_ratio]
    empty = not len(ratios)
    quantiles = [float("nan")] * len(QUANTILES) if empty else np.quantile(ratios, QUANTILES)
    return {
        "count": int(len(ratios)),
        "mean": float("nan") if empty else float(ratios.mean()),
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, quantiles)},
        "share_lt_0.05": float("nan") if empty else float((ratios < 0.05).mean()),
        "share_lt_0.1": float("nan") if empty else float((ratios < 0.1).mean()),
        "eligible_count": int(len(eligible)),
        "eligible_mean": float(eligible.mean()) if len(eligible) else float("nan"),
    }


def segmentation_dataset(cfg: DataConfig, split: str, *, img_size: int, patch_size: int, min_ratio: float,
                         random_crop: bool = False) -> CocoObjects:
    """The COCO-format pre-training set of `cfg` (coco or synthetic) for one split name."""
    image_dir, ann_file = coco_paths(cfg, split, img_size=img_size)
    return CocoObjects(image_dir, ann_file, img_size=img_size, patch_size=patch_size, min_ratio=min_ratio,
                       random_crop=random_crop, max_objects=cfg.max_objects)


def object_ratio_stats(cfg: DataConfig, split: str, *, img_size: int, patch_size: int, min_ratio: float,
                       png: str | Path | None = None) -> dict:
    """{"images": kept/dropped counts, "object_ratio": ratio_stats} of one split; the histogram to `png`."""
    dataset = segmentation_dataset(cfg, split, img_size=img_size, patch_size=patch_size, min_ratio=min_ratio)
    ratios = np.asarray(dataset.all_object_ratios, dtype=np.float64)
    kept, total = dataset.stats["kept"], dataset.stats["images"]
    out = {"images": dataset.stats, "kept_of_total": f"{kept:,}/{total:,} ({100 * kept / max(total, 1):.1f}%)",
           "object_ratio": ratio_stats(ratios, min_ratio)}
    if png is not None:
        plot_object_ratios(ratios, min_ratio, png)
        out["png"] = str(png)
    return out


def plot_object_ratios(ratios: np.ndarray, min_ratio: float, path: str | Path) -> None:
    """Fig. 5: histogram of object ratios with the minimum ratio marked (PNG, matplotlib Agg)."""
    from matplotlib.figure import Figure  # object API: Agg rendering, no global pyplot state

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.hist(ratios, bins=np.linspace(0, 1, 41), color="tab:blue")
    ax.axvline(min_ratio, color="tab:red", ls="--", label=f"min ratio {min_ratio}")
    ax.set_xlabel("object ratio (eq. 1)")
    ax.set_ylabel("objects")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
