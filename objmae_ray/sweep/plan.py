"""The cost plan `objmae-sweep validate` prints: trial count, and per configuration the bound of each phase
and the GPU-hours that follow.

A phase runs as fast as the slower of two rates per worker (printed with the plan):
  compute  `estimate.gpu_tflops` sustained TFLOP/s per GPU / FLOPs per image (objmae_ray/method/flops.py:
           an ObjMAE forward+backward at the trial's alpha; a supervised step for fine-tuning; a forward,
           1/3 of a step, for a linear-probe step and for every evaluation image);
  loading  `resources.cpus_per_worker` x the images/s one CPU core delivers on the phase's data path at
           224 px: LOADER_IMAGES_PER_CORE, measured by bench/data.py (bench/RESULTS.md), or
           `estimate.images_per_core`. On the packed path (`data.store`) the host only gathers records;
           augmentation runs on the GPU and is counted with compute.
Wall time of a phase = epochs x images / (workers x the slower rate); GPU-hours = wall time x workers x GPUs
per worker (a CPU trial counts one device per worker). Images per epoch: the synthetic set's size, or
DATASET_IMAGES by kind, or `estimate.*_images`. Start-up and communication are not counted. Range
dimensions are estimated at their endpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from objmae_ray.config import DataConfig, SweepSpec, TrialConfig, trial_from_dict
from objmae_ray.method.flops import objmae_flops, supervised_flops
from objmae_ray.sweep.checks import checked_cases, coverage
from objmae_ray.sweep.space import asha_milestones, base_trial, describe, describe_param, num_configurations, search_paths

# Train / val images per epoch by dataset kind, for the estimate (override with estimate.*_images).
# coco: COCO 2014 train after the paper's filtering (72,452 of 82,783), COCO 2017 train unfiltered;
# folder: ImageNet-100.
DATASET_IMAGES = {"coco": (72_452, 0), "folder": (126_689, 5_000), "cifar100": (50_000, 10_000)}
COCO_TRAIN_IMAGES = {"train2014": 72_452, "train2017": 118_287}
PLAN_SAMPLE = 64  # configurations the estimate averages over (endpoints of ranges)
SHOWN_CONFIGURATIONS = 8  # configurations whose bounds are printed one per line
# Images/s one CPU core delivers at 224 px, by data path (bench/data.py on a 2-core EPYC VM, one thread,
# bench/RESULTS.md), rounded down: the packed store's host side (COCO-mini: 8,251 wall / 13,003-13,803
# CPU-time images/s measured; 5,000 is issue 11's floor), and each kind's decode path in a DataLoader
# worker (COCO: JPEG + instance masks, 153-244 measured; synthetic: PNG + masks, 239-323; folder: JPEG
# decode + crop, not measured, taken as COCO's without masks; CIFAR-100: 32 px arrays resized, estimated).
LOADER_IMAGES_PER_CORE = {"packed": 5000.0, "coco": 200.0, "synthetic": 320.0, "folder": 250.0, "cifar100": 1000.0}


@dataclass
class PhaseCost:
    """One phase of one trial under the plan's model (rates per worker, in images/s)."""

    name: str
    path: str  # data path: "packed" or the dataset kind (decoded by DataLoader workers)
    compute_rate: float
    loading_rate: float
    wall_s: float
    gpu_hours: float

    @property
    def bound(self) -> str:
        return "loading" if self.loading_rate < self.compute_rate else "compute"

    def describe(self) -> str:
        """'pre-train loading-bound (loading 200 < compute 1,090 img/s)'."""
        low, high = sorted([("loading", self.loading_rate), ("compute", self.compute_rate)], key=lambda x: x[1])
        return f"{self.name} {self.bound}-bound ({low[0]} {_rate(low[1])} < {high[0]} {_rate(high[1])} img/s)"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value < 1e6 else f"{value / 1e6:,.3g}M"


@dataclass
class Plan:
    configurations: int
    trials: int
    epochs_per_trial: int
    gpu_hours_per_trial: float  # mean over the checked candidate configurations
    gpu_hours: float
    bounds: list[tuple[str, list[PhaseCost]]] = field(default_factory=list)  # (configuration, phases) per candidate

    def lines(self, spec: SweepSpec, *, brief: bool = False) -> list[str]:
        """The plan as printed by `objmae-sweep validate`; brief (a sweep starting): without the search
        space, checks and storage lines."""
        dims = [f"  {key} ({path}): {describe_param(spec.search_space[key])}"
                for key, path in search_paths(spec).items()]
        dims += [f"  configurations.{i}: " + ", ".join(f"{k}={v!r}" for k, v in row.settings.items())
                 + (f"  [{row.paper.describe()}]" if row.paper else "") for i, row in enumerate(spec.configurations)]
        objectives = ", ".join(o.label for o in spec.objectives)
        sched = spec.scheduler.kind
        if sched == "asha":
            grace, max_t = asha_milestones(spec)
            sched += f" on {spec.scheduler.metric} ({spec.scheduler.mode}), grace {grace}, max_t {max_t} reports"
        base = base_trial(spec)
        res = base.resources
        space = [] if brief else ["search space:", *(dims or ["  (none: the base trial only)"])]
        return [
            f"study {spec.study}: objectives {objectives}; sampler {spec.sampler.kind} (seed {spec.sampler.seed})",
            *space,
            f"trials: {self.configurations} configurations x {spec.repeats} repeats = {self.trials} "
            f"(concurrency {spec.concurrency}); scheduler {sched}",
            f"per trial: {res.num_workers} worker(s) x ({res.cpus_per_worker} CPU"
            f"{f', {res.gpus_per_worker} GPU' if res.use_gpu else ''}), {self.epochs_per_trial} epochs "
            f"(pre-train {base.pretrain.epochs} on {base.pretrain.data.kind}"
            + "".join(f", {t.mode} {t.epochs} on {t.data.kind}" for t in base.transfer) + ")",
            f"estimate: {self.gpu_hours_per_trial:.3g} GPU-hours per trial, {self.gpu_hours:.3g} GPU-hours in all "
            f"(each phase at the slower of compute, FLOPs / {spec.estimate.gpu_tflops:g} sustained TFLOP/s per GPU, "
            f"and loading, cpus_per_worker x {self._rates(spec)} img/s per core; no start-up)",
        ] + ([] if brief else [*self._bound_lines(), f"checks: {coverage(spec)}", f"storage: {spec.storage}"])

    def _rates(self, spec: SweepSpec) -> str:
        if spec.estimate.images_per_core is not None:
            return f"{spec.estimate.images_per_core:,.0f}"
        paths = dict.fromkeys(phase.path for _, phases in self.bounds for phase in phases)  # phase order
        return ", ".join(f"{LOADER_IMAGES_PER_CORE[p]:,.0f} ({'packed' if p == 'packed' else p + ' files'})"
                         for p in paths)

    def _bound_lines(self) -> list[str]:
        lines = [f"  {name}: " + ", ".join(p.describe() for p in phases)
                 + f"; {sum(p.gpu_hours for p in phases):.3g} GPU-h"
                 for name, phases in self.bounds[:SHOWN_CONFIGURATIONS]]
        if len(self.bounds) > SHOWN_CONFIGURATIONS:
            lines.append(f"  ... ({len(self.bounds) - SHOWN_CONFIGURATIONS} more configurations checked)")
        return ["bounds per worker and configuration:", *lines] if lines else []


