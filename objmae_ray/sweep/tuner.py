"""The sweep on Ray: a validated SweepSpec -> tune.Tuner over ObjMAE trials, fitted or resumed.

  sweep_trainable              the Tune function trainable of one trial: its TrialConfig, then
                               objmae_ray.train.trial.tune_trainable (a Ray Train run)
  driver_resources             what one trial's Tune driver asks for (the Train workers hold the real resources)
  build_tuner / restore_tuner  tune.Tuner with the searcher and scheduler of objmae_ray/sweep/search.py
  connect                      join a cluster or start a local Ray with the dashboard (Train state tracking on)
  check_cluster                the trial's workers against the node types the cluster can bring up
  check_nodes (sweep/doctor.py) every node that can run the workers: CUDA, GPUs, /dev/shm, data, and the
                               storage the driver writes is the one they read (a local path on a
                               multi-node cluster that a worker node does not share is refused)
  preflight                    what must hold before Ray starts: storage reachable with these credentials,
                               the Optuna study database opens, mlflow importable when tracking asks for it
  open_study / sweep_callbacks the study's storage (objmae_ray/sweep/study.py) and the driver's Tune callbacks:
                               console lines, heartbeat, Prometheus metrics, MLflow (objmae_ray/sweep/console.py,
                               heartbeat.py, monitor.py, tracking.py)
  run_sweep                    fit or resume to the end; returns the run path and the ResultGrid

Trial config: Tune's `param_space` is the base TrialConfig (fixed search values applied) and the
searcher adds flat dotted keys (`masking.alpha`) that `space.trial_from_tune_config` writes into it;
`_pretrained_store` (`<storage>/pretrained`, unless `reuse_pretraining: false`) lets trials reuse stored
pre-trainings (objmae_ray/train/reuse.py).
Resume: Tune saves the searcher, scheduler and trial states in the experiment directory;
`--resume` restores them (`Tuner.restore(..., resume_errored=True)`), so finished trials are kept
and not rerun, and unfinished ones restart from their latest Ray Train checkpoint. The Optuna study is
stored in a database (default: optuna.db in the run directory) and the restored searcher reopens it;
trials a dead driver left RUNNING that no Tune trial continues are marked failed. The callbacks and the
status table are part of Tune's saved state, so a resumed run keeps the console and tracking it began with.
Console: one line per trial event and Tune's table every few minutes; Ray's worker output goes to the
run directory's logs/workers.log (`verbose` also prints it).
"""
from __future__ import annotations

import os
import shutil
from typing import Callable

import ray
from ray import tune

from objmae_ray.config import SweepSpec
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.cluster import DRIVER_RESOURCE, capacity_problems, cluster_node_types, waiting_for_nodes
from objmae_ray.sweep.console import TrialEvents, route_worker_output, status_reporter, tune_console
from objmae_ray.sweep.doctor import check_nodes
from objmae_ray.sweep.heartbeat import RunHeartbeat
from objmae_ray.sweep.monitor import SweepMetrics, local_session_dir, monitoring_line
from objmae_ray.sweep.plan import plan
from objmae_ray.sweep.rundir import (STUDY_FILE, WORKER_LOG, check_storage, default_name, download, exists, is_remote,
                                     join, latest_run, local_dir, run_name, run_path, save_spec, storage_env,
                                     storage_uri, trial_statuses, upload_local, write_driver_state)
from objmae_ray.sweep.search import build_search, build_trial_scheduler
from objmae_ray.sweep.space import TRIAL_INDEX, base_trial, describe, num_configurations, trial_from_tune_config
from objmae_ray.sweep.study import name_objectives, open_storage, safe_url, study_url
from objmae_ray.sweep.tracking import MlflowTracking, mlflow_client
from objmae_ray.train.reuse import store_root
from objmae_ray.train.trial import tune_trainable


