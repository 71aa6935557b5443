"""The train loop of one trial inside one Ray Train worker: ObjMAE pre-training, then each transfer
phase (fine-tune and/or linear probe), reporting and checkpointing every epoch.

`train_loop_per_worker(config)` is what the TorchTrainer runs (config = {"trial": TrialConfig dump,
"hooks": dict | None}); `TrialRun` holds one worker's model, counters and resume point; a `Worker`
is its runtime (Ray Train via `ray_worker()`, or `LocalRun` in a plain process for unit tests).

Metrics (flat, one report per epoch): phase, phase_index, epoch (0-based within the phase),
recon_loss (the pre-train epoch's loss; in transfer phases the last pre-train value), recon_zero_loss (the
loss of predicting zeros on the same targets in that epoch: the baseline a reconstruction must beat), train_loss, top1,
top5, val_loss, val_images (transfer phases; top1/top5/val_loss are 0.0 during pre-training so Tune
schedulers always find the metric), images_per_s, epoch_time_s (train + eval), pretrain_time_s
(cumulative pre-train compute time), speedup_est (method/flops.py), speedup_measured (supervised ViT
step time / ObjMAE step time on this device, train/speed.py; NaN until measured; the last pre-train
value in transfer phases), data_wait_frac (share of the epoch's training time spent waiting for input),
fallback / fallback_frac (images that had no eligible object), what alpha did in the pre-train epoch
(means per image: encoder_seen_frac = distinct patches the encoder sees / N, target_real_frac = target
slots holding a target-region patch, padded_frac = slots beyond the region whatever the padding mode put
there, alpha_effective = L / N), lr, loop_start_at / first_step_at (unix times this worker group entered
the train loop / made its first optimiser step), transfer<i>_<metric> (phase_key: transfer phase i's latest
top1 / top5 / val_loss / train_loss, 0.0 until that phase reports, so the last report holds each phase's
final value: what an objective naming `phase: i` optimises), report_time_s (seconds this worker process spent in
earlier reports: checkpoint write + upload + Ray's report), done (True on the last report), trial_epoch (1-based
epoch across phases: ASHA's time), and with a reuse plan pretrain_reused_from ("RUN/trial_<id>" or "") and
pretrain_reuse_note (why a stored pre-training was not used, or "").
Reuse (train/reuse.py, `config["reuse"]`): mode "reuse" loads the stored pre-training and reports its final
pre-train epoch once (with a checkpoint) instead of running the phase; a missing or corrupt entry is
pre-trained afresh and says why; mode "publish" stores the pre-training (rank 0) when the phase ends.
Rank 0 also exports every report to Prometheus through ray.util.metrics (train/metrics.py; tags from
config["metric_tags"]), at the report, never per step.
A checkpoint (checkpoint.py layout) goes with the first report after `checkpoint_minutes` (default 15) of
wall time since the last one, or every `checkpoint_every` epochs when that is set, and with the last report
of every phase. On Ray it uploads in the background (CheckpointUploadMode.ASYNC; the trial's last one
synchronously) from a directory Ray deletes once uploaded.

Devices: DDP and the distributed sampler come from ray.train.torch.prepare_model / prepare_data_loader;
the forward passes run at the trial's `precision` (train/precision.py: "auto" is bf16 on GPUs with it,
fp16 with loss scaling on older GPUs, fp32 on CPU; losses in fp32). A phase whose estimated peak memory
exceeds the GPU's runs with gradient accumulation (PhaseOptim.accum_steps, method/memory.py). A phase whose
`data.store` is set reads the packed store and augments on the device (objmae_ray/data/loader.py).

Reproducibility: model init from torch.manual_seed(seed); every epoch re-seeds torch / random / numpy,
the DataLoader generator and the mask generator from (seed, phase, epoch, rank); the DistributedSampler
uses (seed, epoch); a JPEG sample's augmentation is seeded from (that epoch seed, its index), so persistent
loader workers carry no RNG state across epochs (data/seeded.py). So a run resumed from a checkpoint reproduces a clean run's numbers exactly on the
same hardware, and at most the interrupted epoch is redone.

Test hooks (`hooks`, never set by a sweep): {"kill_at": [phase, epoch, step] or a list of them,
"kill_marker": path} makes rank 0 SIGKILL itself once before each such step, after Ray Train has
registered its last report (a line per kill in the marker file makes each happen once);
{"raise_at": [phase, epoch, step], "kill_marker": path} makes rank 0 raise RuntimeError there on every
attempt (a bug), appending a line to the marker file each time; {"param_dump_dir": path} makes every rank write a hash of its
parameters and its sample indices after each epoch, and append "rank phase epoch pid" to epochs.log.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from objmae_ray.config import PHASE_METRICS, PhaseOptim, TrialConfig, phase_key, trial_from_dict
from objmae_ray.data import (TimedLoader, build_classification_dataset, build_packed_loader, build_pretrain_dataset,
                             low_label_positions)
from objmae_ray.data.seeded import EpochSeeded
from objmae_ray.errors import ConfigError
from objmae_ray.method.flops import speedup_estimate
from objmae_ray.method.memory import planned_accumulation
from objmae_ray.method.model import objmae_from_config
from objmae_ray.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from objmae_ray.train.finetune import (ClassificationLoss, build_classifier, evaluate, train_classifier_epoch,
                                      trainable_module)
from objmae_ray.train.metrics import TrialMetrics
from objmae_ray.train.optim import build_lr_schedule, build_optimizer
from objmae_ray.train.precision import Precision
from objmae_ray.train.pretrain import pretrain_epoch
from objmae_ray.train.reuse import REUSE_NOTE, REUSED_FROM, ReuseError, ReusePlan, load_weights, publish
from objmae_ray.train.rules import trial_phases
from objmae_ray.train.speed import StepTimer, baseline_step_seconds

# ---- where a worker runs: Ray Train or a plain process ---------------------------------------------

@dataclass
class Worker:
    """What the train loop needs from its runtime (Ray Train in production, a plain process in unit tests)."""

    rank: int
    world_size: int
    device: torch.device
    prepare_model: Callable[[nn.Module], nn.Module]
    prepare_loader: Callable[..., Any]  # (loader, add_dist_sampler: bool) -> iterable of batches on device
    report: Callable[..., None]  # (metrics, checkpoint dir or None, checkpoint name, final: bool)
    latest_checkpoint: Callable[[], dict | None]  # load_checkpoint() of the latest reported checkpoint
    wait_committed: Callable[[], None] = lambda: None  # block until every report so far is registered
    deletes_checkpoints: bool = False  # report(..., final=False) takes the directory over and deletes it after upload
    export: Callable[[dict, int], None] = lambda metrics, epochs: None  # (report, phase epochs) to Prometheus


def ray_worker(cfg: TrialConfig | None = None, metric_tags: dict | None = None) -> Worker:
    """The Worker of the current Ray Train worker process; rank 0 exports each report to Prometheus
    (train/metrics.py) when metric_tags (study, trial_id, searched) are given."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    exporter = TrialMetrics(metric_tags, cfg, device) if metric_tags is not None and ctx.get_world_rank() == 0 \
        else None

    def report(metrics: dict, checkpoint_dir: str | None, checkpoint_name: str, final: bool = True) -> None:
        """A checkpoint uploads in the background unless `final` (the trial's last: synchronously)."""
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        mode = ray.train.CheckpointUploadMode.SYNC if final or not checkpoint else ray.train.CheckpointUploadMode.ASYNC
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name if checkpoint else None,
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=checkpoint is not None)

    def wait_committed() -> None:
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED,
                                               timeout_s=60)

    def latest_checkpoint() -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_checkpoint(directory)

    return Worker(
        rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), device=device,
        prepare_model=ray.train.torch.prepare_model,
        prepare_loader=lambda loader, add_dist_sampler=True: ray.train.torch.prepare_data_loader(
            loader, add_dist_sampler=add_dist_sampler),
        report=report, latest_checkpoint=latest_checkpoint, wait_committed=wait_committed, deletes_checkpoints=True,
        export=exporter.record if exporter else Worker.export)


