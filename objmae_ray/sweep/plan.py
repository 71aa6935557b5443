"""The cost plan `objmae-sweep validate` prints: trial count, and per configuration the bound of each phase,
its estimated peak GPU memory and the GPU-hours that follow, and the bytes the study writes to storage.

Where a trial runs: with `--cluster`, the first node type of the cluster YAML its workers fit that has a known
GPU (sweep/gpus.py: by instance type, or named in the type's resources); else `estimate.gpu`; else no GPU model.
A phase runs as fast as the slower of two rates per worker (printed with the plan):
  compute  sustained TFLOP/s per GPU (`estimate.gpu_tflops`, else the GPU's: a measured bench/gpu_check.sh run
           in bench/results/ when there is one, else datasheet peak x MFU; else 25) / FLOPs per image
           (objmae_ray/method/flops.py: an ObjMAE forward+backward at the trial's alpha; a supervised step for
           fine-tuning; a forward, 1/3 of a step, for a linear-probe step and for every evaluation image);
  loading  `resources.cpus_per_worker` x VCPU_SHARE x the images/s one CPU core delivers on the phase's data
           path at 224 px: LOADER_IMAGES_PER_CORE, measured by bench/data.py (bench/RESULTS.md), or
           `estimate.images_per_core` (taken as given, per Ray CPU). Ray's CPUs on a cloud node are vCPUs,
           hyperthreads: half a core each. On the packed path (`data.store`) the host only gathers records;
           augmentation runs on the GPU and is counted with compute.
Wall time of a phase = epochs x images / (workers x the slower rate); GPU-hours = wall time x workers x GPUs
per worker (a CPU trial counts one device per worker). Images per epoch: the synthetic set's size, or
DATASET_IMAGES by kind, or `estimate.*_images`. Start-up and communication are not counted. Range
dimensions are estimated at their endpoints.
Memory (objmae_ray/method/memory.py): each phase's estimated peak at its per-worker batch, bf16 on a GPU;
when it exceeds the GPU's memory the phase runs with gradient accumulation (`accum_steps`, chosen the same
way by the trial) and the plan prints it.
Storage: checkpoints per phase (every `checkpoint_every` epochs, or every `checkpoint_minutes` of the
phase's estimated wall time, and at its end) x their size (weights + optimiser state, from the parameter
count), summed over the trials.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from objmae_ray.config import DataConfig, SweepSpec, TrialConfig, trial_from_dict
from objmae_ray.method.flops import objmae_flops, supervised_flops
from objmae_ray.method.memory import GIB, parameter_count, planned_accumulation, step_memory
from objmae_ray.sweep.gpus import GPUS, Gpu
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
VCPU_SHARE = 0.5  # one Ray CPU (a cloud vCPU, a hyperthread) delivers half a core's images/s
DEFAULT_TFLOPS = 25.0  # without estimate.gpu_tflops and without a known GPU
# Checkpoint bytes per parameter: the fp32 weights, plus AdamW's two moments and Lookahead's slow copy for
# what the phase trains (train_state.pt); a transfer checkpoint also holds the ObjMAE weights.
STATE_BYTES = {"lookahead": 16, "adam": 12, "other": 8}


@dataclass(frozen=True)
class Target:
    """Where the plan places a trial: a node type (or None) and its GPU (or None: no memory plan)."""

    node_type: str | None = None
    gpu: Gpu | None = None

    def describe(self, tflops: float) -> str:
        if self.gpu is None:
            return f"no GPU model ({tflops:g} sustained TFLOP/s assumed, memory not planned)"
        where = f"{self.node_type}: " if self.node_type else ""
        rate = f"{tflops:,.3g} sustained TFLOP/s ({self.gpu.source})"
        return f"{where}{self.gpu.name} {self.gpu.memory_gib:g} GiB, {rate}"


@dataclass
class PhaseCost:
    """One phase of one trial under the plan's model (rates per worker, in images/s)."""

    name: str
    path: str  # data path: "packed" or the dataset kind (decoded by DataLoader workers)
    compute_rate: float
    loading_rate: float
    wall_s: float
    gpu_hours: float
    peak_gib: float | None = None  # estimated peak GPU memory per worker at the micro-batch (None: not planned)
    accum_steps: int = 1
    accum_why: str | None = None  # why accumulation was chosen (memory.planned_accumulation's line)
    checkpoints: int = 0
    checkpoint_bytes: float = 0.0  # one checkpoint of this phase

    @property
    def bound(self) -> str:
        return "loading" if self.loading_rate < self.compute_rate else "compute"

    def describe(self) -> str:
        """'pre-train loading-bound (loading 200 < compute 1,090 img/s), 4.1 GiB'."""
        low, high = sorted([("loading", self.loading_rate), ("compute", self.compute_rate)], key=lambda x: x[1])
        text = f"{self.name} {self.bound}-bound ({low[0]} {_rate(low[1])} < {high[0]} {_rate(high[1])} img/s)"
        if self.peak_gib is not None:
            text += f", {self.peak_gib:.1f} GiB"
        if self.accum_steps > 1:
            text += f" with accumulation {self.accum_steps}"
        return text


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
    target: Target = Target()
    tflops: float = DEFAULT_TFLOPS
    bytes_per_trial: float = 0.0  # checkpoint bytes one trial writes (mean over the candidates)

    @property
    def bytes_written(self) -> float:
        return self.bytes_per_trial * self.trials

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
            f"on {self.target.describe(self.tflops)}",
            f"estimate: {self.gpu_hours_per_trial:.3g} GPU-hours per trial, {self.gpu_hours:.3g} GPU-hours in all "
            f"(each phase at the slower of compute, FLOPs / {self.tflops:,.3g} sustained TFLOP/s per GPU, "
            f"and loading, cpus_per_worker x {self._rates(spec)} img/s per CPU; no start-up)",
            *self._accumulation_lines(),
        ] + ([] if brief else [*self._bound_lines(), f"checks: {coverage(spec)}",
                               f"storage: {spec.storage}; {self._storage_line(spec)}"])

    def _rates(self, spec: SweepSpec) -> str:
        if spec.estimate.images_per_core is not None:
            return f"{spec.estimate.images_per_core:,.0f}"
        paths = dict.fromkeys(phase.path for _, phases in self.bounds for phase in phases)  # phase order
        return ", ".join(f"{per_cpu(p):,.0f} ({'packed' if p == 'packed' else p + ' files'})" for p in paths) \
            + f" (a vCPU: {VCPU_SHARE:g} x a core's rate)"

    def _accumulation_lines(self) -> list[str]:
        """One line per distinct accumulation decision, naming the first configuration that needs it."""
        found: dict[str, list[str]] = {}
        for name, phases in self.bounds:
            for phase in phases:
                if phase.accum_why:
                    found.setdefault(phase.accum_why, []).append(name)
        return [f"memory: {why} ({names[0]}" + (f", and {len(names) - 1} more configurations)" if len(names) > 1
                                                else ")") for why, names in found.items()]

    def _storage_line(self, spec: SweepSpec) -> str:
        base = base_trial(spec)
        every = (f"every {base.checkpoint_every} epoch(s)" if base.checkpoint_every
                 else f"every {base.checkpoint_minutes:g} min")
        counts = [sum(p.checkpoints for p in phases) for _, phases in self.bounds]
        sizes = sorted({round(p.checkpoint_bytes / 1e6) for _, phases in self.bounds for p in phases})
        return (f"checkpoints {every} and at each phase end, the last 2 kept: ~{sum(counts) / max(len(counts), 1):,.0f} "
                f"per trial of {'-'.join(f'{s:,}' for s in (sizes[0], sizes[-1]) if sizes) or '0'} MB; "
                f"writes {_bytes(self.bytes_per_trial)} per trial, {_bytes(self.bytes_written)} for the study")

    def _bound_lines(self) -> list[str]:
        lines = [f"  {name}: " + ", ".join(p.describe() for p in phases)
                 + f"; {sum(p.gpu_hours for p in phases):.3g} GPU-h"
                 for name, phases in self.bounds[:SHOWN_CONFIGURATIONS]]
        if len(self.bounds) > SHOWN_CONFIGURATIONS:
            lines.append(f"  ... ({len(self.bounds) - SHOWN_CONFIGURATIONS} more configurations checked)")
        return ["bounds per worker and configuration:", *lines] if lines else []


