"""Pydantic schemas: everything one trial needs (`TrialConfig`) and the sweep file (`SweepSpec`).

Extra keys are forbidden everywhere, so a typo in a YAML file is an error naming the field path,
never a silently ignored setting. Defaults are the paper's (Tables 1-3); tiny presets exist for CPU.
The schema checks each field on its own (types, ranges); rules that tie fields together (patch size
divides the image, CAM needs a cache, warm-up within the phase, ...) live in one place,
`objmae_ray.train.rules.trial_problems`, which both `objmae-sweep validate` and the trial call.

`trial_from_dict` is the one way to make a TrialConfig from a mapping (a YAML file, a Tune config,
a checkpoint's JSON). Field paths print dotted everywhere: `transfer.0.lr`.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Mapping, Optional, Union, get_args

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from objmae_ray.errors import ConfigError

# The paper's knobs as literals, defined once: masking, the data CLI's choices and the checks use these.
Selection = Literal["object", "inter", "mae", "cam"]
Padding = Literal["throwout", "zero", "replicate", "random"]
CamSelect = Literal["topk", "threshold"]
DatasetKind = Literal["synthetic", "coco", "folder", "cifar100"]
SELECTIONS: tuple[str, ...] = get_args(Selection)
PADDINGS: tuple[str, ...] = get_args(Padding)
DATASET_KINDS: tuple[str, ...] = get_args(DatasetKind)


PAPER_LAYER_DECAY = 0.65  # Table 2: layer-wise lr decay when fine-tuning a pre-trained encoder


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """ObjMAE encoder/decoder size (Table 1) and tokenisation."""

    preset: str = "vit_small"  # a key of objmae_ray.method.model.PRESETS
    patch_size: int = Field(16, gt=0)
    img_size: int = Field(224, gt=0)
    norm_pix_loss: bool = False


class MaskingConfig(_Strict):
    """Selection -> division -> alignment (paper section 3)."""

    alpha: float = Field(0.34, gt=0.0, le=1.0)
    selection: Selection = "object"
    padding: Padding = "zero"
    min_ratio: float = Field(0.05, ge=0.0, lt=1.0)  # objects below this object ratio are not selected
    patch_threshold: float = Field(0.2, gt=0.0, le=1.0)  # share of a patch's pixels an object must cover
    cam_threshold: float = Field(0.3, ge=0.0, le=1.0)  # normalised CAM value for the cam region ("threshold")
    cam_select: Optional[CamSelect] = None  # selection "cam" only: "topk" (default, the paper's) or "threshold"


class DataConfig(_Strict):
    """Where a phase reads its images. `root=None` means the built-in synthetic scene set.

    `store`: a packed store of this source (`objmae-data pack`, objmae_ray/data/store.py) to read instead
    of decoding the source's files; `kind` still names the source. "auto" packs the built-in synthetic
    set once into the cache. With a store, `root` / `ann_file` are optional: when given, the store must
    have been packed from exactly that source (checked at trial start).
    """

    kind: DatasetKind = "synthetic"
    root: Optional[str] = None  # dataset root (COCO images dir, ImageFolder root, CIFAR dir, synthetic cache)
    ann_file: Optional[str] = None  # COCO instances JSON (coco only)
    train_split: str = "train"
    val_split: str = "val"
    cam_cache: Optional[str] = None  # per-dataset CAM cache built by `objmae-data cam` (selection=cam)
    num_images: int = Field(512, gt=0)  # synthetic only: images in the train split
    num_val: Optional[int] = Field(None, gt=0)  # synthetic only: images in the val split (None: num_images // 4)
    object_ratio: Optional[float] = Field(None, gt=0.0, lt=1.0)  # synthetic only: mean object ratio (None: v2 scenes)
    max_objects: int = Field(20, gt=0)  # object slots per image (ratio >= 0.05 allows at most 20 disjoint)
    loader_workers: int = Field(2, ge=0)  # DataLoader processes (JPEG path) or gather threads (store)
    store: Optional[str] = None  # packed store directory, or "auto" (synthetic only)
    hflip: bool = False  # pre-training: random horizontal flip of image and object / CAM maps together

    @property
    def val_images(self) -> int:
        """Synthetic only: images in the val split (`num_val`, or a quarter of the train split)."""
        return self.num_val or max(1, self.num_images // 4)


class PhaseOptim(_Strict):
    """Optimiser and schedule of one phase (Tables 2-3). `lr` is the base lr for a global batch of 256."""

    epochs: int = Field(gt=0)
    warmup_epochs: int = Field(ge=0)
    batch_size: int = Field(gt=0)  # global batch, split across workers
    lr: float = Field(gt=0.0)
    min_lr: float = Field(1e-5, ge=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    optimizer: str = "lookahead_adamw"
    # micro-batches per optimiser update (gradient accumulation, same effective batch); None: the fewest whose
    # estimated peak fits the GPU (objmae_ray/method/memory.py; 1 on a CPU), printed by the plan and the trial
    accum_steps: Optional[int] = Field(None, gt=0)


class PretrainConfig(PhaseOptim):
    """ObjMAE pre-training. `epochs: 0` is the scratch baseline (Table 5's "ViT-S without pre-training"):
    the transfer phases start from a randomly initialised encoder."""

    data: DataConfig = DataConfig()
    epochs: int = Field(800, ge=0)
    warmup_epochs: int = Field(40, ge=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1.5e-4, gt=0.0)


class TransferConfig(PhaseOptim):
    """Fine-tune (layer-wise lr decay) or linear probe (frozen encoder, BatchNorm + linear head), and its recipe.

    The paper fine-tunes "with the same settings as BiT" (Kolesnikov et al. 2020): random crop + flip,
    MixUp (alpha 0.1) for datasets of more than 20k images, no label smoothing. The defaults here are
    MAE's ViT recipe without MixUp (Inception crop scale (0.08, 1), flip, drop path 0.1 for
    fine-tuning); set `mixup: 0.1` for BiT's. The linear probe follows MAE's `main_linprobe.py`
    (cls token, BatchNorm without affine + linear head; `optimizer: lars` as MAE, via timm).
    `global_pool` picks the feature: "avg" (mean of the patch tokens, MAE fine-tuning) or "token" (cls).
    `train_images` keeps only that many labelled training images (a fixed subset, the same for every
    trial): a low-label split.
    `layer_decay` (fine-tuning): None means the paper's 0.65 (Table 2) after pre-training and 1.0 (no
    decay) on a random encoder (`pretrain.epochs: 0`), see `TrialConfig.layer_decay`: layer-wise decay
    protects pre-trained features, and a scratch run has none. Below 1 from scratch is refused
    (objmae_ray/train/rules.py) unless `allow_layer_decay_from_scratch: true`.
    """

    mode: Literal["finetune", "linear"] = "finetune"
    data: DataConfig = DataConfig()
    epochs: int = Field(100, gt=0)
    warmup_epochs: int = Field(5, ge=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0.0)
    layer_decay: Optional[float] = Field(None, gt=0.0, le=1.0)  # None: 0.65 after pre-training, 1.0 from scratch
    allow_layer_decay_from_scratch: bool = False  # let layer_decay < 1 run on a random encoder (pretrain.epochs 0)
    global_pool: Optional[Literal["avg", "token"]] = None  # default: avg (finetune), token (linear)
    crop_scale: Optional[tuple[float, float]] = None  # RandomResizedCrop scale; default (0.08, 1), synthetic (0.35, 1)
    hflip: float = Field(0.5, ge=0.0, le=1.0)  # probability of a horizontal flip
    mixup: float = Field(0.0, ge=0.0)  # timm Mixup alpha (0: off; BiT: 0.1)
    cutmix: float = Field(0.0, ge=0.0)  # timm CutMix alpha (0: off)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)  # stochastic depth when fine-tuning (MAE: 0.1 for ViT-S/B)
    train_images: Optional[int] = Field(None, gt=0)  # low-label split: this many training images

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, scale):
        if scale is not None and not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"must be (low, high) with 0 < low <= high <= 1, got {list(scale)}")
        return scale

    @property
    def pool(self) -> str:
        """The feature the head reads: global_pool, or the mode's default."""
        return self.global_pool or ("avg" if self.mode == "finetune" else "token")


