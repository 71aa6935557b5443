"""A sweep's run directory, `<storage>/<name>/`, and its readers, on local disk, NFS or remote storage.

Layout (Ray Tune's experiment directory plus our files):
  sweep.yaml                 the resolved SweepSpec the run was started with (resume, report, export)
  optuna.db                  the Optuna study (SQLite; objmae_ray/sweep/study.py), unless spec.optuna_storage
  driver.json                the sweep driver's state and heartbeat (`objmae-sweep status`)
  logs/workers.log           Ray worker output (the console shows one line per trial event instead)
  experiment_state-*.json    Tune's state (what --resume continues from)
  trial_<id>/params.json     one Tune trial's config (base trial + searched dotted keys + repeat index)
  trial_<id>/result.json     its reports, one JSON object per line (with `checkpoint_path`)
  trial_<id>/error.txt       when it failed
  train-<trial_id>/          the trial's Ray Train run: checkpoint_* directories
  results.md / .csv, pareto.png, report/   written at the end (objmae_ray/results)

Storage is a local directory, an NFS mount or a pyarrow URI (s3://bucket/prefix, gs://...). Every reader
here goes through objmae_ray/storage.py (pyarrow.fs; its helpers are re-exported here), so runs on S3 are
read in place. Files that must be local while the sweep runs (the SQLite
study, the worker log) live in `local_dir(run)`: the run directory itself, or a cache directory for remote
runs whose contents `upload_local` copies into the run directory.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import yaml

from objmae_ray.config import SweepSpec
from objmae_ray.errors import ConfigError
from objmae_ray.storage import (AWS_VARS, _info, download, exists, filesystem, is_dir, is_remote,  # noqa: F401
                                join, listdir, read_bytes, read_text, storage_env, storage_error, storage_uri,
                                upload, write_bytes, write_text)

SPEC_FILE = "sweep.yaml"
STUDY_FILE = "optuna.db"
DRIVER_FILE = "driver.json"
WORKER_LOG = "logs/workers.log"
LOCAL_FILES = (STUDY_FILE, WORKER_LOG)  # kept in local_dir(run) while a remote run is being written


# ---- paths ----------------------------------------------------------------------------------------
def run_path(spec: SweepSpec, name: str, storage: str | None = None) -> str:
    return join(storage_uri(storage or spec.storage), name)


def run_name(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def check_storage(storage: str) -> None:
    """Refuse, before anything starts, a storage that cannot be reached or written with these credentials:
    ConfigError naming it (for s3: the bucket) and the reason."""
    if not is_remote(storage):
        return
    scheme, rest = storage.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    info = _info(bucket)
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"{bucket}: bucket not found")
    probe = join(storage, f".objmae-write-check-{os.getpid()}")
    write_text(probe, "ok")
    fs, path = filesystem(probe)
    fs.delete_file(path)


def local_dir(run: str) -> Path:
    """Where the run's local-only files live while it runs: the run directory, or for a remote run
    $OBJMAE_CACHE/runs/<scheme>/<bucket/prefix/name>."""
    if not is_remote(run):
        return Path(run)
    scheme, rest = run.split("://", 1)
    cache = Path(os.environ.get("OBJMAE_CACHE", Path.home() / ".cache" / "objmae-ray"))  # as the data cache
    return cache / "runs" / scheme / rest.strip("/")


def upload_local(run: str) -> None:
    """Copy a remote run's local-only files (study database, worker log) into its run directory."""
    if not is_remote(run):
        return
    for name in LOCAL_FILES:
        file = local_dir(run) / name
        if file.is_file():
            upload(file, join(run, name))


# ---- the run and its spec ---------------------------------------------------------------------------
def default_name(spec: SweepSpec) -> str:
    return f"{spec.study}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def run_dirs(storage: str) -> list[str]:
    """The run directories (holding sweep.yaml) directly under a storage path, sorted by name."""
    return [join(storage, name) for name, directory in listdir(storage)
            if directory and exists(join(storage, name, SPEC_FILE))]


