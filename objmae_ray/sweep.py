"""The sweep: a validated SweepSpec -> Ray Tune + Optuna over ObjMAE trials, resumable, with a results table.

Pieces (each a short function):
  optuna_space / build_sampler  the search space as Optuna distributions; TPE, grid, random or NSGA-II
  build_search                  OptunaSearch (+ repeats) under a ConcurrencyLimiter
  build_scheduler               FIFO, or ASHA on a transfer metric with time_attr="training_iteration"
  build_tuner / restore_tuner   tune.Tuner over `sweep_trainable` (a driver with `driver_cpus`; the Ray
                                Train workers of objmae_ray.trial hold the real resources)
  run_sweep                     connect or start Ray (dashboard on), fit or resume, write the report

Trial config: Tune's `param_space` is the base TrialConfig (fixed search values applied) and the
searcher adds flat dotted keys (`masking.alpha`) that `trial_config_from` writes into it.
Repeats: with `repeats: R` every configuration the sampler proposes runs R times (Tune's
`Repeater`), with seeds base.seed + 0 .. R-1; the sampler is told the mean of the R results.
Resume: Tune saves the searcher, scheduler and trial states in the experiment directory;
`--resume` restores them (`Tuner.restore(..., resume_errored=True)`), so finished trials are kept
and not rerun, and unfinished ones restart from their latest Ray Train checkpoint.
"""
from __future__ import annotations

import datetime
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import yaml
from ray.tune.search import ConcurrencyLimiter, Repeater
from ray.tune.search.optuna import OptunaSearch

from objmae_ray.cluster import DRIVER_RESOURCE
from objmae_ray.config import ChoiceParam, FixedParam, RangeParam, SweepSpec
from objmae_ray.errors import ConfigError
from objmae_ray.spec import (TRIAL_INDEX, asha_milestones, base_trial, grid_values, plan, search_paths,
                             trial_config_from)

SPEC_FILE = "sweep.yaml"  # the resolved spec, written into the run directory (resume, report, export)