class ResourcesConfig(_Strict):
    """Ray Train worker group of one trial."""

    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)


class TrialConfig(_Strict):
    """Everything one trial needs; a trial is reproducible from this object alone."""

    name: str = "trial"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    pretrain: PretrainConfig = PretrainConfig()
    transfer: list[TransferConfig] = Field(default_factory=lambda: [TransferConfig()])
    resources: ResourcesConfig = ResourcesConfig()
    checkpoint_every: Optional[int] = Field(None, gt=0)  # epochs between checkpoints; None: by wall time
    checkpoint_minutes: float = Field(15.0, gt=0)  # without checkpoint_every: a checkpoint once this much time passed
    # fault tolerance (train/failures.py TrialFailurePolicy): both restart the workers from the latest checkpoint
    max_failures: int = Field(1, ge=0)  # errors raised by the trial's code (a bug, NaN loss) retried
    max_restarts: int = Field(100, ge=0)  # worker or node losses (spot reclaim, killed process) recovered from
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # train/precision.py; auto: bf16, else fp16 + loss scaling

    def transfer_layer_decay(self, index: int) -> float:
        """Layer-wise lr decay of transfer phase `index`: its `layer_decay`, else PAPER_LAYER_DECAY after
        pre-training and 1.0 (none) on a random encoder (`pretrain.epochs: 0`, the scratch baseline)."""
        value = self.transfer[index].layer_decay
        if value is not None:
            return value
        return PAPER_LAYER_DECAY if self.pretrain.epochs > 0 else 1.0


