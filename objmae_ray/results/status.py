"""`objmae-sweep status [RUN | STORAGE]`: what runs a storage holds and how far each got, without Ray.

For each run directory (local, NFS or s3://): its study, state, trials finished / planned, the best
configuration so far (mean of its finished repeats, ranked as in results.md) and its report's path.
State, from driver.json (objmae_ray/sweep/heartbeat.py) and Tune's experiment state:
  running       the driver's heartbeat is recent
  finished      the driver ended with every planned trial finished (or failed)
  interrupted   the driver stopped early (Ctrl-C) or its heartbeat is stale (it died): `--resume` continues it
Runs made before driver.json existed count as finished when Tune recorded every planned trial as ended.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from objmae_ray.results import tables
from objmae_ray.results.records import records_from_dir
from objmae_ray.sweep.rundir import (SPEC_FILE, exists, join, load_run_spec, read_driver_state, run_dirs, run_name,
                                     trial_statuses)
from objmae_ray.sweep.space import describe, num_configurations

STALE_BEATS = 4  # a "running" driver silent for this many heartbeats is gone


@dataclass
class RunStatus:
    path: str
    study: str
    state: str
    finished: int  # trials Tune recorded as ended (TERMINATED or ERROR)
    failed: int
    total: int  # planned: configurations x repeats
    best: str  # "top1 43.75 ± 1.2 (2 runs): alpha=0.25, padding=zero" or "none yet"
    report: str | None


def _age_s(updated: str) -> float:
    then = datetime.datetime.fromisoformat(updated)
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


def _state(driver: dict | None, ended: int, total: int) -> str:
    if driver is None:
        return "finished" if total and ended >= total else "interrupted (or running without a heartbeat)"
    if driver.get("state") == "running":
        age = _age_s(driver["updated"])
        if age > STALE_BEATS * float(driver.get("heartbeat_s", 30)):
            return f"interrupted (driver on {driver.get('host')} silent since {driver['updated']})"
        return f"running (driver on {driver.get('host')}, pid {driver.get('pid')})"
    return str(driver.get("state"))


def _best(run: str, spec) -> str:
    records = [r for r in records_from_dir(run) if r.status == "done"]
    table = tables.results_table(spec)
    rows = tables.pivot(records, table, spec) if records else []
    objective = spec.objectives[0]
    key = tables.objective_column(objective, spec, table.columns)
    if not rows or rows[0].mean.get(key) is None:
        return "none yet"
    row = rows[0]
    spread = f" ± {row.std[key]:.4g}" if row.std.get(key) is not None and len(row.trials) > 1 else ""
    return f"{objective.key} {row.mean[key]:.4g}{spread} ({len(row.trials)} run(s)): {describe(row.values)}"


def run_status(run: str) -> RunStatus:
    """The status of one run directory."""
    spec = load_run_spec(run)
    statuses = trial_statuses(run)
    ended = sum(s in ("TERMINATED", "ERROR") for s in statuses.values())
    failed = sum(s == "ERROR" for s in statuses.values())
    total = num_configurations(spec) * spec.repeats
    report = join(run, "report", "index.html")
    return RunStatus(run, spec.study, _state(read_driver_state(run), ended, total), ended, failed, total,
                     _best(run, spec), report if exists(report) else None)


def status_lines(target: str) -> list[str]:
    """Lines for a run directory or every run in a storage path (ConfigError when neither)."""
    runs = [target] if exists(join(target, SPEC_FILE)) else run_dirs(target)
    if not runs:
        return [f"{target}: no objmae-sweep runs here"]
    lines = []
    for run in runs:
        s = run_status(run)
        failed = f", {s.failed} failed" if s.failed else ""
        lines += [f"{run_name(run)}  study {s.study}: {s.state}; trials {s.finished}/{s.total} finished{failed}",
                  f"  best so far: {s.best}",
                  f"  report: {s.report or f'none yet (objmae-report {run})'}",
                  f"  path: {run}"]
    return lines
