"""The sweep's console: one line per trial event, Tune's status table at an interval, and Ray's worker
output in a file of the run directory instead of the terminal (`objmae-sweep --verbose` shows it too).

  TrialEvents          Tune callback printing one line per event: started (its searched values), epoch k/n
                       of a phase with the objective (EPOCH_LINES_PER_PHASE per phase, evenly spaced, the
                       last epoch always), finished, stopped early, failed (the one-line reason),
                       restarted after a worker loss (a report going back to an earlier epoch: Ray Train
                       restarted the worker group from its latest checkpoint)
  status_reporter      Tune's CLIReporter (searched values, objectives), every TABLE_INTERVAL_S, without
                       its scheduler and resource lines
  tune_console()       context for Tuner.fit: Tune's classic reporter (`RAY_AIR_NEW_OUTPUT=0`) in place of
                       the per-trial config and result tables, Optuna's log at WARNING
  route_worker_output  Ray's stream of worker stdout/stderr (what `log_to_driver` prints) into a file, with the
                       raylet's startup-concurrency warnings (RAYLET_NOISE), which a user cannot act on
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from ray import tune

from objmae_ray.config import SweepSpec
from objmae_ray.sweep.space import describe, searched, short_name, trial_from_tune_config

TABLE_INTERVAL_S = 300  # Tune's status table; trial events are printed as they happen
_HANDLER = "objmae_worker_output"
_RAY_HANDLER = "ray_print_logs"  # the handler ray.init(log_to_driver=True) installs


def _now() -> str:
    return f"{datetime.datetime.now():%H:%M:%S}"


def failure_reason(error: Any) -> str:
    """One line from a Tune trial error: the TrialError / ConfigError line if any, else the last error line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ("TrialError: ", "NonFiniteLossError: ", "ConfigError: "):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[-1][hits[-1].index(marker) + len(marker):]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (errors or lines or [type(error).__name__])[-1][:300]


EPOCH_LINES_PER_PHASE = 2  # epoch lines a phase prints (its middle and last epoch)