def dotted(loc) -> str:
    """('transfer', 0, 'lr') -> 'transfer.0.lr' (the one way field paths are printed)."""
    return ".".join(str(p) for p in loc)


def set_path(config: dict, path: str, value: Any) -> None:
    """Set a dotted path (`masking.alpha`, `transfer.0.lr`) in a TrialConfig.model_dump() dict."""
    parts = path.split(".")
    node: Any = config
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


class TrialConfigError(ConfigError):
    """A mapping that is not a valid TrialConfig; `errors` holds (dotted field, reason) per problem."""

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.errors = errors
        field, reason = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{source}: {field + ': ' if field else ''}{reason}{more}")


def trial_from_dict(body: Mapping, params: Mapping[str, Any] | None = None, *,
                    source: str = "trial config") -> TrialConfig:
    """TrialConfig from a mapping of its fields, with dotted `params` set on top.

    Keys starting with "_" are reserved (Tune/test hooks) and dropped. Raises TrialConfigError
    naming each bad field (dotted) and the `source` (a file name, "trial config", ...).
    """
    config = {k: v for k, v in body.items() if not str(k).startswith("_")}
    try:
        for path, value in (params or {}).items():
            set_path(config, path, value)
        return TrialConfig.model_validate(config)
    except ValidationError as err:
        errors = [(dotted(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in err.errors()]
        raise TrialConfigError(source, errors) from None
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise TrialConfigError(source, [("", f"cannot set {', '.join(params or {})} ({err})")]) from None


# ---- sweep files (search_spaces/*.yaml) ------------------------------------------------------------
# Metrics a trial reports each epoch (objmae_ray.train.loop's reports); objectives and schedulers use them.
METRICS = ("top1", "top5", "recon_loss", "speedup_est", "pretrain_time_s", "val_loss", "train_loss",
           "images_per_s", "epoch_time_s", "fallback_frac", "speedup_measured", "data_wait_frac")


def _primitive(value):
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"must be a string, number, boolean or null, not {type(value).__name__}")


Scalar = Annotated[Any, AfterValidator(_primitive)]  # Optuna choices must be primitives


def _known_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    return metric


# Metrics of a transfer phase that an objective can read from a named phase (`phase: i`).
PHASE_METRICS = ("top1", "top5", "val_loss", "train_loss")


def phase_key(metric: str, phase: int) -> str:
    """The report key carrying transfer phase `phase`'s `metric` ("transfer0_top1"): in every report, 0.0 until
    that phase reports (objmae_ray/train/loop.py), so a trial's last report holds every finished phase's value."""
    return f"transfer{phase}_{metric}"


class Objective(_Strict):
    """One objective: the metric's final value and its direction. `phase` names the transfer phase it reads
    (index into `base.transfer`): that phase's last value. Without it, the trial's last report (the final
    phase); a study with several transfer phases must name one (objmae_ray/sweep/checks.py)."""

    metric: str
    mode: Literal["max", "min"]
    phase: Optional[int] = Field(None, ge=0)

    _check_metric = field_validator("metric")(_known_metric)

    @model_validator(mode="after")
    def _phase_metric(self) -> "Objective":
        if self.phase is not None and self.metric not in PHASE_METRICS:
            raise ValueError(f"phase: {self.metric!r} is not a transfer-phase metric; a phase can be named for "
                             f"{', '.join(PHASE_METRICS)}")
        return self

    @property
    def key(self) -> str:
        """The report key Tune and Optuna optimise: the metric, or phase_key(metric, phase)."""
        return self.metric if self.phase is None else phase_key(self.metric, self.phase)

    @property
    def label(self) -> str:
        """"top1 (max)", "top1 of transfer.0 (max)"."""
        return f"{self.metric}{'' if self.phase is None else f' of transfer.{self.phase}'} ({self.mode})"


class PaperRow(_Strict):
    """Which paper row a configuration reproduces (Tables 4-9), or `extra`: a row the paper does not have.

    `alpha` is α as the paper prints it in that row; `alpha_reading` says how masking.alpha maps to it
    (README "What alpha means"): "side" (masking.alpha = α: source and target each hold round(α·N)) or
    "region" (α is source and target together: masking.alpha = α / 2). `top1` / `top5`: the paper's
    numbers, one per transfer phase of the study (a single number for a one-phase study; null where the
    paper gives none, e.g. Table 5's CIFAR-100 top-5).
    """

    table: int = Field(ge=4, le=9)
    row: Optional[str] = Field(None, min_length=1)  # the paper's row as it reads: "ObjMAE 0.34", "Zero"
    alpha: Optional[float] = Field(None, gt=0.0, le=1.0)
    alpha_reading: Optional[Literal["side", "region"]] = None
    top1: Optional[Union[float, list[Optional[float]]]] = None
    top5: Optional[Union[float, list[Optional[float]]]] = None
    extra: Optional[str] = Field(None, min_length=1)  # not a paper row: why the file runs it

    @field_validator("top1", "top5")
    @classmethod
    def _per_phase(cls, value):
        if value is None or isinstance(value, list):
            return value
        return [value]

    @model_validator(mode="after")
    def _row_or_extra(self) -> "PaperRow":
        if self.extra is not None:
            given = [k for k in ("row", "top1", "top5") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"an extra row has no paper numbers: drop {', '.join(given)} or `extra`")
        elif self.row is None or self.top1 is None:
            raise ValueError("give the paper's `row` and `top1` (and `top5`), or `extra: REASON` for a row "
                             "the paper does not have")
        if (self.alpha is None) != (self.alpha_reading is None):
            raise ValueError("alpha and alpha_reading go together: the paper's α and how masking.alpha reads it")
        return self

    def masking_alpha(self) -> float | None:
        """The masking.alpha this row's α means under its reading (None: the row prints no α)."""
        if self.alpha is None:
            return None
        return self.alpha if self.alpha_reading == "side" else self.alpha / 2

    def describe(self) -> str:
        """"Table 5: ObjMAE 0.34 (α region reading)" or "extra: REASON"."""
        if self.extra is not None:
            return f"extra (Table {self.table} has no such row): {self.extra}"
        reading = f" (α {self.alpha_reading} reading)" if self.alpha_reading else ""
        return f"Table {self.table}: {self.row}{reading}"


class Configuration(BaseModel):
    """One row of `configurations`: {key: value} (dotted TrialConfig paths or short names), plus an optional
    `paper` annotation saying which paper row it reproduces, and `baseline: true` on the row every other row
    is compared with (the tables' "vs baseline" column, Welch's t-test over the repeats; at most one row).
    `settings` holds the keys and values."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    __pydantic_extra__: dict[str, Scalar] = Field(init=False)

    paper: Optional[PaperRow] = None
    baseline: bool = False

    @property
    def settings(self) -> dict[str, Any]:
        """The row's {key: value}, without the annotation."""
        return dict(self.__pydantic_extra__ or {})


class SamplerSpec(_Strict):
    """Optuna sampler: TPE (default), grid (exhaustive ablations), random, multi-objective NSGA-II, or list
    (exactly the file's `configurations`, in order: the rows of a paper table that is not a full grid)."""

    kind: Literal["tpe", "grid", "random", "nsga2", "list"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(4, ge=0)  # TPE: random trials before the density model is used


class SchedulerSpec(_Strict):
    """FIFO (every trial runs to the end) or ASHA on a transfer metric, one rung step per reported epoch."""

    kind: Literal["fifo", "asha"] = "fifo"
    metric: str = "top1"
    mode: Literal["max", "min"] = "max"
    grace_period: Optional[int] = Field(None, gt=0)  # reports; default: pre-train epochs + 1 (first transfer epoch)
    reduction_factor: float = Field(2.0, gt=1.0)

    _check_metric = field_validator("metric")(_known_metric)


class BudgetSpec(_Strict):
    """Refuse plans larger than this before anything starts."""

    max_trials: int = Field(200, gt=0)
    max_gpu_hours: Optional[float] = Field(None, gt=0)


class EstimateSpec(_Strict):
    """Assumptions of the GPU-hours estimate printed by `objmae-sweep validate` (see objmae_ray/sweep/plan.py)."""

    gpu_tflops: Optional[float] = Field(None, gt=0)  # sustained TFLOP/s of one GPU; default: the GPU's (sweep/gpus.py), else 25
    gpu: Optional[str] = None  # the GPU planned without --cluster (a key of sweep/gpus.py GPUS: A10G, L4, A100-40GB, H100, ...)
    images_per_core: Optional[float] = Field(None, gt=0)  # loading rate per CPU core; default by data path (sweep/plan.py)
    pretrain_images: Optional[int] = Field(None, gt=0)  # default: by dataset kind (sweep/plan.py DATASET_IMAGES)
    transfer_images: Optional[int] = Field(None, gt=0)


class MlflowSpec(_Strict):
    """MLflow tracking (extra `[mlflow]`): one parent run per sweep, one child run per trial."""

    uri: str = Field(min_length=1)  # tracking URI: http(s)://server, sqlite:///mlflow.db, file:/path
    experiment: Optional[str] = None  # default: the study name


class TrackingSpec(_Strict):
    """Experiment trackers the sweep logs to besides its run directory."""

    mlflow: Optional[MlflowSpec] = None


class RangeParam(_Strict):
    """A float or int range (Optuna FloatDistribution / IntDistribution)."""

    type: Literal["float", "int"]
    low: float
    high: float
    log: bool = False
    step: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_range(self) -> "RangeParam":
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is greater than high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("int range needs integer low, high and step")
        return self


class ChoiceParam(_Strict):
    """A categorical choice among primitive values."""

    choices: list[Scalar] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list) -> list:
        if len({(type(c), c) for c in choices}) != len(choices):
            raise ValueError("choices must be distinct")
        return choices


class FixedParam(_Strict):
    """A fixed value (`key: value` in the file is shorthand for `key: {value: value}`)."""

    value: Scalar


def _param_kind(raw) -> str:
    if isinstance(raw, (RangeParam, ChoiceParam, FixedParam)):  # serialising
        return {RangeParam: "range", ChoiceParam: "choices", FixedParam: "fixed"}[type(raw)]
    if isinstance(raw, dict):
        if "choices" in raw:
            return "choices"
        if "value" in raw:
            return "fixed"
        return "range"
    return "fixed"


SearchParam = Annotated[
    Union[Annotated[RangeParam, Tag("range")], Annotated[ChoiceParam, Tag("choices")],
          Annotated[FixedParam, Tag("fixed")]],
    Discriminator(_param_kind),
]


class SweepSpec(_Strict):
    """One sweep file: study, objectives, sampler, budget, scheduler, storage, base trial and search space.

    `search_space` keys are dotted `TrialConfig` paths (`masking.alpha`, `model.patch_size`,
    `transfer.0.lr`) or the short names in `objmae_ray.sweep.space.ALIASES` (alpha, padding, patch_size,
    selection). With `sampler: {kind: list}` the trials are exactly `configurations`, a list of rows
    {key: value} with the same keys (a field a row leaves out keeps the base value), and `search_space`
    may only fix values. A row's `paper: {table, row, alpha, alpha_reading, top1, top5}` (or `{table, extra}`)
    says which paper row it reproduces (`PaperRow`); the paper tables print those numbers next to the
    measured ones. Each configuration runs `repeats` times with seeds `base.seed + 0 .. repeats-1`
    and the sampler learns from their mean (`seed` can also be searched like any field).
    `significance`: with repeats >= 2, tables mark which rows differ from the best row by less than the
    seed noise (Welch's t-test at `significance_level`).
    `reuse_pretraining`: a trial whose pre-training (same key: objmae_ray/train/reuse.py) is already stored in
    `<storage>/pretrained` by any study loads it and runs only its transfer phases; false pre-trains every trial.
    `pretrained_from: RUN_DIR` (a finished run on the same storage): a transfer-only study, one trial per trial
    of that run whose pre-training finished, with its pre-training and this file's transfer phases
    (objmae_ray/sweep/pretrained.py resolves it into the list sampler when the file is loaded).
    Resources per trial are `base.resources` (Ray Train workers); `driver_cpus` is the Tune driver's.
    """

    study: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    objectives: list[Objective] = Field(min_length=1)
    sampler: SamplerSpec = SamplerSpec()
    num_samples: Optional[int] = Field(None, gt=0)  # configurations to try; grid: the grid size (default)
    repeats: int = Field(1, gt=0)
    concurrency: int = Field(1, gt=0)
    scheduler: SchedulerSpec = SchedulerSpec()
    storage: str = "runs"  # local dir, NFS mount or s3://bucket/prefix (multi-node needs shared storage)
    optuna_storage: Optional[str] = None  # Optuna RDB URL (postgresql://, mysql://); default: SQLite in the run dir
    tracking: TrackingSpec = TrackingSpec()
    driver_cpus: float = Field(0.1, gt=0)
    budget: BudgetSpec = BudgetSpec()
    estimate: EstimateSpec = EstimateSpec()
    base: TrialConfig = TrialConfig()
    search_space: dict[str, SearchParam] = Field(default_factory=dict)
    configurations: list[Configuration] = Field(default_factory=list)  # sampler list: one row per trial config
    significance: Literal["welch", "none"] = "welch"  # tables mark differences to the best row within noise
    significance_level: float = Field(0.05, gt=0.0, lt=1.0)
    reuse_pretraining: bool = True  # reuse a finished pre-training of the same key from `<storage>/pretrained`
    pretrained_from: Optional[str] = None  # a finished run directory: one trial per pre-training of it (transfer only)

    @field_validator("search_space", mode="before")
    @classmethod
    def _scalars_are_fixed(cls, space):
        if isinstance(space, dict):
            return {k: v if isinstance(v, dict) else {"value": v} for k, v in space.items()}
        return space

    @field_validator("objectives")
    @classmethod
    def _distinct_metrics(cls, objectives: list[Objective]) -> list[Objective]:
        keys = [o.key for o in objectives]
        if len(set(keys)) != len(keys):
            raise ValueError(f"objectives must be distinct (metric, phase), got {keys}")
        return objectives

    def paper_rows(self) -> list[PaperRow | None]:
        """Each configuration's paper annotation (None: not annotated), in order."""
        return [row.paper for row in self.configurations]
