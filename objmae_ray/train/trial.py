"""One trial = one Ray Train run (TorchTrainer, DDP) of objmae_ray/train/loop.py, driven from a Tune
trial or on its own.

Entry points
  tune_trainable(config)              Ray Tune function trainable (config = TrialConfig.model_dump()
                                      plus optional reserved keys, see below); builds the TorchTrainer with
                                      TuneReportCallback so every worker report reaches Tune.
  run_trial(cfg, storage_path, name)  the same run without Tune; returns the final metrics.
  python -m objmae_ray.train.trial CONFIG.yaml [--storage DIR] [--name NAME] [--address local]   (debugging)

Before any worker starts, `check_trial` refuses a trial that cannot run: every rule of
objmae_ray/train/rules.py, the cluster's live resources (not on an autoscaling cluster, where the sweep
checked the node types at its start and a trial waits for a scale-up), then the dataset paths and CAM
cache on a node that can run the workers (`check_data`: a small Ray task with one worker's resources; the
head never needs the dataset). A missing path fails that trial alone, naming the path and the node.

Storage: `run_trial` writes to `<storage_path>/<name>/checkpoint_*`. Inside Tune the inner run's
storage is `config["_storage_path"]` (name `train-<trial_id>`) when the sweep passes one (needed on
multi-node clusters: a shared path or s3://), else the Tune trial directory (name `train`). Running
again with the same storage and name resumes from its latest checkpoint (Ray Train V2 restores the
run's checkpoint history from storage).

Reserved config keys (every key starting with "_" is dropped before TrialConfig validation):
`_storage_path` (above), `_autoscaling` (true: the cluster has an autoscaler, so live resources are not
compared), `_study` / `_searched` (the sweep's name and the trial's searched values, tags of its Prometheus
metrics: train/metrics.py), `_pretrained_store` (`<storage>/pretrained`: a finished pre-training with the
same key is reused, concurrent trials with one key wait for one pre-training; objmae_ray/train/reuse.py)
and `_hooks` (tests/benchmarks only, see objmae_ray/train/loop.py).

Fault tolerance (objmae_ray/train/failures.py): the worker group restarts from the latest registered
checkpoint after every worker or node loss (a spot reclaim, a killed process; up to `max_restarts`) and
after an error raised by the trial's code (up to `max_failures`, counted apart), so a loss redoes at most one
checkpoint interval: `checkpoint_minutes` (default 15) of training plus the epoch in progress, or
`checkpoint_every` epochs when set. The last 2 checkpoints are kept (CHECKPOINTS_TO_KEEP); they upload in the
background (Ray Train's CheckpointUploadMode.ASYNC, the trial's final one synchronously), so training goes on
while one uploads. Ray Train's controller
registers a report when it next polls the workers (every 2 s): a worker that dies within 2 s of a
report (or before a background upload finished) can lose that report's checkpoint and redo one more interval. A run whose latest checkpoint holds
a different TrialConfig is refused. A non-finite loss raises NonFiniteLossError (phase, epoch, step);
Ray retries it like any error (it recurs, so max_failures = 0 is the cheap setting for sweeps)
and then `run_trial` / `tune_trainable` raise a one-line TrialError; earlier checkpoints stay.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from objmae_ray.config import TrialConfig, trial_from_dict
from objmae_ray.errors import ConfigError
from objmae_ray.train.loop import train_loop_per_worker
from objmae_ray.train.reuse import pretraining_plan, release
from objmae_ray.train.rules import trial_phases, trial_problems
from objmae_ray.train.speed import BASELINE_DIR

CHECKPOINTS_TO_KEEP = 2


class TrialError(RuntimeError):
    """A trial's workers failed for good (after FailureConfig retries); one line naming the cause."""