class TrialEvents(tune.Callback):
    """One console line per trial event (see the module docstring)."""

    def __init__(self, spec: SweepSpec, echo: Callable[[str], None] = print):
        self.objectives = [o.key for o in spec.objectives]  # phase_key where an objective names its phase
        self.paths = list(searched(spec))
        # Tune pickles its callbacks with the experiment state; the built-in print pickles by reference and
        # fails once Ray has swapped builtins.print (ray.experimental.tqdm_ray does): look it up when used
        self.echo = None if getattr(echo, "__module__", None) == "builtins" else echo
        self._last: dict[str, tuple[int, int]] = {}

    def _line(self, trial, text: str) -> None:
        (self.echo or print)(f"{_now()} trial {trial.trial_id} {text}")

    def _values(self, result: dict, metrics: list[str]) -> str:
        shown = [f"{m} {result[m]:.4g}" for m in metrics if isinstance(result.get(m), (int, float))]
        return ", ".join(shown) or "no objective reported"

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        values = {p: trial.config[p] for p in self.paths if p in trial.config}
        seed = trial_from_tune_config(trial.config).seed
        verb = "resumed" if trial.last_result.get("training_iteration") else "started"
        self._line(trial, f"{verb}: {describe(values)} (seed {seed})")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "phase_index" not in result or "epoch" not in result:
            return
        point = (int(result["phase_index"]), int(result["epoch"]))
        previous = self._last.get(trial.trial_id)
        if previous is not None and point <= previous:
            phase = result.get("phase", "phase")
            self._line(trial, f"restarted after a worker loss: from {phase} epoch {point[1] + 1}")
        self._last[trial.trial_id] = point
        if point[0] == 0 and result.get("pretrain_reused_from") and previous is None:
            self._line(trial, f"pre-training reused from {result['pretrain_reused_from']}")
            return
        if point[0] == 0 and point[1] == 0 and result.get("pretrain_reuse_note"):
            self._line(trial, f"{result['pretrain_reuse_note']}: pre-training afresh")
        cfg = trial_from_tune_config(trial.config)
        phases = [cfg.pretrain, *cfg.transfer]
        epochs = phases[point[0]].epochs if point[0] < len(phases) else 0
        every = max(1, math.ceil(epochs / EPOCH_LINES_PER_PHASE))
        if epochs and (point[1] + 1) % every and point[1] + 1 != epochs:
            return  # a long phase prints EPOCH_LINES_PER_PHASE lines, its last epoch always
        metrics = ["recon_loss"] if point[0] == 0 and "recon_loss" not in self.objectives else self.objectives
        self._line(trial, f"{result.get('phase', '')} epoch {point[1] + 1}/{epochs or '?'}: "
                          f"{self._values(result, metrics)}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        what = "finished" if result.get("done") is True or "phase_index" not in result else "stopped early"
        self._line(trial, f"{what}: {self._values(result, self.objectives)}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        try:
            error = trial.get_error()
        except Exception as err:  # noqa: BLE001 -- the error file may be unreadable: still one line
            error = err
        self._line(trial, f"failed: {failure_reason(error)}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, "failed, retried by Tune")


class _StatusTable(tune.CLIReporter):
    """Tune's CLIReporter without the scheduler / resource lines and without the final table (the results
    table follows the sweep)."""

    def setup(self, *args, **kwargs) -> None:
        super().setup(*args, **kwargs)
        self._last_report_time = time.time()  # the first table after one interval: the start is in the event lines

    def should_report(self, trials: list, done: bool = False) -> bool:
        return not done and super().should_report(trials, done=False)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        super().report(trials, done)


def status_reporter(spec: SweepSpec, interval_s: float = TABLE_INTERVAL_S) -> tune.CLIReporter:
    """Tune's status table of the sweep: searched values and objectives, sorted by the first objective."""
    first = spec.objectives[0]
    metrics = {o.key: o.key for o in spec.objectives} | {"training_iteration": "reports"}
    return _StatusTable(parameter_columns={p: short_name(p) for p in searched(spec)}, metric_columns=metrics,
                        max_report_frequency=interval_s, print_intermediate_tables=True, sort_by_metric=True,
                        metric=first.key, mode=first.mode, max_column_length=12)


@contextlib.contextmanager
def tune_console() -> Iterator[None]:
    """Tune's classic reporter (the new one prints every trial's config and result as tables) and Optuna's
    log at WARNING, while the sweep is set up and runs."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    level = optuna.logging.get_verbosity()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


_lock = threading.Lock()


def _write_batch(file: Path, data: dict) -> None:
    who = data.get("actor_name") or data.get("task_name") or "worker"
    prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')})"
    with _lock, open(file, "a") as out:
        out.writelines(f"{prefix} {line}\n" for line in data.get("lines", []))


def route_worker_output(file: Path, *, verbose: bool = False) -> None:
    """Append Ray's worker output (Train workers' reports, controller and raylet messages) to `file`, and
    keep it off the terminal unless verbose. Only reaches this driver when Ray was initialised here with
    log_to_driver (the default of objmae-sweep's connect). Raylet warnings a user cannot act on
    (RAYLET_NOISE) go to the same file."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher  # no public hook

    file.parent.mkdir(parents=True, exist_ok=True)
    if not verbose:
        dispatcher.remove_handler(_RAY_HANDLER)
    dispatcher.remove_handler(_HANDLER)
    dispatcher.add_handler(_HANDLER, functools.partial(_write_batch, file))
    route_raylet_noise(file, verbose=verbose)


# Raylet warnings that reach the driver's console and that a user of a sweep cannot act on: every trial starts a
# Tune driver, a Train controller, its workers and a data-check task, which on a small machine is "Nx the maximum
# expected startup concurrency" (Ray issue 3644); they go to the worker log instead.
RAYLET_NOISE = ("the maximum expected startup concurrency",)


def route_raylet_noise(file: Path, *, verbose: bool = False) -> None:
    """Send the raylet's RAYLET_NOISE warnings to `file` (also printed when verbose). Ray prints raylet errors
    from its error-listener thread through ray._private.worker.print_to_stdstream (no public hook)."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)

    @functools.wraps(original)
    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        lines = data.get("lines", [])
        if data.get("pid") == "raylet" and any(noise in line for line in lines for noise in RAYLET_NOISE):
            with _lock, open(file, "a") as out:
                out.writelines(f"(raylet) {line}\n" for line in lines)
            if not verbose:
                return
        original(data, ignore_prefix)

    ray_worker.print_to_stdstream = print_to_stdstream
