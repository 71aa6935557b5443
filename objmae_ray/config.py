"""Pydantic schemas: everything one trial needs (`TrialConfig`) and the sweep file (`SweepSpec`).

Extra keys are forbidden everywhere, so a typo in a YAML file is an error naming the field path,
never a silently ignored setting. Defaults are the paper's (Tables 1-3); tiny presets exist for CPU.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

Selection = Literal["object", "inter", "mae", "cam"]
Padding = Literal["throwout", "zero", "replicate", "random"]
DatasetKind = Literal["synthetic", "coco", "folder", "cifar100"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """ObjMAE encoder/decoder size (Table 1) and tokenisation."""

    preset: str = "vit_small"  # a key of objmae_ray.model.PRESETS
    patch_size: int = Field(16, gt=0)
    img_size: int = Field(224, gt=0)
    norm_pix_loss: bool = False

    @model_validator(mode="after")
    def _patch_divides_image(self) -> "ModelConfig":
        if self.img_size % self.patch_size:
            raise ValueError(
                f"patch_size {self.patch_size} does not divide img_size {self.img_size}"
            )
        return self


class MaskingConfig(_Strict):
    """Selection -> division -> alignment (paper section 3)."""

    alpha: float = Field(0.34, gt=0.0, le=1.0)
    selection: Selection = "object"
    padding: Padding = "zero"
    min_ratio: float = Field(0.05, ge=0.0, lt=1.0)  # objects below this object ratio are not selected
    patch_threshold: float = Field(0.2, gt=0.0, le=1.0)  # share of a patch's pixels an object must cover
    cam_threshold: float = Field(0.3, ge=0.0, le=1.0)  # normalised CAM value for the cam region


class DataConfig(_Strict):
    """Where a phase reads its images. `root=None` means the built-in synthetic scene set."""

    kind: DatasetKind = "synthetic"
    root: Optional[str] = None  # dataset root (COCO images dir, ImageFolder root, CIFAR dir, synthetic cache)
    ann_file: Optional[str] = None  # COCO instances JSON (coco only)
    train_split: str = "train"
    val_split: str = "val"
    cam_cache: Optional[str] = None  # per-dataset CAM cache built by `objmae-data cam` (selection=cam)
    num_images: int = Field(512, gt=0)  # synthetic only: images in the train split
    max_objects: int = Field(20, gt=0)  # object slots per image (ratio >= 0.05 allows at most 20 disjoint)
    loader_workers: int = Field(2, ge=0)


class PhaseOptim(_Strict):
    """Optimiser and schedule of one phase (Tables 2-3). `lr` is the base lr for a global batch of 256."""

    epochs: int = Field(gt=0)
    warmup_epochs: int = Field(ge=0)
    batch_size: int = Field(gt=0)  # global batch, split across workers
    lr: float = Field(gt=0.0)
    min_lr: float = Field(1e-5, ge=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    optimizer: str = "lookahead_adamw"


class PretrainConfig(PhaseOptim):
    data: DataConfig = DataConfig()
    epochs: int = Field(800, gt=0)
    warmup_epochs: int = Field(40, ge=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1.5e-4, gt=0.0)


class TransferConfig(PhaseOptim):
    """Fine-tune (layer-wise lr decay) or linear probe (frozen encoder, BatchNorm + linear head)."""

    mode: Literal["finetune", "linear"] = "finetune"
    data: DataConfig = DataConfig()
    epochs: int = Field(100, gt=0)
    warmup_epochs: int = Field(5, ge=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0.0)
    layer_decay: float = Field(0.65, gt=0.0, le=1.0)


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
    checkpoint_every: int = Field(1, gt=0)  # epochs between checkpoints
    max_failures: int = Field(1, ge=0)  # Ray Train FailureConfig: worker-group restarts from the latest checkpoint

    @model_validator(mode="after")
    def _cam_needs_cache(self) -> "TrialConfig":
        if self.masking.selection == "cam" and not self.pretrain.data.cam_cache:
            raise ValueError("masking.selection 'cam' needs pretrain.data.cam_cache (build it with `objmae-data cam`)")
        return self
