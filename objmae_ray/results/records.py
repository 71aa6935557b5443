"""Trial records: one Tune trial's searched values, repeat index, reports and status.

From a run directory, local or remote (`records_from_dir`, JSON only via objmae_ray/sweep/rundir.py), or
from a Tune ResultGrid (`records_from_results`). Status: "done" (reached its last epoch of its last phase),
"stopped" (reported, but ASHA or Ctrl-C ended it early), "error", "pending" (never reported).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objmae_ray.errors import ConfigError
from objmae_ray.sweep.rundir import checkpoint_uri, trial_dirs
from objmae_ray.sweep.space import TRIAL_INDEX, trial_from_tune_config


@dataclass
class TrialRecord:
    """One Tune trial: its searched values, repeat index, reports in order, and where it lives."""

    trial_id: str
    params: dict[str, Any]  # dotted TrialConfig path -> value (the searched dimensions)
    repeat: int
    history: list[dict]
    path: str = ""
    error: bool = False
    final_point: tuple[int, int] | None = None  # (phase_index, epoch) of the trial's last report when complete

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if not self.history:
            return "pending"
        if self.final_point is None:  # config unknown: trust the trial's own flag
            return "done" if self.last.get("done") is True else "stopped"
        reached = (int(self.last.get("phase_index", -1)), int(self.last.get("epoch", -1)))
        return "done" if reached == self.final_point else "stopped"  # Tune sets `done` on stopped trials too

    def final(self, metric: str, phase: int | None = None) -> Any:
        """The trial's final `metric`: of transfer phase `phase` (its last report, reporting phase index
        phase + 1), or of the last report when phase is None (what an `Objective` reads)."""
        if phase is None:
            return self.last.get(metric)
        return self.phase_finals().get(phase + 1, {}).get(metric)

    def phase_finals(self) -> dict[int, dict]:
        """phase_index -> last report of that phase."""
        finals: dict[int, dict] = {}
        for report in self.history:
            finals[int(report.get("phase_index", 0))] = report
        return finals

    def checkpoint_dir(self) -> str | None:
        """The checkpoint of the trial's last report that carried one, as a local path or a URI like the
        trial's own path (s3://...); None if no report did."""
        for report in reversed(self.history):
            if report.get("checkpoint_path"):
                return checkpoint_uri(self.path, str(report["checkpoint_path"]))
        return None


def _params(config: dict) -> dict[str, Any]:
    return {k: v for k, v in sorted(config.items()) if "." in k}


def _final_point(config: dict) -> tuple[int, int] | None:
    """(phase_index, epoch) of a complete trial's last report, from its Tune config."""
    try:
        cfg = trial_from_tune_config(config)
    except (ConfigError, ValueError, TypeError):
        return None
    last = cfg.transfer[-1] if cfg.transfer else cfg.pretrain
    return len(cfg.transfer), last.epochs - 1


def _record(trial_id: str, config: dict, history: list[dict], path: str, error: bool) -> TrialRecord:
    return TrialRecord(trial_id, _params(config), int(config.get(TRIAL_INDEX, 0)), history, path=path,
                       error=error, final_point=_final_point(config))


def records_from_results(results) -> list[TrialRecord]:
    """TrialRecords of a tune.ResultGrid."""
    records = []
    for result in results:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if frame is not None else []
        trial_id = str((result.metrics or {}).get("trial_id", Path(result.path).name))
        records.append(_record(trial_id, result.config or {}, history, str(result.path), result.error is not None))
    return records


def records_from_dir(run_dir: str | Path) -> list[TrialRecord]:
    """TrialRecords from an experiment directory, local or remote (each trial dir's params.json and result.json)."""
    records = []
    for trial in trial_dirs(run_dir):
        name = trial.path.rsplit("/", 1)[-1]
        trial_id = trial.history[-1].get("trial_id", name) if trial.history else name
        records.append(_record(str(trial_id), trial.config, trial.history, str(trial.path), trial.errored))
    return records
