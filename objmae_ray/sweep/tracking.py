"""MLflow tracking of a sweep (optional extra `[mlflow]`; `tracking.mlflow` in the sweep file or `--mlflow URI`).

One parent run per sweep (named after the run directory) and one child run per Tune trial (tag
`mlflow.parentRunId`), with the trial's TrialConfig as params (dotted paths), every report's metrics at
step = report number (one report per epoch), and the trial's status (FINISHED, or FAILED with the reason
as the tag `objmae.error`). `log_best` adds the best trial's exported encoder as artifacts of the parent run
and of that trial's run. Ray Train V2's RunConfig rejects Tune logger callbacks, so this is a Tune
callback on the Tuner (objmae_ray/sweep/tuner.py), which sees every trial's reports in the driver.

The run ids live in the run directory's `mlflow.json`, so `--resume` continues the same parent and child
runs. mlflow is imported only where it is used: the rest of the sweep runs without it.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from ray import tune

from objmae_ray.config import METRICS, SweepSpec
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.console import failure_reason
from objmae_ray.sweep.rundir import join, read_text, run_name, write_text
from objmae_ray.sweep.space import trial_from_tune_config

STATE_FILE = "mlflow.json"
LOGGED = (*METRICS, "lr")  # numeric report keys logged as metrics


def mlflow_client(uri: str):
    """An MlflowClient for uri; ConfigError naming the extra when mlflow is missing."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow: mlflow is not installed (pip install 'objmae-ray[mlflow]')") from None
    if uri.startswith("file:"):  # MLflow 3 keeps its file store only on request; the user asked for one
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """{"pretrain.lr": "0.001", "transfer.0.mode": "finetune", ...}: a nested config as MLflow params."""
    out: dict[str, str] = {}
    items = config.items() if isinstance(config, dict) else enumerate(config)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = str(value)
    return out


def _guarded(method):
    """An MLflow error (tracking server down, ...) is printed in one line; the sweep goes on untracked for
    that event rather than failing."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 -- MLflow raises many types; tracking must not end the sweep
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(f"warning: MLflow {self.uri}: {method.__name__}: {reason}", flush=True)
    return wrapper


class MlflowTracking(tune.Callback):
    """Parent run per sweep, child run per trial (see the module docstring)."""

    def __init__(self, spec: SweepSpec, run: str):
        assert spec.tracking.mlflow is not None
        self.uri = spec.tracking.mlflow.uri
        self.experiment = spec.tracking.mlflow.experiment or spec.study
        self.run = run
        objectives = ",".join(f"{o.metric}:{o.mode}" for o in spec.objectives)
        self.sweep_params = {"study": spec.study, "sampler": spec.sampler.kind, "configurations": spec.num_samples,
                             "repeats": spec.repeats, "objectives": objectives}
        self._state: dict[str, Any] = {}

    def _client(self):
        return mlflow_client(self.uri)

    def _save(self) -> None:
        write_text(join(self.run, STATE_FILE), json.dumps(self._state, indent=2))

    def setup(self, **info) -> None:
        client = self._client()
        saved = read_text(join(self.run, STATE_FILE))
        self._state = json.loads(saved) if saved else {}
        if self._state.get("parent_run_id"):
            client.update_run(self._state["parent_run_id"], status="RUNNING")
            return
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment)
        parent = client.create_run(experiment_id, run_name=run_name(self.run), tags={"objmae.run_dir": self.run})
        for key, value in self.sweep_params.items():
            client.log_param(parent.info.run_id, key, value)
        self._state = {"tracking_uri": self.uri, "experiment_id": experiment_id,
                       "parent_run_id": parent.info.run_id, "trials": {}}
        self._save()

    @_guarded
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        client = self._client()
        run_id = self._state["trials"].get(trial.trial_id)
        if run_id:  # resumed
            client.update_run(run_id, status="RUNNING")
            return
        child = client.create_run(self._state["experiment_id"], run_name=f"trial_{trial.trial_id}",
                                  tags={"mlflow.parentRunId": self._state["parent_run_id"],
                                        "objmae.trial_id": trial.trial_id})
        from mlflow.entities import Param

        params = flat_params(trial_from_tune_config(trial.config).model_dump(mode="json"))
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(child.info.run_id, params=items[i:i + 100])
        self._state["trials"][trial.trial_id] = child.info.run_id
        self._save()

    @_guarded
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        from mlflow.entities import Metric

        run_id = self._state["trials"].get(trial.trial_id)
        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step) for k in LOGGED
                   if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)]
        if run_id and metrics:
            self._client().log_batch(run_id, metrics=metrics)

    def _end(self, trial, status: str, **tags: str) -> None:
        run_id = self._state["trials"].get(trial.trial_id)
        if not run_id:
            return
        client = self._client()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status)

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        done = (trial.last_result or {}).get("done") is True
        self._end(trial, "FINISHED", **{"objmae.status": "done" if done else "stopped"})

    @_guarded
    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        try:
            reason = failure_reason(trial.get_error())
        except Exception as err:  # noqa: BLE001 -- the error file may be unreadable
            reason = failure_reason(err)
        self._end(trial, "FAILED", **{"objmae.status": "error", "objmae.error": reason})

    @_guarded
    def on_experiment_end(self, trials: list, **info) -> None:
        if self._state.get("parent_run_id"):
            self._client().set_terminated(self._state["parent_run_id"], "FINISHED")


def log_best(run: str, export_dir: str, trial_id: str) -> str | None:
    """Log an exported best trial (objmae-export's directory) as artifacts `best_trial/` of the sweep's parent
    run and of the trial's own run; return the parent run id (None: the run was not tracked)."""
    saved = read_text(join(run, STATE_FILE))
    if not saved:
        return None
    state = json.loads(saved)
    client = mlflow_client(state["tracking_uri"])
    for run_id in (state["parent_run_id"], state["trials"].get(trial_id)):
        if run_id:
            client.log_artifacts(run_id, str(export_dir), artifact_path="best_trial")
    client.set_tag(state["parent_run_id"], "objmae.best_trial", trial_id)
    return state["parent_run_id"]