def sweep_trainable(config: dict) -> None:
    """Ray Tune function trainable of one sweep trial: objmae_ray.train.trial.tune_trainable on its TrialConfig."""
    cfg = trial_from_tune_config(config)
    cfg.name = tune.get_context().get_trial_name() or cfg.name
    reserved = {k: v for k, v in config.items() if k.startswith("_") and k != TRIAL_INDEX}
    reserved["_searched"] = describe({k: v for k, v in sorted(config.items()) if "." in k})  # metric tags
    tune_trainable({**cfg.model_dump(), **reserved})


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default packs every config value into the name)."""
    return f"trial_{trial.trial_id}"


def driver_resources(spec: SweepSpec) -> dict[str, float]:
    """Resources of one trial's Tune driver (the Train workers hold the real ones).

    One unit of the head's DRIVER_RESOURCE when the cluster offers it (cluster/gpu.yaml): drivers,
    and the Train controllers Ray pins to the driver's node, then never sit on a spot worker, so a
    reclaim costs only that trial's workers, which restart from the latest checkpoint (Train
    FailureConfig). Without it: `driver_cpus` CPUs anywhere.
    """
    if ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        return {"cpu": 0, DRIVER_RESOURCE: 1}
    return {"cpu": spec.driver_cpus}


def _with_resources(spec: SweepSpec, trainable: Callable):
    return tune.with_resources(trainable, driver_resources(spec))


def build_tuner(spec: SweepSpec, *, name: str, storage: str | None = None,
                trainable: Callable = sweep_trainable, study=None, callbacks: list | None = None,
                autoscaling: bool = False) -> tune.Tuner:
    """tune.Tuner of the sweep: searcher (its study in `study`, an Optuna storage; default in memory),
    scheduler, trial count, storage, the driver's callbacks and status table (nothing runs yet).
    `autoscaling` tells each trial's driver not to refuse what only waits for a scale-up (see check_cluster)."""
    storage = storage_uri(storage or spec.storage)
    param_space = base_trial(spec).model_dump()
    param_space["_storage_path"] = f"{storage.rstrip('/')}/{name}"  # inner Ray Train runs: shared storage
    param_space["_autoscaling"] = autoscaling
    param_space["_study"] = name  # the trials' Prometheus metrics carry it (objmae_ray/train/metrics.py)
    if spec.reuse_pretraining:  # pre-trainings stored once per key in the storage, reused by any study on it
        param_space["_pretrained_store"] = store_root(storage)
    return tune.Tuner(
        _with_resources(spec, trainable),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=build_search(spec, study, study_name=name),
                                    scheduler=build_trial_scheduler(spec),
                                    num_samples=num_configurations(spec) * spec.repeats,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks or [],
                                  progress_reporter=status_reporter(spec), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def restore_tuner(spec: SweepSpec, path: str, trainable: Callable = sweep_trainable) -> tune.Tuner:
    """The interrupted sweep at path, to continue: finished trials kept, unfinished and errored resumed."""
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"{path}: no Tune experiment to resume here")
    return tune.Tuner.restore(path, trainable=_with_resources(spec, trainable), resume_errored=True)


# Ray reads these when it starts: set before a local ray.init (a cluster's nodes set them in cluster/*.yaml).
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: Train's controller polls its workers every 2 s by default, and a
# `ray.train.report` waits for that poll, so a local trial whose epochs last under 2 s (the CPU smoke: 0.6 s)
# spent most of its time waiting on it; 0.5 s costs nothing (a hanging poll only fails after 10 min). Clusters,
# with minute-long epochs, keep Ray's default.
RAY_START_ENV = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1",  # the dashboard's Train API: /api/train/v2/runs/v1
                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
TOKEN_HINT = ("dashboard login: paste the output of `ray get-auth-token` (on the head) into its token prompt; "
              "`ray job submit` and the HTTP API need RAY_AUTH_MODE=token and the same token")


def job_runtime_env() -> dict | None:
    """The storage credentials of this shell (AWS_* variables) for every worker of the sweep's Ray job: the
    Train workers write checkpoints to s3:// themselves."""
    env = storage_env()
    return {"env_vars": env} if env else None


def connect(address: str | None) -> str:
    """Connect to a cluster (`auto`, HOST:PORT) or start a local Ray with the dashboard and Train state
    tracking (token authentication is Ray's default for a local cluster); return the dashboard URL."""
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"address": "local", "include_dashboard": True}
        for key, value in RAY_START_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(configure_logging=False, runtime_env=job_runtime_env(), **kwargs)
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    return f"http://{url}" if url and "://" not in url else (url or "(dashboard not available)")