def load_trial_config(path: str | Path) -> TrialConfig:
    """A YAML file holding one TrialConfig mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrialConfig fields")
    return trial_from_dict(data, source=str(path))


def check_trial(cfg: TrialConfig, *, cluster_resources: dict | None = None, autoscaling: bool = False) -> None:
    """Refuse, before any worker starts, a trial that cannot run; ConfigError "<field>: <reason>".

    The rules of objmae_ray/train/rules.py; then GPUs and CPUs against `cluster_resources` (the live
    resources of a cluster without an autoscaler; default `ray.cluster_resources()` when Ray is initialised,
    skipped when `autoscaling`: the sweep checked the node types at its start, and a trial that needs a
    scale-up waits for it); then the dataset paths and the CAM cache where the workers read them
    (`check_data`).
    """
    problems = trial_problems(cfg)
    if problems:
        raise ConfigError(problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    res = cfg.resources
    if cluster_resources is None and not autoscaling:
        import ray

        cluster_resources = ray.cluster_resources() if ray.is_initialized() else None
    if cluster_resources is not None:
        gpus = cluster_resources.get("GPU", 0)
        if res.use_gpu and gpus < res.gpus_per_worker:
            raise ConfigError(f"resources.use_gpu: the cluster has {gpus:g} GPUs, "
                              f"a worker needs {res.gpus_per_worker:g}")
        cpus = cluster_resources.get("CPU", 0)
        if cpus < res.cpus_per_worker:
            raise ConfigError(f"resources.cpus_per_worker: {res.cpus_per_worker:g} but the cluster has {cpus:g} CPUs")
    check_data(cfg)


def data_problems(cfg: TrialConfig) -> list[str]:
    """Dataset roots, annotation files and the CAM cache of every phase, on this machine: "<field>: <path> not found"."""
    problems = []
    cam_cache = cfg.pretrain.data.cam_cache
    if cfg.masking.selection == "cam" and cam_cache and not Path(cam_cache).expanduser().exists():
        problems.append(f"pretrain.data.cam_cache: {cam_cache} not found")
    for path, _, phase in trial_phases(cfg):
        data = phase.data
        if data.store not in (None, "auto") and not Path(data.store).expanduser().is_dir():
            problems.append(f"{path}.data.store: {data.store} not found (pack it with `objmae-data pack`)")
        if data.root is not None and data.kind != "synthetic" and not Path(data.root).expanduser().is_dir():
            problems.append(f"{path}.data.root: {data.root} not found")
        elif data.ann_file and "{split}" not in data.ann_file:
            ann = Path(data.ann_file).expanduser()
            ann = ann if ann.is_absolute() or data.root is None else Path(data.root).expanduser() / ann
            if not ann.is_file():
                problems.append(f"{path}.data.ann_file: {ann} not found")
    return problems


def _reads_files(cfg: TrialConfig) -> bool:
    """Whether any phase reads a dataset or cache from disk (the built-in synthetic scenes do not need one)."""
    return (cfg.masking.selection == "cam" and bool(cfg.pretrain.data.cam_cache)) or any(
        (phase.data.kind != "synthetic" and phase.data.root is not None) or phase.data.store not in (None, "auto")
        for _, _, phase in trial_phases(cfg))


def _node_data_problems(cfg_dict: dict) -> tuple[str, list[str]]:
    """Ray task body: (this node's name, data_problems here)."""
    import socket

    import ray

    ctx = ray.get_runtime_context()
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node id {ctx.get_node_id()[:12]})"
    return node, data_problems(trial_from_dict(cfg_dict))


def check_data(cfg: TrialConfig, *, wait_note_s: float = 30.0) -> None:
    """Refuse a trial whose dataset is missing where its workers read it: ConfigError "<field>: <path> not
    found on node <host> (<ip>, node id ...)".

    With Ray initialised, the check runs as a small task asking for one worker's resources
    ({CPU: cpus_per_worker, GPU: gpus_per_worker}), so it lands on a node that can run the workers (never
    on a head with CPU 0) and, on an autoscaling cluster, waits for the scale-up that the workers would
    wait for, saying so every `wait_note_s`. Without Ray: on this machine. Synthetic-only trials skip it.
    """
    if not _reads_files(cfg):
        return
    import ray

    if not ray.is_initialized():
        problems = data_problems(cfg)
        if problems:
            raise ConfigError(problems[0])
        return
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    res = cfg.resources
    task = ray.remote(_node_data_problems).options(
        num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0, max_retries=3,
        # outside the Tune trial's placement group (which holds only the driver), like Train's workers
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    ref = task.remote(cfg.model_dump())
    while not ray.wait([ref], timeout=wait_note_s)[0]:
        shape = f"{res.cpus_per_worker:g} CPU" + (f", {res.gpus_per_worker:g} GPU" if res.use_gpu else "")
        print(f"trial {cfg.name}: waiting for nodes: no node with {shape} free for the data check yet "
              f"(an autoscaling cluster is starting one)", flush=True)
    node, problems = ray.get(ref)
    if problems:
        raise ConfigError(f"{problems[0]} on node {node}")


def build_trainer(cfg: TrialConfig, *, storage_path: str, name: str, callbacks: list | None = None,
                  hooks: dict | None = None, metric_tags: dict | None = None, reuse: dict | None = None):
    """The TorchTrainer (Train V2) of one trial: worker group, failure retries (losses and errors apart,
    train/failures.py), checkpoint retention."""
    import ray.train

    from objmae_ray.train.failures import ObjmaeTorchTrainer

    # Train's state actor behind the dashboard's Train API (/api/train/v2/runs/v1); the cluster should
    # start with it on too (objmae_ray/sweep/tuner.py connect, cluster/*.yaml), this covers older clusters
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    res = cfg.resources
    resources = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        resources["GPU"] = res.gpus_per_worker
    return ObjmaeTorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": cfg.model_dump(), "hooks": hooks, "metric_tags": metric_tags, "reuse": reuse,
                           "speed_cache": f"{str(storage_path).rstrip('/')}/{BASELINE_DIR}"},
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            callbacks=callbacks or []),
        max_restarts=cfg.max_restarts,
    )