def plan(spec: SweepSpec) -> Plan:
    """Trial count, each checked configuration's bounds and the GPU-hours estimate (module docstring)."""
    bounds = []
    for values in [case.values for case in checked_cases(spec)[:PLAN_SAMPLE]] or [{}]:
        cfg = trial_from_dict(spec.base.model_dump(), values)
        bounds.append((describe(values), phase_costs(cfg, spec)))
    per_trial = sum(sum(p.gpu_hours for p in phases) for _, phases in bounds) / len(bounds)
    base = base_trial(spec)
    epochs = base.pretrain.epochs + sum(t.epochs for t in base.transfer)
    configurations = num_configurations(spec)
    trials = configurations * spec.repeats
    return Plan(configurations, trials, epochs, per_trial, per_trial * trials, bounds)


def _images(data: DataConfig, override: int | None) -> tuple[int, int]:
    if override is not None:
        return override, 0
    if data.kind == "synthetic":
        return data.num_images, 0
    if data.kind == "coco" and data.train_split in COCO_TRAIN_IMAGES:
        return COCO_TRAIN_IMAGES[data.train_split], 0
    return DATASET_IMAGES[data.kind]


def loading_rate(data: DataConfig, cpus: float, spec: SweepSpec) -> tuple[str, float]:
    """(data path, images/s one worker's CPUs deliver on it)."""
    path = "packed" if data.store else data.kind
    per_core = spec.estimate.images_per_core or LOADER_IMAGES_PER_CORE[path]
    return path, cpus * per_core


def _labelled(transfer, images: tuple[int, int]) -> tuple[int, int]:
    """(train, val) images of a transfer phase, its train split cut to a low-label split (train_images)."""
    train, val = images
    return (min(train, transfer.train_images) if transfer.train_images else train), val


def phase_costs(cfg: TrialConfig, spec: SweepSpec) -> list[PhaseCost]:
    """Every phase's rates, bound, wall time and GPU-hours (module docstring)."""
    model, res = cfg.model, cfg.resources
    devices = res.gpus_per_worker if res.use_gpu else 1.0
    flop_rate = devices * spec.estimate.gpu_tflops * 1e12  # per worker
    step = supervised_flops(model.preset, model.img_size, model.patch_size)
    phases = [("pre-train", cfg.pretrain, _images(cfg.pretrain.data, spec.estimate.pretrain_images),
               objmae_flops(model.preset, model.img_size, model.patch_size, cfg.masking.alpha))]
    phases += [(transfer.mode, transfer, _labelled(transfer, _images(transfer.data, spec.estimate.transfer_images)),
                step / 3 if transfer.mode == "linear" else step) for transfer in cfg.transfer]
    costs = []
    for name, phase, (train_images, val_images), train_flops in phases:
        if phase.epochs == 0:  # the scratch baseline's pre-training does not run
            continue
        images = train_images + val_images
        flops = train_images * train_flops + val_images * step / 3  # per epoch
        compute_rate = flop_rate * images / flops
        path, load_rate = loading_rate(phase.data, res.cpus_per_worker, spec)
        wall = phase.epochs * images / (res.num_workers * min(compute_rate, load_rate))
        costs.append(PhaseCost(name, path, compute_rate, load_rate, wall, wall * res.num_workers * devices / 3600))
    return costs


def trial_flops(cfg: TrialConfig, spec: SweepSpec) -> float:
    """FLOPs of one trial (pre-train + every transfer phase), per the module docstring's model."""
    model = cfg.model
    pre_images, _ = _images(cfg.pretrain.data, spec.estimate.pretrain_images)
    total = cfg.pretrain.epochs * pre_images * objmae_flops(model.preset, model.img_size, model.patch_size,
                                                             cfg.masking.alpha)
    step = supervised_flops(model.preset, model.img_size, model.patch_size)
    for transfer in cfg.transfer:
        train_images, val_images = _labelled(transfer, _images(transfer.data, spec.estimate.transfer_images))
        train_step = step / 3 if transfer.mode == "linear" else step
        total += transfer.epochs * (train_images * train_step + val_images * step / 3)
    return float(total)
