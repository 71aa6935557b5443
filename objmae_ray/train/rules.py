"""Every rule about a TrialConfig that needs no file system and no cluster, in one place.

`trial_problems(cfg)` returns one "field.path: reason" line per broken rule (empty: the trial can
start). `objmae-sweep validate` runs it on every configuration a search space can produce (or a
stated sample, see objmae_ray/sweep/checks.py) and maps each field to its line in the file; the
trial runs it again before any worker starts and adds only the file-system and cluster checks
(objmae_ray/train/trial.py). The schema (objmae_ray/config.py) checks single fields; the rules here
tie fields together.
"""
from __future__ import annotations

from objmae_ray.config import PhaseOptim, TrialConfig
from objmae_ray.method.model import PRESETS

# What each pre-training selection reads from its dataset, and the dataset kinds that provide it. A packed
# store (data.store) keeps what its kind provides: object ids (coco, synthetic), CAM grids (folder packed
# with a CAM cache; checked when the store opens), labels; so the same table applies to it.
SELECTION_DATA = {"object": ("coco", "synthetic"), "inter": ("coco", "synthetic"), "cam": ("folder",),
                  "mae": ("coco", "synthetic", "folder")}


def trial_phases(cfg: TrialConfig) -> list[tuple[str, str, PhaseOptim]]:
    """[(field path, phase name, phase config)]: ("pretrain", "pretrain", ...), ("transfer.0", mode, ...), ..."""
    return [("pretrain", "pretrain", cfg.pretrain)] + [(f"transfer.{i}", t.mode, t) for i, t in enumerate(cfg.transfer)]


def trial_problems(cfg: TrialConfig) -> list[str]:
    """One "field: reason" line per rule the trial breaks (see the module docstring)."""
    return [*_model_problems(cfg), *_selection_problems(cfg), *_phase_problems(cfg), *_scratch_problems(cfg),
            *_resource_problems(cfg)]


def _model_problems(cfg: TrialConfig) -> list[str]:
    model, problems = cfg.model, []
    if model.preset not in PRESETS:
        problems.append(f"model.preset: unknown preset {model.preset!r} (choose from {', '.join(PRESETS)})")
    if model.img_size % model.patch_size:
        problems.append(f"model.patch_size: {model.patch_size} does not divide model.img_size {model.img_size}")
    return problems


def _selection_problems(cfg: TrialConfig) -> list[str]:
    selection, data = cfg.masking.selection, cfg.pretrain.data
    if data.kind == "cifar100":
        return ["pretrain.data.kind: 'cifar100' has no object masks or CAM; use it for transfer only"]
    problems = []
    if data.kind not in SELECTION_DATA[selection]:
        needs = {"cam": "a folder dataset's CAM cache (pretrain.data.kind folder)",
                 "object": "object masks (pretrain.data.kind coco or synthetic)",
                 "inter": "object masks (pretrain.data.kind coco or synthetic)"}[selection]
        problems.append(f"masking.selection: {selection!r} needs {needs}, but pretrain.data.kind is {data.kind!r}")
    if cfg.masking.cam_select and selection != "cam":
        problems.append(f"masking.cam_select: {cfg.masking.cam_select!r} applies to selection 'cam' only "
                        f"(masking.selection is {selection!r})")
    if selection == "cam" and not data.cam_cache and not data.store:
        problems.append("pretrain.data.cam_cache: masking.selection 'cam' needs a CAM cache "
                        "(build it with `objmae-data cam`)")
    return problems


def _phase_problems(cfg: TrialConfig) -> list[str]:
    problems = []
    workers = cfg.resources.num_workers
    for path, _, phase in trial_phases(cfg):
        store = phase.data.store
        if phase.data.kind != "synthetic" and not phase.data.root and not store:
            problems.append(f"{path}.data.root: required for kind {phase.data.kind!r} without data.store "
                            f"(set it, use ${{VAR}}, or --set {path}.data.root=PATH)")
        if store == "auto" and phase.data.kind != "synthetic":
            problems.append(f"{path}.data.store: 'auto' packs the built-in synthetic set only; pack a "
                            f"{phase.data.kind!r} dataset with `objmae-data pack` and give its directory")
        if store and "://" in store:
            problems.append(f"{path}.data.store: {store} is a URI; a store is memory-mapped, so give a "
                            f"directory every node mounts")
        if phase.warmup_epochs > phase.epochs > 0:  # a pre-training of 0 epochs does not run (scratch baseline)
            problems.append(f"{path}.warmup_epochs: {phase.warmup_epochs} is more than epochs ({phase.epochs})")
        if phase.batch_size < workers:
            problems.append(f"{path}.batch_size: {phase.batch_size} is less than one image per worker "
                            f"(resources.num_workers={workers})")
    return problems


def _scratch_problems(cfg: TrialConfig) -> list[str]:
    """Layer-wise lr decay protects pre-trained features; on a random encoder (pretrain.epochs 0) it only
    starves the early blocks (0.65 over 12 blocks: patch_embed at 0.4% of the peak lr), handicapping the
    scratch baseline. Refused unless the phase says allow_layer_decay_from_scratch."""
    if cfg.pretrain.epochs > 0:
        return []
    return [f"transfer.{i}.layer_decay: {t.layer_decay} < 1 with pretrain.epochs 0: layer-wise decay protects "
            f"pre-trained features and a random encoder has none, so it only slows the early blocks (leave "
            f"layer_decay out for 1.0, or set transfer.{i}.allow_layer_decay_from_scratch: true)"
            for i, t in enumerate(cfg.transfer)
            if t.mode == "finetune" and cfg.transfer_layer_decay(i) < 1.0 and not t.allow_layer_decay_from_scratch]


def _resource_problems(cfg: TrialConfig) -> list[str]:
    res = cfg.resources
    if res.use_gpu and res.gpus_per_worker <= 0:
        return ["resources.gpus_per_worker: must be > 0 when resources.use_gpu is true"]
    return []
