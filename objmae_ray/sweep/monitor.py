"""The sweep's own Prometheus metrics, and the local run's monitoring hint.

  SweepMetrics     Tune callback in the driver: `ray_objmae_trials{study, state}` (trials per Tune state:
                   PENDING, RUNNING, PAUSED, TERMINATED, ERROR) and `ray_objmae_best{study, metric}` (the best
                   value of each objective so far, by its mode), through ray.util.metrics. The trials' own
                   per-epoch series come from their rank-0 workers (objmae_ray/train/metrics.py).
  monitoring_line  one console line for a local run: the command that starts Prometheus on this session's
                   scrape config (Ray writes it to <session>/metrics/prometheus/prometheus.yml), or which
                   piece is off and how to get it. A sweep never fails because monitoring is missing.

The Grafana dashboard over all of them is cluster/grafana/objmae-sweep.json; cluster/gpu.yaml's head serves
Prometheus and Grafana on its loopback.
"""
from __future__ import annotations

import math
import os
import shutil
import socket

from ray import tune

from objmae_ray.config import SweepSpec

TRIAL_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")
PROMETHEUS_PORT = 9090  # Prometheus's default, and the port RAY_PROMETHEUS_HOST names on the cluster
GRAFANA_PORT = 3000


class SweepMetrics(tune.Callback):
    """Trial counts by state and the best objective so far, as Prometheus gauges (module docstring)."""

    def __init__(self, spec: SweepSpec, study: str):
        self.study = study
        self.objectives = [(o.key, o.mode) for o in spec.objectives]  # the report key: transfer{i}_top1 with a phase
        self.best: dict[str, float] = {}
        self._gauges = None
        self._counts: dict[str, int] | None = None

    def __getstate__(self) -> dict:  # pickled into tuner.pkl: the metric objects are made again where used
        return {**self.__dict__, "_gauges": None, "_counts": None}

    def _metrics(self):
        if self._gauges is None:
            from ray.util.metrics import Gauge

            self._gauges = (
                Gauge("objmae_trials", description="trials of the sweep per Tune state", tag_keys=("study", "state")),
                Gauge("objmae_best", description="best value so far of each objective of the sweep",
                      tag_keys=("study", "metric")))
        return self._gauges

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        counts = {state: 0 for state in TRIAL_STATES}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        if counts != self._counts:  # the gauges keep their value; set on change
            self._counts = counts
            trials_gauge, _ = self._metrics()
            for state, count in counts.items():
                trials_gauge.set(count, tags={"study": self.study, "state": state})

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        _, best_gauge = self._metrics()
        for metric, mode in self.objectives:
            value = result.get(metric)
            if not isinstance(value, (int, float)) or math.isnan(value):
                continue
            old = self.best.get(metric)
            if old is None or (value > old if mode == "max" else value < old):
                self.best[metric] = float(value)
            best_gauge.set(self.best[metric], tags={"study": self.study, "metric": metric})


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def scrape_config(session_dir: str) -> str:
    """Ray's generated Prometheus config of a session (its file_sd lists every node's metrics agent)."""
    return os.path.join(session_dir, "metrics", "prometheus", "prometheus.yml")


def prometheus_command(session_dir: str, port: int = PROMETHEUS_PORT, data_dir: str = "/tmp/objmae-prometheus") -> str:
    return (f"prometheus --config.file={scrape_config(session_dir)} --web.listen-address=127.0.0.1:{port} "
            f"--storage.tsdb.path={data_dir}")


def local_session_dir() -> str | None:
    """The session directory of the Ray this process started or joined on this machine (None: none)."""
    import ray._private.worker

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_session_dir_path() if node is not None else None


def monitoring_line(session_dir: str | None) -> str:
    """One line for a local run: how to start Prometheus on this session, or which piece is off and why."""
    if session_dir is None:
        return "monitoring: off (no local Ray session to scrape; a cluster's head serves its own Prometheus)"
    if not shutil.which("prometheus"):
        return ("monitoring: off (Prometheus is not installed: `apt-get install prometheus`, then start it on "
                f"{scrape_config(session_dir)}; README, Monitoring)")
    port = PROMETHEUS_PORT if port_free(PROMETHEUS_PORT) else _free_port()
    taken = "" if port == PROMETHEUS_PORT else f" (port {PROMETHEUS_PORT} is in use)"
    return f"monitoring{taken}: {prometheus_command(session_dir, port)}  then http://127.0.0.1:{port}/graph"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