def _bytes(value: float) -> str:
    return f"{value / 1e12:,.2f} TB" if value >= 1e12 else f"{value / 1e9:,.1f} GB"


def per_cpu(path: str) -> float:
    """Images/s one Ray CPU (a vCPU) delivers on a data path."""
    return LOADER_IMAGES_PER_CORE[path] * VCPU_SHARE


def resolve_target(spec: SweepSpec, target: Target | None) -> tuple[Target, float]:
    """(the GPU trials are planned on, its sustained TFLOP/s): `target` (cli: from --cluster), else
    estimate.gpu, else no GPU model; estimate.gpu_tflops overrides the rate."""
    if target is None:
        target = Target(gpu=GPUS[spec.estimate.gpu]) if spec.estimate.gpu in GPUS else Target()
    return target, spec.estimate.gpu_tflops or (target.gpu.sustained_tflops if target.gpu else DEFAULT_TFLOPS)


def plan(spec: SweepSpec, target: Target | None = None) -> Plan:
    """Trial count, each checked configuration's bounds and the GPU-hours estimate (module docstring).
    `target`: where trials run (cli: from --cluster); default: estimate.gpu, else no GPU model."""
    target, tflops = resolve_target(spec, target)
    bounds = []
    for values in [case.values for case in checked_cases(spec)[:PLAN_SAMPLE]] or [{}]:
        cfg = trial_from_dict(spec.base.model_dump(), values)
        bounds.append((describe(values), phase_costs(cfg, spec, target=target, tflops=tflops)))
    per_trial = sum(sum(p.gpu_hours for p in phases) for _, phases in bounds) / len(bounds)
    bytes_per_trial = sum(sum(p.checkpoints * p.checkpoint_bytes for p in phases) for _, phases in bounds) / len(bounds)
    base = base_trial(spec)
    epochs = base.pretrain.epochs + sum(t.epochs for t in base.transfer)
    configurations = num_configurations(spec)
    trials = configurations * spec.repeats
    return Plan(configurations, trials, epochs, per_trial, per_trial * trials, bounds, target, tflops,
                bytes_per_trial)


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
    per_cpu_rate = spec.estimate.images_per_core or per_cpu(path)
    return path, cpus * per_cpu_rate