@dataclass
class LocalRun:
    """A single-process Worker without Ray (unit tests, debugging): checkpoints go to `directory`."""

    directory: Path
    reports: list[dict] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    device: str = "cpu"

    def worker(self) -> Worker:
        def report(metrics: dict, checkpoint_dir: str | None, checkpoint_name: str, final: bool = True) -> None:
            self.reports.append(dict(metrics))
            if checkpoint_dir:
                target = self.directory / checkpoint_name
                shutil.copytree(checkpoint_dir, target, dirs_exist_ok=True)
                self.checkpoints.append(target)

        def latest_checkpoint() -> dict | None:
            return load_checkpoint(self.checkpoints[-1]) if self.checkpoints else None

        device = torch.device(self.device)
        return Worker(rank=0, world_size=1, device=device, prepare_model=lambda m: m.to(device),
                      prepare_loader=lambda loader, add_dist_sampler=True: loader,
                      report=report, latest_checkpoint=latest_checkpoint)


# ---- the train loop ---------------------------------------------------------------------------------

def epoch_seed(seed: int, phase_index: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for (trial seed, phase, epoch, worker rank) via numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, phase_index, epoch, rank]).generate_state(2, np.uint64)[0] >> 1)


def labelled_subset(dataset: Dataset, count: int | None) -> Dataset:
    """The low-label split of a transfer phase: `count` images (data.low_label_positions), or the whole set."""
    positions = low_label_positions(len(dataset), count)
    return dataset if positions is None else Subset(dataset, positions.tolist())