def _failure_reason(err: BaseException) -> str:
    """The most specific one-line cause in a Ray Train failure (worker exception line if present)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for marker in ("NonFiniteLossError:", "ConfigError:"):
        for line in lines:
            if marker in line:
                return line[line.index(marker):]
    causes = [line for line in lines if "Error" in line.split(":")[0]]
    return causes[-1] if causes else (lines[-1] if lines else type(err).__name__)


def run_trial(cfg: TrialConfig, storage_path: str, name: str, *, hooks: dict | None = None) -> dict:
    """Run one trial on the connected Ray cluster (no Tune); returns the last report's metrics plus
    `checkpoint_path`. Resumes when `<storage_path>/<name>` holds an earlier run of it."""
    import ray.train

    check_trial(cfg)
    trainer = build_trainer(cfg, storage_path=str(storage_path), name=name, hooks=hooks,
                            metric_tags={"study": name, "trial_id": name})
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrialError(f"trial {name}: {_failure_reason(err)}") from err
    metrics = dict(result.metrics or {})
    metrics["checkpoint_path"] = result.checkpoint.path if result.checkpoint else None
    return metrics


def tune_trainable(config: dict) -> None:
    """Ray Tune function trainable: one trial's TorchTrainer, its reports forwarded to Tune."""
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_from_dict(config)
    check_trial(cfg, autoscaling=bool(config.get("_autoscaling")))
    ctx = ray.tune.get_context()
    if config.get("_storage_path"):
        storage_path, name = str(config["_storage_path"]), f"train-{ctx.get_trial_id()}"
    else:
        storage_path, name = ctx.get_trial_dir(), "train"
    tags = {"study": config.get("_study", ""), "trial_id": ctx.get_trial_id(), "searched": config.get("_searched", "")}
    plan, claim = None, None
    if config.get("_pretrained_store") and cfg.pretrain.epochs > 0:  # reuse a stored pre-training (train/reuse.py)
        run = str(config.get("_storage_path") or Path(ctx.get_trial_dir()).parent).rstrip("/").rsplit("/", 1)[-1]
        plan, claim = pretraining_plan(cfg, str(config["_pretrained_store"]), run=f"{run}/trial_{ctx.get_trial_id()}")
    try:
        trainer = build_trainer(cfg, storage_path=storage_path, name=name, callbacks=[TuneReportCallback()],
                                hooks=config.get("_hooks"), metric_tags=tags, reuse=plan.to_dict() if plan else None)
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrialError(f"trial {ctx.get_trial_name()}: {_failure_reason(err)}") from err
    finally:
        release(claim)


def main(argv: list[str] | None = None) -> int:
    """`python -m objmae_ray.train.trial CONFIG.yaml [--storage DIR] [--name NAME]`: one trial, no Tune."""
    parser = argparse.ArgumentParser(prog="python -m objmae_ray.train.trial", description=main.__doc__)
    parser.add_argument("config", help="YAML file with one TrialConfig")
    parser.add_argument("--storage", default=str(Path("runs").resolve()), help="storage path (default ./runs)")
    parser.add_argument("--name", default=None, help="run name (default: the config's name)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    args = parser.parse_args(argv)
    try:
        cfg = load_trial_config(args.config)
        import ray

        ray.init(address=args.address, configure_logging=False)
        metrics = run_trial(cfg, args.storage, args.name or cfg.name)
    except (ConfigError, TrialError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