# ---- search space and searcher -------------------------------------------------------------------
class _OptunaSearch(OptunaSearch):
    """OptunaSearch that skips reports lacking its metric (Tune's own would raise KeyError)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return
        super().on_trial_result(trial_id, result)


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is used up: Tune asks for exactly the grid
    size (x repeats), and stop() outside `study.optimize` raises, which would leave the told trial RUNNING."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


class _Repeater(Repeater):
    """Repeater that averages every objective (Tune's handles a single metric only)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        group = self._trial_id_to_group[trial_id]
        metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
        group.report(trial_id, [float((result or {}).get(m, np.nan)) for m in metrics])
        if group.finished_reporting():
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a failed configuration
                means = np.nanmean(np.array(group.scores(), dtype=float), axis=0)
            values = [None if np.isnan(v) else float(v) for v in means]
            mean_result = None if None in values else dict(zip(metrics, values))
            self.searcher.on_trial_complete(group.primary_trial_id, result=mean_result, **kwargs)


def base_config(spec: SweepSpec) -> dict:
    """TrialConfig.model_dump() of the base trial with the fixed search values applied."""
    return base_trial(spec).model_dump()


def searched(spec: SweepSpec) -> dict[str, RangeParam | ChoiceParam]:
    """Dotted TrialConfig path -> its (non-fixed) search dimension."""
    return {path: spec.search_space[key] for key, path in search_paths(spec).items()
            if not isinstance(spec.search_space[key], FixedParam)}


def optuna_space(spec: SweepSpec) -> dict[str, Any]:
    """Dotted path -> optuna distribution (grid: every dimension categorical over its values)."""
    import optuna.distributions as od

    space = {}
    for path, param in searched(spec).items():
        if spec.sampler.kind == "grid":
            space[path] = od.CategoricalDistribution(grid_values(param))
        elif isinstance(param, ChoiceParam):
            space[path] = od.CategoricalDistribution(param.choices)
        elif param.type == "int":
            space[path] = od.IntDistribution(int(param.low), int(param.high), log=param.log,
                                             step=int(param.step or 1))
        else:
            space[path] = od.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return space


def grid_size(spec: SweepSpec) -> int:
    return math.prod(len(grid_values(p)) for p in searched(spec).values())


def num_configurations(spec: SweepSpec) -> int:
    return grid_size(spec) if spec.sampler.kind == "grid" else spec.num_samples


def build_sampler(spec: SweepSpec):
    """The Optuna sampler of spec.sampler (seeded)."""
    s = spec.sampler
    if s.kind == "grid":
        return _GridSampler({p: grid_values(v) for p, v in searched(spec).items()}, seed=s.seed)
    if s.kind == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.kind == "nsga2":  # population: a third of the budget, 2..50 (Optuna's default is 50)
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(2, min(50, spec.num_samples // 3)))
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


def build_search(spec: SweepSpec):
    """OptunaSearch over the spec's objectives (+ repeats), limited to spec.concurrency live trials."""
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    multi = len(metrics) > 1
    searcher = _OptunaSearch(space=optuna_space(spec), metric=metrics if multi else metrics[0],
                             mode=modes if multi else modes[0], sampler=build_sampler(spec),
                             study_name=spec.study)
    if spec.repeats > 1:
        searcher = _Repeater(searcher, repeat=spec.repeats, set_index=True)
    return ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency)


def build_scheduler(spec: SweepSpec):
    """FIFO, or ASHA on spec.scheduler.metric with one rung step per reported epoch."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.kind == "fifo":
        return FIFOScheduler()
    grace, max_t = asha_milestones(spec)
    return ASHAScheduler(time_attr="training_iteration", metric=spec.scheduler.metric, mode=spec.scheduler.mode,
                         grace_period=grace, max_t=max_t, reduction_factor=spec.scheduler.reduction_factor)


# ---- the trainable ----------------------------------------------------------------------------------
def sweep_trainable(config: dict) -> None:
    """Ray Tune function trainable of one sweep trial: objmae_ray.trial.tune_trainable on its TrialConfig."""
    from ray import tune

    from objmae_ray.trial import tune_trainable

    cfg = trial_config_from(config)
    cfg.name = tune.get_context().get_trial_name() or cfg.name
    reserved = {k: v for k, v in config.items() if k.startswith("_") and k != TRIAL_INDEX}
    tune_trainable({**cfg.model_dump(), **reserved})


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default packs every config value into the name)."""
    return f"trial_{trial.trial_id}"


# ---- tuner ------------------------------------------------------------------------------------------
def storage_uri(storage: str) -> str:
    """Absolute local path (Tune needs one) or the URI as given (s3://...)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def driver_resources(spec: SweepSpec) -> dict[str, float]:
    """Resources of one trial's Tune driver (the Train workers hold the real ones).

    One unit of the head's DRIVER_RESOURCE when the cluster offers it (cluster/gpu.yaml): drivers,
    and the Train controllers Ray pins to the driver's node, then never sit on a spot worker, so a
    reclaim costs only that trial's workers, which restart from the latest checkpoint (Train
    FailureConfig). Without it: `driver_cpus` CPUs anywhere.
    """
    import ray

    if ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        return {"cpu": 0, DRIVER_RESOURCE: 1}
    return {"cpu": spec.driver_cpus}


def _with_resources(spec: SweepSpec, trainable: Callable):
    from ray import tune

    return tune.with_resources(trainable, driver_resources(spec))


def build_tuner(spec: SweepSpec, *, name: str, storage: str | None = None,
                trainable: Callable = sweep_trainable):
    """tune.Tuner of the sweep: searcher, scheduler, trial count, storage (nothing runs yet)."""
    from ray import tune

    storage = storage_uri(storage or spec.storage)
    param_space = base_config(spec)
    param_space["_storage_path"] = f"{storage.rstrip('/')}/{name}"  # inner Ray Train runs: shared storage
    return tune.Tuner(
        _with_resources(spec, trainable),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=build_search(spec), scheduler=build_scheduler(spec),
                                    num_samples=num_configurations(spec) * spec.repeats,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def restore_tuner(spec: SweepSpec, run_path: str, trainable: Callable = sweep_trainable):
    """The interrupted sweep at run_path, to continue: finished trials kept, unfinished and errored resumed."""
    from ray import tune

    if not tune.Tuner.can_restore(run_path):
        raise ConfigError(f"{run_path}: no Tune experiment to resume here")
    return tune.Tuner.restore(run_path, trainable=_with_resources(spec, trainable), resume_errored=True)


# ---- running ----------------------------------------------------------------------------------------
def connect(address: str | None) -> str:
    """Connect to a cluster (`auto`, HOST:PORT) or start a local Ray with the dashboard; return its URL."""
    import ray

    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"address": "local", "include_dashboard": True}
        ray.init(configure_logging=False, **kwargs)
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    return f"http://{url}" if url and "://" not in url else (url or "(dashboard not available)")


def run_path(spec: SweepSpec, name: str, storage: str | None = None) -> str:
    return f"{storage_uri(storage or spec.storage).rstrip('/')}/{name}"


def latest_run(spec: SweepSpec, storage: str | None = None) -> str:
    """Name of the newest `<study>-*` run in local storage (for --resume without --name)."""
    root = Path(storage_uri(storage or spec.storage))
    runs = sorted(p.name for p in root.glob(f"{spec.study}-*") if p.is_dir()) if root.is_dir() else []
    if not runs:
        raise ConfigError(f"{root}: no run of study {spec.study!r} to resume (pass --name)")
    return runs[-1]


def default_name(spec: SweepSpec) -> str:
    return f"{spec.study}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def _write_text(uri: str, text: str) -> None:
    """Write a small text file to a local path or a pyarrow-supported URI (s3://...)."""
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_text(text)
        return
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def save_spec(spec: SweepSpec, path: str) -> None:
    _write_text(f"{path}/{SPEC_FILE}", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def load_run_spec(path: str | Path) -> SweepSpec:
    """The resolved spec a run was started with (its run directory's sweep.yaml)."""
    file = Path(path) / SPEC_FILE
    if not file.is_file():
        raise ConfigError(f"{file}: not found (is {path} an objmae-sweep run directory?)")
    try:
        return SweepSpec.model_validate(yaml.safe_load(file.read_text()))
    except Exception as err:  # pydantic / YAML errors in a hand-edited file
        raise ConfigError(f"{file}: not a valid sweep spec ({str(err).splitlines()[0]})") from None


def trial_statuses(path: str) -> dict[str, str]:
    """trial_id -> Tune status (TERMINATED, ERROR, PENDING, RUNNING, ...) from the run's newest experiment
    state file, which is what --resume continues from (local storage only; {} elsewhere)."""
    files = sorted(Path(path).glob("experiment_state-*.json")) if "://" not in path else []
    if not files:
        return {}
    trials = (json.loads(t[0]) for t in json.loads(files[-1].read_text())["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def unfinished_trials(spec: SweepSpec, path: str, results) -> int:
    """Trials of the plan not yet TERMINATED or ERROR (after Ctrl-C: what --resume will run)."""
    statuses = trial_statuses(path)
    if not statuses:  # remote storage: the ResultGrid's view
        return num_configurations(spec) * spec.repeats - results.num_terminated - results.num_errors
    done = sum(status in ("TERMINATED", "ERROR") for status in statuses.values())
    return num_configurations(spec) * spec.repeats - done


def run_sweep(spec: SweepSpec, *, address: str | None = None, name: str | None = None,
              storage: str | None = None, resume: bool = False, trainable: Callable = sweep_trainable,
              echo: Callable[[str], None] = print):
    """Run (or resume) the sweep to the end; write the report; return (run path, ResultGrid)."""
    from objmae_ray import report

    if resume and name is None:
        name = latest_run(spec, storage)
    name = name or default_name(spec)
    path = run_path(spec, name, storage)
    for line in plan(spec).lines(spec):
        echo(line)
    echo(f"Ray dashboard: {connect(address)}")
    if resume:
        tuner = restore_tuner(spec, path, trainable)
        echo(f"resuming {path}")
    else:
        if "://" not in path and Path(path).exists():
            raise ConfigError(f"{path}: already exists (pass --resume to continue it, or another --name)")
        save_spec(spec, path)
        tuner = build_tuner(spec, name=name, storage=storage, trainable=trainable)
        echo(f"running {path}")
    results = tuner.fit()
    table = report.write_report(path, spec, report.records_from_results(results))
    echo(table)
    if "://" not in path:  # the paper-form tables, figures and index.html (objmae-report RUN_DIR)
        from objmae_ray.summary import write_summary

        try:
            echo(f"report: {write_summary(path) / 'index.html'}")
        except Exception as err:  # noqa: BLE001 -- a figure failing must not fail a finished sweep
            echo(f"report skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    return path, results