def _param_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for param in getattr(model, "module", model).parameters():
        digest.update(param.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


class TrialRun:
    """State of one trial inside one worker: the ObjMAE model, progress counters and the resume point."""

    def __init__(self, cfg: TrialConfig, worker: Worker, hooks: dict | None = None, speed_cache: str | None = None,
                 reuse: dict | None = None):
        self.loop_start_at = time.time()
        self.cfg, self.worker, self.hooks = cfg, worker, hooks or {}
        self.reuse = ReusePlan(**reuse) if reuse else None  # pre-training stored once and reused (train/reuse.py)
        self.reused_from = ""  # "RUN/trial_<id>" whose stored pre-training this trial loaded
        self.last_pretrain_report: dict | None = None
        self.speed_cache = speed_cache  # where the supervised baseline step time is cached (train/speed.py)
        self.phases = trial_phases(cfg)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.objmae = objmae_from_config(cfg.model)
        self.resume = worker.latest_checkpoint()
        if self.resume and self.resume["config"] != cfg:
            raise ConfigError(f"{cfg.name}: the run's latest checkpoint was written by a different TrialConfig; "
                              f"use a new run name or storage path")
        state = self.resume["train_state"] if self.resume else {}
        self.pretrain_time_s = state.get("pretrain_time_s", 0.0)
        self.recon_loss = state.get("recon_loss", float("nan"))  # NaN until a pre-train epoch ran (scratch: never)
        self.speedup_measured = state.get("speedup_measured", float("nan"))
        # phase_key(metric, i) -> transfer phase i's latest value; 0.0 until the phase reports (Tune checks that
        # every report holds the searcher's metrics, as for top1 during pre-training)
        self.phase_values: dict[str, float] = {phase_key(m, i): 0.0 for i in range(len(cfg.transfer))
                                               for m in PHASE_METRICS}
        self.phase_values.update(state.get("phase_values", {}))
        self.baseline_s: float | None = None
        self.precision = Precision(cfg.precision, worker.device)  # autocast + the fp16 loss scaler
        if self.resume:
            self.objmae.load_state_dict(self.resume["objmae"])
            set_rng_state(state["rng"])
            self.precision.load_state_dict(state.get("scaler"))
        self.speedup: float | None = None  # computed at the first report, off the path to the first step
        self.first_step_at: float | None = None
        self.report_time_s = 0.0  # time this process spent in earlier reports (checkpoint write + Ray report)
        self.checkpointed_at = time.monotonic()  # the last checkpoint (or the start): checkpoint_minutes count from it
        self.seeded: dict[int, EpochSeeded] = {}  # a phase's JPEG training set, seeded per sample (seed_epoch)

    # -- helpers --
    def reuse_metrics(self, phase_index: int, epoch: int) -> dict:
        """`trial_epoch` (1-based epoch across phases: ASHA's time, the same whether the pre-training ran or was
        reused) and, with a reuse plan, where the pre-training came from or why a stored one was not used."""
        metrics = {"trial_epoch": sum(p.epochs for _, _, p in self.phases[:phase_index]) + epoch + 1}
        if self.reuse:
            metrics.update({REUSED_FROM: self.reused_from, REUSE_NOTE: self.reuse.note})
        return metrics

    def start_epoch(self, phase_index: int) -> int | None:
        """First epoch to run in this phase (None: nothing to run, because the phase has no epochs, i.e. the
        scratch baseline's pre-training, or finished in the checkpoint resumed from)."""
        epochs = self.phases[phase_index][2].epochs
        first = 0
        if self.resume:
            state = self.resume["train_state"]
            if phase_index < state["phase_index"]:
                return None
            if phase_index == state["phase_index"]:
                first = state["epoch"] + 1
        return first if first < epochs else None

    def seed_epoch(self, phase_index: int, epoch: int, loader, generator: torch.Generator) -> int:
        """Seed every RNG the epoch uses from (seed, phase, epoch, rank); returns that seed."""
        seed = epoch_seed(self.cfg.seed, phase_index, epoch, self.worker.rank)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        generator.manual_seed(seed)
        if phase_index in self.seeded:  # the JPEG loader's augmentations: per sample, from (seed, index)
            self.seeded[phase_index].set_epoch_seed(seed)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler (world_size > 1): same order on every rank
            sampler.seed = self.cfg.seed
            sampler.set_epoch(phase_index * 100_000 + epoch)
        return seed

    def train_loader(self, dataset: Dataset, phase_index: int) -> tuple[Any, torch.Generator, int]:
        """(loader with Ray's DistributedSampler, its generator, global batch) for a phase's training split."""
        path, _, phase = self.phases[phase_index]
        per_worker = phase.batch_size // self.worker.world_size
        generator = torch.Generator()
        # pinned host batches: the copy to the GPU is asynchronous (non_blocking in the step). Persistent workers
        # (no process start-up per epoch): every sample is seeded from (epoch seed, index) (data/seeded.py), so
        # a resumed run augments exactly as a clean one, whatever the number of workers
        self.seeded[phase_index] = dataset = EpochSeeded(dataset)
        loader = DataLoader(dataset, batch_size=per_worker, shuffle=True, drop_last=True, generator=generator,
                            num_workers=phase.data.loader_workers, persistent_workers=phase.data.loader_workers > 0,
                            pin_memory=self.worker.device.type == "cuda")
        loader = self.worker.prepare_loader(loader, add_dist_sampler=True)
        self.check_steps(loader, phase_index, len(dataset))
        return TimedLoader(loader), generator, per_worker * self.worker.world_size

    def check_steps(self, loader, phase_index: int, images: int) -> None:
        path, _, phase = self.phases[phase_index]
        if len(loader) == 0:
            raise ConfigError(f"{path}.batch_size: {phase.batch_size} images per step but the "
                              f"training split has only {images} images ({self.worker.world_size} workers)")

    def packed_loader(self, phase_index: int, purpose: str, split: str):
        """A phase's PackedLoader (data.store): batches augmented on this worker's device."""
        _, _, phase = self.phases[phase_index]
        cfg, worker = self.cfg, self.worker
        recipe = {"crop_scale": phase.crop_scale, "hflip": phase.hflip, "train_images": phase.train_images} \
            if purpose == "classify" else {}  # the transfer recipe (TransferConfig)
        loader = build_packed_loader(phase.data, purpose=purpose, split=split, img_size=cfg.model.img_size,
                                     batch_size=max(1, phase.batch_size // worker.world_size), device=worker.device,
                                     patch_size=cfg.model.patch_size, patch_threshold=cfg.masking.patch_threshold,
                                     min_ratio=cfg.masking.min_ratio, selection=cfg.masking.selection,
                                     rank=worker.rank, world_size=worker.world_size, **recipe)
        if split == "train":
            self.check_steps(loader, phase_index, len(loader.view))
        return loader

    def eval_loader(self, dataset: Dataset, phase: PhaseOptim):
        """This rank's disjoint share of the held-out split (no padding duplicates)."""
        share = Subset(dataset, range(self.worker.rank, len(dataset), self.worker.world_size))
        loader = DataLoader(share, batch_size=max(1, phase.batch_size // self.worker.world_size),
                            shuffle=False, num_workers=phase.data.loader_workers,
                            pin_memory=self.worker.device.type == "cuda")
        return self.worker.prepare_loader(loader, add_dist_sampler=False)

    def on_step(self, phase: str) -> Callable[[int, int], None]:
        """Step hook: records the first optimiser step's time; test-only fault injection (`_hooks.kill_at`,
        `_hooks.raise_at`)."""
        kill_at, marker = self.hooks.get("kill_at") or [], self.hooks.get("kill_marker")
        kills = [list(point) for point in (kill_at if kill_at and isinstance(kill_at[0], list) else [kill_at])]

        def hook(epoch: int, step: int) -> None:
            if self.first_step_at is None:
                self.first_step_at = time.time()
            if not marker or self.worker.rank != 0:
                return
            at = f"{phase} epoch {epoch} step {step}"
            if list(self.hooks.get("raise_at") or []) == [phase, epoch, step]:
                with open(marker, "a") as log:
                    log.write(f"raised in rank 0 pid {os.getpid()} at {at}\n")
                raise RuntimeError(f"injected error at {at}")
            done = Path(marker).read_text() if Path(marker).exists() else ""
            if [phase, epoch, step] in kills and f" at {at}\n" not in done:
                self.worker.wait_committed()  # a crash mid-epoch comes long after the last report
                with open(marker, "a") as log:
                    log.write(f"killed rank 0 pid {os.getpid()} at {at}\n")
                os.kill(os.getpid(), signal.SIGKILL)
        return hook

    def dump_params(self, model: nn.Module, loader, phase_index: int, epoch: int) -> None:
        directory = self.hooks.get("param_dump_dir")
        if not directory:
            return
        indices = list(iter(loader.sampler)) if hasattr(loader.sampler, "set_epoch") else []
        record = {"rank": self.worker.rank, "param_sha256": _param_hash(model), "sample_indices": indices}
        Path(directory, f"rank{self.worker.rank}-phase{phase_index}-epoch{epoch}.json").write_text(json.dumps(record))
        with open(Path(directory, "epochs.log"), "a") as log:  # one line per epoch run, across restarts
            log.write(f"{self.worker.rank} {phase_index} {epoch} {os.getpid()}\n")

    def report(self, metrics: dict, *, phase_index: int, epoch: int, optimizer, scheduler, updates: int,
               classifier: nn.Module | None = None) -> None:
        """Report this epoch's metrics (all ranks) with a checkpoint (rank 0) when one is due."""
        if self.speedup is None:  # rank 0's metrics are the ones Ray keeps; no pre-training, no speed-up
            pretrained = self.cfg.pretrain.epochs > 0
            self.speedup = (speedup_estimate(self.cfg.model, self.cfg.masking.alpha) if pretrained else float("nan")) \
                if self.worker.rank == 0 else 0.0
        start = time.perf_counter()
        _, name, phase = self.phases[phase_index]
        last_epoch = epoch + 1 == phase.epochs
        if phase_index > 0:  # this transfer phase's latest values, carried by every later report
            self.phase_values.update({phase_key(m, phase_index - 1): metrics[m] for m in PHASE_METRICS if m in metrics})
        metrics = {**metrics, **self.phase_values, "phase": name, "phase_index": phase_index, "epoch": epoch,
                   "recon_loss": self.recon_loss, "pretrain_time_s": self.pretrain_time_s,
                   "speedup_est": self.speedup, "speedup_measured": self.speedup_measured,
                   "loop_start_at": self.loop_start_at,
                   "first_step_at": self.first_step_at or 0.0, "report_time_s": self.report_time_s,
                   "done": last_epoch and phase_index + 1 == len(self.phases), **self.reuse_metrics(phase_index, epoch)}
        if phase_index == 0:
            self.last_pretrain_report = metrics
        self.worker.export(metrics, phase.epochs)  # rank 0: a few gauge sets, no device sync
        every = self.cfg.checkpoint_every
        interval = (epoch + 1) % every == 0 if every else \
            time.monotonic() - self.checkpointed_at >= self.cfg.checkpoint_minutes * 60
        due = self.worker.rank == 0 and (last_epoch or interval)
        checkpoint_name = f"checkpoint_p{phase_index}_{name}_e{epoch:04d}"
        tmp = tempfile.mkdtemp(prefix=f"objmae-{checkpoint_name}-")
        try:
            if due:
                train_state = {"phase_index": phase_index, "phase": name, "epoch": epoch, "updates": updates,
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "rng": rng_state(), "scaler": self.precision.state_dict(),
                               "pretrain_time_s": self.pretrain_time_s,
                               "recon_loss": self.recon_loss, "speedup_measured": self.speedup_measured,
                               "phase_values": dict(self.phase_values)}
                save_checkpoint(tmp, objmae=self.objmae, classifier=classifier, train_state=train_state,
                                config=self.cfg, metrics=metrics)
                self.checkpointed_at = time.monotonic()
            self.worker.report(metrics, tmp if due else None, checkpoint_name, final=metrics["done"])
        finally:
            if not (due and self.worker.deletes_checkpoints):  # else Ray deletes it once uploaded
                shutil.rmtree(tmp, ignore_errors=True)
        self.report_time_s += time.perf_counter() - start

    # -- phases --
    def run(self) -> None:
        for phase_index, (_, name, _) in enumerate(self.phases):
            start = self.start_epoch(phase_index)
            if start is None:
                if name == "pretrain" and self.resume:  # restarted after the pre-training: say where it came from
                    self.reused_from = str(self.resume["metrics"].get(REUSED_FROM, ""))
                continue
            if name == "pretrain" and self.reuse and self.reuse.mode == "reuse" and self.reuse_pretraining(phase_index):
                continue
            if name == "pretrain":
                self.pretrain(phase_index, start)
                self.publish_pretraining()
            else:
                self.transfer(phase_index, start)

    def _all_ranks(self, ok: bool) -> bool:
        """ok on every rank of the worker group (rank 0 alone decides nothing)."""
        import torch.distributed as dist

        if self.worker.world_size == 1 or not dist.is_initialized():
            return ok
        flag = torch.tensor([int(ok)], device=self.worker.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def reuse_pretraining(self, phase_index: int) -> bool:
        """Load the stored pre-training of this trial's key and report its final pre-train epoch (with a
        checkpoint), or, when the entry is missing or corrupt, say why and return False (pre-train afresh)."""
        plan, problem = self.reuse, ""
        try:
            record, state = load_weights(plan.store, plan.key)
            own = self.objmae.state_dict()
            wrong = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
            if wrong:
                raise ReuseError(f"{plan.store}/{plan.key}: weights do not fit this model ({wrong[0]})")
        except (ReuseError, OSError, ConfigError) as err:  # ConfigError: storage unreadable (objmae_ray/storage.py)
            problem = str(err)
        if not self._all_ranks(not problem):
            plan.mode, plan.note = "publish", f"stored pre-training not used: {problem or 'failed on another rank'}"
            print(f"trial {self.cfg.name}: {plan.note}; pre-training afresh", flush=True)
            return False
        self.objmae.load_state_dict(state)
        final = record.get("final_report", {})
        self.recon_loss = float(final.get("recon_loss", float("nan")))
        self.pretrain_time_s = float(final.get("pretrain_time_s", 0.0))
        self.speedup_measured = float(final.get("speedup_measured", float("nan")))
        self.reused_from = plan.source
        print(f"trial {self.cfg.name}: pre-training reused from {plan.source}", flush=True)
        metrics = {k: v for k, v in final.items() if k not in (REUSED_FROM, REUSE_NOTE, "trial_epoch")}
        self.report(metrics, phase_index=phase_index, epoch=self.cfg.pretrain.epochs - 1, optimizer=_NO_STATE,
                    scheduler=_NO_STATE, updates=int(final.get("updates", 0)))
        return True

    def publish_pretraining(self) -> None:
        """Rank 0 stores the finished pre-training under its key (train/reuse.py) when this trial claimed it."""
        plan, final = self.reuse, self.last_pretrain_report
        if (self.worker.rank != 0 or plan is None or plan.mode != "publish" or final is None
                or final["epoch"] + 1 != self.cfg.pretrain.epochs):
            return
        try:
            entry = publish(plan.store, plan.key, state=self.objmae.state_dict(), fields=plan.fields,
                            source=plan.run, final_report=final)
            print(f"trial {self.cfg.name}: pre-training stored at {entry}", flush=True)
        except (OSError, ConfigError) as err:  # the trial's own result stands; only later trials pre-train again
            print(f"trial {self.cfg.name}: cannot store the pre-training ({err})", flush=True)

    def resume_state(self, phase_index: int) -> dict | None:
        if self.resume and self.resume["train_state"]["phase_index"] == phase_index:
            return self.resume
        return None

    def measure_speedup(self, step_s: float) -> float:
        """speedup_measured on rank 0 (train/speed.py): the baseline is timed once, then read from the cache."""
        if self.worker.rank != 0 or not step_s > 0:
            return self.speedup_measured
        if self.baseline_s is None:
            phase = self.cfg.pretrain
            self.baseline_s = baseline_step_seconds(self.cfg.model, optimizer=phase.optimizer,
                                                    batch=phase.batch_size // self.worker.world_size,
                                                    device=self.worker.device, cache_dir=self.speed_cache,
                                                    precision=self.cfg.precision)
        return self.baseline_s / step_s

    def accum_steps(self, phase_index: int, per_worker: int) -> int:
        """The phase's accum_steps, or on a GPU the fewest micro-batches whose estimated peak memory fits it
        (objmae_ray/method/memory.py; printed once by rank 0)."""
        _, name, phase = self.phases[phase_index]
        device = self.worker.device
        if phase.accum_steps or device.type != "cuda":
            return phase.accum_steps or 1
        steps, why = planned_accumulation(self.cfg.model, name, batch=per_worker, alpha=self.cfg.masking.alpha,
                                          optimizer=phase.optimizer, precision=self.precision.name,
                                          capacity_bytes=torch.cuda.get_device_properties(device).total_memory)
        if why and self.worker.rank == 0:
            print(f"{self.cfg.name}: {why} on {torch.cuda.get_device_name(device)}", flush=True)
        return steps

    def pretrain(self, phase_index: int, start: int) -> None:
        cfg, phase, device = self.cfg, self.cfg.pretrain, self.worker.device
        if phase.data.store:
            loader = self.packed_loader(phase_index, "pretrain", "train")
            loader_generator, global_batch = loader.generator, loader.batch_size * self.worker.world_size
        else:
            dataset = build_pretrain_dataset(phase.data, img_size=cfg.model.img_size,
                                             patch_size=cfg.model.patch_size,
                                             patch_threshold=cfg.masking.patch_threshold, split="train",
                                             min_ratio=cfg.masking.min_ratio)
            loader, loader_generator, global_batch = self.train_loader(dataset, phase_index)
        model = self.worker.prepare_model(self.objmae)
        optimizer = build_optimizer(self.objmae, phase, global_batch=global_batch)
        scheduler = build_lr_schedule(optimizer, phase, updates_per_epoch=len(loader))
        resume = self.resume_state(phase_index)
        if resume:
            optimizer.load_state_dict(resume["train_state"]["optimizer"])
            scheduler.load_state_dict(resume["train_state"]["scheduler"])
        mask_generator = torch.Generator(device)
        accum_steps = self.accum_steps(phase_index, global_batch // self.worker.world_size)
        for epoch in range(start, phase.epochs):
            seed = self.seed_epoch(phase_index, epoch, loader, loader_generator)
            mask_generator.manual_seed(seed)
            stats = pretrain_epoch(model, loader, optimizer, scheduler, epoch=epoch, first_update=epoch * len(loader),
                                   num_patches=self.objmae.num_patches, masking=cfg.masking,
                                   generator=mask_generator, device=device, on_step=self.on_step("pretrain"),
                                   timer=StepTimer(device), accum_steps=accum_steps, precision=self.precision)
            self.pretrain_time_s += stats.seconds
            self.recon_loss = stats.loss
            self.speedup_measured = self.measure_speedup(stats.step_s)
            self.dump_params(model, loader, phase_index, epoch)
            self.report({"train_loss": stats.loss, "top1": 0.0, "top5": 0.0, "val_loss": 0.0,
                         "images_per_s": stats.images / stats.seconds, "epoch_time_s": stats.seconds,
                         "data_wait_frac": loader.wait_s / stats.seconds,
                         "fallback": stats.fallback, "fallback_frac": stats.fallback / max(stats.images, 1),
                         "recon_zero_loss": stats.zero_loss, **stats.alpha,
                         "lr": max(g["lr"] for g in optimizer.param_groups)},
                        phase_index=phase_index, epoch=epoch, optimizer=optimizer, scheduler=scheduler,
                        updates=(epoch + 1) * len(loader))

    def transfer(self, phase_index: int, start: int) -> None:
        cfg, device = self.cfg, self.worker.device
        _, name, phase = self.phases[phase_index]
        if phase.data.store:
            loader = self.packed_loader(phase_index, "classify", "train")
            val_loader = self.packed_loader(phase_index, "classify", "val")
            loader_generator, global_batch = loader.generator, loader.batch_size * self.worker.world_size
            num_classes = loader.num_classes
        else:
            train_set, num_classes = build_classification_dataset(phase.data, img_size=cfg.model.img_size,
                                                                  split="train", train=True,
                                                                  crop_scale=phase.crop_scale, hflip=phase.hflip)
            train_set = labelled_subset(train_set, phase.train_images)
            val_set, _ = build_classification_dataset(phase.data, img_size=cfg.model.img_size, split="val",
                                                      train=False)
            loader, loader_generator, global_batch = self.train_loader(train_set, phase_index)
            val_loader = self.eval_loader(val_set, phase)
        torch.manual_seed(cfg.seed + phase_index)  # the same new head on every rank
        classifier = build_classifier(cfg.model, phase, num_classes=num_classes,
                                      encoder_state=self.objmae.encoder_state_dict())
        resume = self.resume_state(phase_index)
        if resume:
            classifier.load_state_dict(resume["classifier"])
        model = self.worker.prepare_model(classifier)
        optimizer = build_optimizer(trainable_module(classifier, name), phase, global_batch=global_batch,
                                    layer_decay=cfg.transfer_layer_decay(phase_index - 1) if name == "finetune"
                                    else None)
        scheduler = build_lr_schedule(optimizer, phase, updates_per_epoch=len(loader))
        if resume:
            optimizer.load_state_dict(resume["train_state"]["optimizer"])
            scheduler.load_state_dict(resume["train_state"]["scheduler"])
        loss_fn = ClassificationLoss(phase, num_classes)
        accum_steps = self.accum_steps(phase_index, global_batch // self.worker.world_size)
        for epoch in range(start, phase.epochs):
            self.seed_epoch(phase_index, epoch, loader, loader_generator)
            stats = train_classifier_epoch(model, loader, optimizer, scheduler, phase=name, epoch=epoch,
                                           first_update=epoch * len(loader), device=device, loss_fn=loss_fn,
                                           on_step=self.on_step(name), accum_steps=accum_steps,
                                           precision=self.precision)
            eval_start = time.perf_counter()
            scores = evaluate(model, val_loader, device=device, precision=self.precision)
            epoch_time = stats.seconds + time.perf_counter() - eval_start
            self.dump_params(model, loader, phase_index, epoch)
            self.report({"train_loss": stats.loss, **scores, "images_per_s": stats.images / stats.seconds,
                         "epoch_time_s": epoch_time, "data_wait_frac": loader.wait_s / stats.seconds,
                         "fallback": 0, "fallback_frac": 0.0,
                         "lr": max(g["lr"] for g in optimizer.param_groups)},
                        phase_index=phase_index, epoch=epoch, optimizer=optimizer, scheduler=scheduler,
                        updates=(epoch + 1) * len(loader), classifier=classifier)


class _NoState:
    """Optimizer / scheduler stand-in of a reused pre-training's checkpoint (nothing to resume in that phase)."""

    @staticmethod
    def state_dict() -> dict:
        return {}


_NO_STATE = _NoState()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train loop: config = {"trial": TrialConfig.model_dump(), "hooks": dict | None, "speed_cache": str | None,
    "metric_tags": dict | None (train/metrics.py), "reuse": ReusePlan dict | None}."""
    cfg = trial_from_dict(config["trial"])
    TrialRun(cfg, ray_worker(cfg, config.get("metric_tags")), config.get("hooks"), config.get("speed_cache"),
             config.get("reuse")).run()