def token_hint() -> str | None:
    """How to get past the dashboard's token prompt, when the connected cluster uses token authentication."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    return TOKEN_HINT if is_token_auth_enabled() else None


def check_cluster(spec: SweepSpec, echo: Callable[[str], None] = print) -> bool:
    """Refuse, once, a sweep whose trials no node type of the connected cluster can ever host (ConfigError
    naming base.resources.<field> and the largest node type); say when the trials wait for a scale-up.
    Returns whether the cluster autoscales (the node types come from its autoscaler, not its live nodes)."""
    resources = base_trial(spec).resources
    types, autoscaling = cluster_node_types()
    problems = capacity_problems(resources, types, field="base.resources")
    if problems:
        kind = "the autoscaler's node types" if autoscaling else "the cluster's nodes (no autoscaler)"
        raise ConfigError(f"{problems[0]} ({kind})")
    waiting = waiting_for_nodes(resources, types) if autoscaling else None
    if waiting:
        echo(waiting)
    return autoscaling


def preflight(spec: SweepSpec, storage: str | None = None) -> None:
    """Refuse, before Ray starts, what would fail later: an unreachable storage or wrong credentials (the
    bucket named), an Optuna database URL that cannot be opened, MLflow requested but not installed."""
    check_storage(storage_uri(storage or spec.storage))
    if spec.optuna_storage:
        open_storage(spec.optuna_storage)
    if spec.tracking.mlflow:
        mlflow_client(spec.tracking.mlflow.uri)


def open_study(spec: SweepSpec, path: str, resume: bool = False):
    """The Optuna storage of the run's study (study.py); a resumed remote run first fetches its SQLite copy."""
    local = local_dir(path) / STUDY_FILE
    if is_remote(path) and not resume:  # a new run: a cache left by an earlier run of that name is stale
        shutil.rmtree(local_dir(path), ignore_errors=True)
    if resume and not spec.optuna_storage and is_remote(path) and not local.exists() and exists(join(path, STUDY_FILE)):
        download(join(path, STUDY_FILE), local)
    return open_storage(study_url(spec, path))


def sweep_callbacks(spec: SweepSpec, path: str, echo: Callable[[str], None] = print) -> list[tune.Callback]:
    """The driver's Tune callbacks: a console line per trial event, the heartbeat, MLflow when configured."""
    callbacks: list[tune.Callback] = [TrialEvents(spec, echo), RunHeartbeat(path),
                                      SweepMetrics(spec, run_name(path))]
    if spec.tracking.mlflow:
        callbacks.append(MlflowTracking(spec, path))
    return callbacks


def unfinished_trials(spec: SweepSpec, path: str, results) -> int:
    """Trials of the plan not yet TERMINATED or ERROR (after Ctrl-C: what --resume will run)."""
    statuses = trial_statuses(path)
    if not statuses:  # remote storage: the ResultGrid's view
        return num_configurations(spec) * spec.repeats - results.num_terminated - results.num_errors
    done = sum(status in ("TERMINATED", "ERROR") for status in statuses.values())
    return num_configurations(spec) * spec.repeats - done


def run_sweep(spec: SweepSpec, *, address: str | None = None, name: str | None = None,
              storage: str | None = None, resume: bool = False, trainable: Callable = sweep_trainable,
              echo: Callable[[str], None] = print, verbose: bool = False) -> tuple[str, tune.ResultGrid]:
    """Run (or resume) the sweep to the end; return (run path, ResultGrid). The results and report are
    written by the caller (objmae_ray/results, from the CLI)."""
    preflight(spec, storage)
    if resume and name is None:
        name = latest_run(spec, storage)
    name = name or default_name(spec)
    path = run_path(spec, name, storage)
    if not resume and exists(path):
        raise ConfigError(f"{path}: already exists (pass --resume to continue it, or another --name)")
    for line in plan(spec).lines(spec, brief=True):
        echo(line)
    with tune_console():
        study = open_study(spec, path, resume)
        echo(f"Ray dashboard: {connect(address)}")
        hint = token_hint()
        if hint:
            echo(hint)
        if not address:  # a local Ray: this machine serves its metrics (a cluster's head serves its own)
            echo(monitoring_line(local_session_dir()))
        autoscaling = check_cluster(spec, echo)
        check_nodes(base_trial(spec), storage_uri(storage or spec.storage), echo)  # before any trial
        route_worker_output(local_dir(path) / WORKER_LOG, verbose=verbose)
        if resume:
            tuner = restore_tuner(spec, path, trainable)
        else:
            save_spec(spec, path)
            tuner = build_tuner(spec, name=name, storage=storage, trainable=trainable, study=study,
                                callbacks=sweep_callbacks(spec, path, echo), autoscaling=autoscaling)
            name_objectives(study, name, [o.key for o in spec.objectives])
        echo(f"{'resuming' if resume else 'running'} {path} (worker output: {join(path, WORKER_LOG)})")
        echo(f"Optuna study {name}: {safe_url(study_url(spec, path))}; live view: objmae-sweep dashboard {path}")
        return path, _fit(tuner, spec, path)


def _fit(tuner: tune.Tuner, spec: SweepSpec, path: str) -> tune.ResultGrid:
    """Tuner.fit; driver.json says finished or interrupted afterwards (a remote run's study copied)."""
    state = "interrupted"
    try:
        results = tuner.fit()
        state = "finished" if not unfinished_trials(spec, path, results) else "interrupted"
        return results
    finally:
        write_driver_state(path, state)
        upload_local(path)