def latest_run(spec: SweepSpec, storage: str | None = None) -> str:
    """Name of the newest `<study>-*` run in the storage (for --resume without --name)."""
    root = storage_uri(storage or spec.storage)
    runs = [name for name, directory in listdir(root) if directory and name.startswith(f"{spec.study}-")]
    if not runs:
        raise ConfigError(f"{root}: no run of study {spec.study!r} to resume (pass --name)")
    return runs[-1]


def save_spec(spec: SweepSpec, path: str) -> None:
    write_text(join(str(path), SPEC_FILE), yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def write_driver_state(run: str, state: str, **extra) -> None:
    """driver.json: the driver's state (running, finished, interrupted), host, pid and the time it was written."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_text(join(run, DRIVER_FILE), json.dumps({"state": state, "host": socket.gethostname(), "pid": os.getpid(),
                                                   "updated": now, **extra}, indent=2))


def read_driver_state(run: str) -> dict | None:
    text = read_text(join(run, DRIVER_FILE))
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:  # being rewritten right now
        return None


def require_run(path: str) -> str:
    """The run directory as a string URI/path, or ConfigError when there is none at path."""
    path = str(path)
    if not is_dir(path):
        raise ConfigError(f"{path}: run directory not found")
    return path


def load_run_spec(path: str | Path) -> SweepSpec:
    """The resolved spec a run was started with (its run directory's sweep.yaml)."""
    file = join(str(path), SPEC_FILE)
    text = read_text(file)
    if text is None:
        raise ConfigError(f"{file}: not found (is {path} an objmae-sweep run directory?)")
    try:
        return SweepSpec.model_validate(yaml.safe_load(text))
    except Exception as err:  # pydantic / YAML errors in a hand-edited file
        raise ConfigError(f"{file}: not a valid sweep spec ({str(err).splitlines()[0]})") from None


def trial_statuses(path: str) -> dict[str, str]:
    """trial_id -> Tune status (TERMINATED, ERROR, PENDING, RUNNING, ...) from the run's newest experiment
    state file, which is what --resume continues from ({} when there is none yet)."""
    files = [name for name, directory in listdir(str(path))
             if not directory and name.startswith("experiment_state-") and name.endswith(".json")]
    text = read_text(join(str(path), files[-1])) if files else None
    if not text:
        return {}
    trials = (json.loads(t[0]) for t in json.loads(text)["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def checkpoint_uri(run_dir: str, checkpoint_path: str) -> str:
    """A reported `checkpoint_path` as a URI: Ray reports the path inside the storage's file system, so a
    remote run's paths lack the scheme (`bucket/prefix/run/train-x/checkpoint_0`)."""
    if is_remote(run_dir) and "://" not in checkpoint_path:
        return f"{str(run_dir).split('://', 1)[0]}://{checkpoint_path.lstrip('/')}"
    return checkpoint_path


@dataclass
class TrialDir:
    """What a Tune trial directory holds, read as JSON only (nothing unpickled)."""

    path: str
    config: dict  # params.json
    history: list[dict]  # result.json, one report per line
    errored: bool  # error.txt newer than the last report


def trial_dirs(run_dir: str | Path) -> list[TrialDir]:
    """Every trial directory of a run (those holding params.json), sorted by name; local or remote."""
    out = []
    for name, directory in listdir(str(run_dir)):
        trial = join(str(run_dir), name)
        params = read_text(join(trial, "params.json")) if directory else None
        if params is None:
            continue
        results = read_text(join(trial, "result.json")) or ""
        history = [json.loads(line) for line in results.splitlines() if line.strip()]
        out.append(TrialDir(trial, json.loads(params), history, _errored(trial)))
    return out


def _errored(trial_dir: str) -> bool:
    """Tune's error.txt stays after `--resume` finishes the trial: an error counts only if nothing was reported
    after it."""
    error, result = _info(join(trial_dir, "error.txt")), _info(join(trial_dir, "result.json"))
    if error.type == pafs.FileType.NotFound:
        return False
    return result.type == pafs.FileType.NotFound or error.mtime >= result.mtime