def checkpoint_bytes(cfg: TrialConfig, phase_name: str, optimizer: str) -> float:
    """Bytes of one checkpoint taken in this phase (weights + the optimiser state of what it trains)."""
    model = cfg.model
    objmae = parameter_count(model.preset, model.img_size, model.patch_size, "pretrain")
    name = optimizer.lower()
    per_param = STATE_BYTES["lookahead" if "lookahead" in name else "adam" if "adam" in name else "other"]
    if phase_name == "pre-train":
        return float(objmae * per_param)
    classifier = parameter_count(model.preset, model.img_size, model.patch_size, "finetune")
    trained = classifier if phase_name == "finetune" else classifier * 0.01  # a linear probe trains its head
    return float(objmae * 4 + classifier * 4 + trained * (per_param - 4))


def checkpoint_count(cfg: TrialConfig, epochs: int, wall_s: float) -> int:
    """Checkpoints one phase writes: every checkpoint_every epochs, or one per checkpoint_minutes of wall time
    (at most one per epoch), and always one at the phase end."""
    if cfg.checkpoint_every:
        return math.ceil(epochs / cfg.checkpoint_every)
    return min(epochs, int(wall_s // (cfg.checkpoint_minutes * 60)) + 1)


def _labelled(transfer, images: tuple[int, int]) -> tuple[int, int]:
    """(train, val) images of a transfer phase, its train split cut to a low-label split (train_images)."""
    train, val = images
    return (min(train, transfer.train_images) if transfer.train_images else train), val


def phase_costs(cfg: TrialConfig, spec: SweepSpec, *, target: Target | None = None,
                tflops: float | None = None) -> list[PhaseCost]:
    """Every phase's rates, bound, wall time, GPU-hours, memory and checkpoints (module docstring)."""
    model, res = cfg.model, cfg.resources
    target, resolved = resolve_target(spec, target)
    devices = res.gpus_per_worker if res.use_gpu else 1.0
    tflops = tflops or resolved
    flop_rate = devices * tflops * 1e12  # per worker
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
        cost = PhaseCost(name, path, compute_rate, load_rate, wall, wall * res.num_workers * devices / 3600,
                         checkpoints=checkpoint_count(cfg, phase.epochs, wall),
                         checkpoint_bytes=checkpoint_bytes(cfg, name, phase.optimizer))
        if res.use_gpu and target.gpu is not None:
            memory_phase = "pretrain" if name == "pre-train" else name
            per_worker = max(1, phase.batch_size // res.num_workers)
            memory = step_memory(model, memory_phase, alpha=cfg.masking.alpha, optimizer=phase.optimizer,
                                 precision=cfg.precision)
            if memory is not None:
                cost.accum_steps, cost.accum_why = phase.accum_steps or 1, None
                if not phase.accum_steps:
                    cost.accum_steps, cost.accum_why = planned_accumulation(
                        model, memory_phase, batch=per_worker, alpha=cfg.masking.alpha, optimizer=phase.optimizer,
                        precision=cfg.precision, capacity_bytes=target.gpu.memory_gib * GIB)
                cost.peak_gib = memory.peak(math.ceil(per_worker / cost.accum_steps)) / GIB
        costs.append(cost)
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
