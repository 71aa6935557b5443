"""The sweep driver's heartbeat in its run directory, so that `objmae-sweep status` can tell a running sweep
from one whose driver died, without Ray.

RunHeartbeat (a Tune callback) writes driver.json {"state": "running", ...} when the experiment starts and
every HEARTBEAT_S while it runs; objmae_ray/sweep/tuner.py writes "finished" or "interrupted" when fit
returns or is interrupted. A "running" state older than STALE_S means the driver is gone (interrupted).
After every finished trial a remote run's local-only files (the SQLite study, the worker log) are copied
into its run directory.
"""
from __future__ import annotations

import time

from ray import tune

from objmae_ray.errors import ConfigError
from objmae_ray.sweep.rundir import upload_local, write_driver_state

HEARTBEAT_S = 30
STALE_S = 4 * HEARTBEAT_S


class RunHeartbeat(tune.Callback):
    """driver.json "running" with a heartbeat; a remote run's study copied after each finished trial."""

    def __init__(self, run: str):
        self.run = run
        self._last = 0.0

    def setup(self, **info) -> None:
        self._beat()

    def _beat(self) -> None:
        self._last = time.monotonic()
        _quietly(write_driver_state, self.run, "running", heartbeat_s=HEARTBEAT_S)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._last >= HEARTBEAT_S:
            self._beat()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        _quietly(upload_local, self.run)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        _quietly(upload_local, self.run)


def _quietly(write, *args, **kwargs) -> None:
    """A storage hiccup costs one heartbeat or copy (said in one line), never the sweep."""
    try:
        write(*args, **kwargs)
    except ConfigError as err:
        print(f"warning: {err}", flush=True)
