"""The cost plan `objmae-sweep validate` prints: trial count and a GPU-hours estimate.

GPU-hours model (an assumption, printed with the estimate): FLOPs of one trial =
  pre-train epochs x pre-train images x FLOPs of one ObjMAE forward+backward at the trial's alpha
  + per transfer phase: epochs x (train images x step FLOPs + val images x forward FLOPs),
divided by `estimate.gpu_tflops` sustained TFLOP/s per GPU (default 25: a TITAN RTX / V100-class
card in mixed precision at moderate utilisation). Step FLOPs come from objmae_ray/method/flops.py.
A linear-probe step counts as a forward (frozen encoder, no backward); an eval image costs a forward
(1/3 of a step). Data loading, communication and start-up are not counted. Range dimensions are
estimated at their endpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

from objmae_ray.config import DataConfig, SweepSpec, TrialConfig, trial_from_dict
from objmae_ray.method.flops import objmae_flops, supervised_flops
from objmae_ray.sweep.checks import checked_cases, coverage
from objmae_ray.sweep.space import asha_milestones, base_trial, describe_param, num_configurations, search_paths

# Train / val images per epoch by dataset kind, for the estimate (override with estimate.*_images).
# coco: COCO 2014 train after the paper's filtering (72,452 of 82,783), COCO 2017 train unfiltered;
# folder: ImageNet-100.
DATASET_IMAGES = {"coco": (72_452, 0), "folder": (126_689, 5_000), "cifar100": (50_000, 10_000)}
COCO_TRAIN_IMAGES = {"train2014": 72_452, "train2017": 118_287}
PLAN_SAMPLE = 64  # configurations the estimate averages over (endpoints of ranges)


@dataclass
class Plan:
    configurations: int
    trials: int
    epochs_per_trial: int
    gpu_hours_per_trial: float  # mean over the checked candidate configurations
    gpu_hours: float

    def lines(self, spec: SweepSpec, *, brief: bool = False) -> list[str]:
        """The plan as printed by `objmae-sweep validate`; brief (a sweep starting): without the search
        space, checks and storage lines."""
        dims = [f"  {key} ({path}): {describe_param(spec.search_space[key])}"
                for key, path in search_paths(spec).items()]
        dims += [f"  configurations.{i}: " + ", ".join(f"{k}={v!r}" for k, v in row.items())
                 for i, row in enumerate(spec.configurations)]
        objectives = ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives)
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
            f"(FLOP count / {spec.estimate.gpu_tflops:g} sustained TFLOP/s per GPU; no data loading or start-up)",
        ] + ([] if brief else [f"checks: {coverage(spec)}", f"storage: {spec.storage}"])


def plan(spec: SweepSpec) -> Plan:
    """Trial count and FLOP-based GPU-hours estimate (see the module docstring for the model)."""
    seconds = []
    for values in [case.values for case in checked_cases(spec)[:PLAN_SAMPLE]] or [{}]:
        cfg = trial_from_dict(spec.base.model_dump(), values)
        seconds.append(trial_flops(cfg, spec) / (spec.estimate.gpu_tflops * 1e12))
    per_trial = sum(seconds) / len(seconds) / 3600
    base = base_trial(spec)
    epochs = base.pretrain.epochs + sum(t.epochs for t in base.transfer)
    configurations = num_configurations(spec)
    trials = configurations * spec.repeats
    return Plan(configurations, trials, epochs, per_trial, per_trial * trials)


def _images(data: DataConfig, override: int | None) -> tuple[int, int]:
    if override is not None:
        return override, 0
    if data.kind == "synthetic":
        return data.num_images, 0
    if data.kind == "coco" and data.train_split in COCO_TRAIN_IMAGES:
        return COCO_TRAIN_IMAGES[data.train_split], 0
    return DATASET_IMAGES[data.kind]


def trial_flops(cfg: TrialConfig, spec: SweepSpec) -> float:
    """FLOPs of one trial (pre-train + every transfer phase), per the module docstring's model."""
    model = cfg.model
    pre_images, _ = _images(cfg.pretrain.data, spec.estimate.pretrain_images)
    total = cfg.pretrain.epochs * pre_images * objmae_flops(model.preset, model.img_size, model.patch_size,
                                                             cfg.masking.alpha)
    step = supervised_flops(model.preset, model.img_size, model.patch_size)
    for transfer in cfg.transfer:
        train_images, val_images = _images(transfer.data, spec.estimate.transfer_images)
        train_step = step / 3 if transfer.mode == "linear" else step
        total += transfer.epochs * (train_images * train_step + val_images * step / 3)
    return float(total)
