"""A sweep's run directory, `<storage>/<name>/`, and its readers.

Layout (Ray Tune's experiment directory plus our files):
  sweep.yaml                 the resolved SweepSpec the run was started with (resume, report, export)
  experiment_state-*.json    Tune's state (what --resume continues from)
  trial_<id>/params.json     one Tune trial's config (base trial + searched dotted keys + repeat index)
  trial_<id>/result.json     its reports, one JSON object per line (with `checkpoint_path`)
  trial_<id>/error.txt       when it failed
  train-<trial_id>/          the trial's Ray Train run: checkpoint_* directories
  results.md / .csv, pareto.png, report/   written at the end (objmae_ray/results)
Storage is a local directory, an NFS mount or a pyarrow URI (s3://...): keep URIs as strings (a Path
collapses `s3://` to `s3:/`).
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from objmae_ray.config import SweepSpec
from objmae_ray.errors import ConfigError

SPEC_FILE = "sweep.yaml"


def storage_uri(storage: str) -> str:
    """Absolute local path (Tune needs one) or the URI as given (s3://...)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def run_path(spec: SweepSpec, name: str, storage: str | None = None) -> str:
    return f"{storage_uri(storage or spec.storage).rstrip('/')}/{name}"


def default_name(spec: SweepSpec) -> str:
    return f"{spec.study}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def latest_run(spec: SweepSpec, storage: str | None = None) -> str:
    """Name of the newest `<study>-*` run in local storage (for --resume without --name)."""
    root = Path(storage_uri(storage or spec.storage))
    runs = sorted(p.name for p in root.glob(f"{spec.study}-*") if p.is_dir()) if root.is_dir() else []
    if not runs:
        raise ConfigError(f"{root}: no run of study {spec.study!r} to resume (pass --name)")
    return runs[-1]


def write_text(uri: str, text: str) -> None:
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
    write_text(f"{path}/{SPEC_FILE}", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


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


@dataclass
class TrialDir:
    """What a Tune trial directory holds, read as JSON only (nothing unpickled)."""

    path: Path
    config: dict  # params.json
    history: list[dict]  # result.json, one report per line
    errored: bool  # error.txt newer than the last report


def trial_dirs(run_dir: str | Path) -> list[TrialDir]:
    """Every trial directory of a local run (those holding params.json), sorted by name."""
    out = []
    for trial_dir in sorted(p for p in Path(run_dir).iterdir() if (p / "params.json").is_file()):
        result_file = trial_dir / "result.json"
        history = []
        if result_file.is_file():
            history = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        out.append(TrialDir(trial_dir, json.loads((trial_dir / "params.json").read_text()), history,
                            _errored(trial_dir)))
    return out


def _errored(trial_dir: Path) -> bool:
    """Tune's error.txt stays after `--resume` finishes the trial: an error counts only if nothing was reported after it."""
    error, result = trial_dir / "error.txt", trial_dir / "result.json"
    if not error.is_file():
        return False
    return not result.is_file() or error.stat().st_mtime >= result.stat().st_mtime
