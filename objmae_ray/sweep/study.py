"""The sweep's Optuna study, kept in a database so that it outlives the driver and optuna-dashboard can show it.

  study_url(spec, run)       spec.optuna_storage (PostgreSQL, MySQL, SQLite URL), else a SQLite file
                             `optuna.db` in the run directory (a remote run: in rundir.local_dir, copied
                             into the run directory after every finished trial and at the end)
  open_storage(url)          optuna RDBStorage; ConfigError naming the URL (password hidden) when it cannot be
                             opened, so a bad URL is refused before Ray starts
  name_objectives            the objectives' metric names on the study (the dashboard's axis labels)
  fail_orphans(study, live)  on --resume: RUNNING trials that no Tune trial will continue are told FAIL
  study_for_reading(run)     the run's study for `status`, `dashboard` and the report (None: a run made before
                             studies were stored)

The Optuna study is named after the run (`<study>-<date>-<time>`), so runs sharing one database stay apart
and `--resume` reopens the same study (OptunaSearch loads an existing study of that name).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from objmae_ray.config import SweepSpec
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.rundir import STUDY_FILE, download, exists, is_remote, join, load_run_spec, local_dir, run_name

ORPHAN_ATTR = "objmae_interrupted"  # user attr of a trial failed by fail_orphans (the grid sampler retries its point)
DUPLICATE_ATTR = "objmae_duplicate_of"  # user attr of a proposal that repeated this trial number (it ran nothing)
CONNECT_TIMEOUT_S = 10


def study_url(spec: SweepSpec, run: str) -> str:
    """The study's storage URL: spec.optuna_storage, else SQLite in the run directory (or its local cache)."""
    if spec.optuna_storage:
        return spec.optuna_storage
    return f"sqlite:///{(local_dir(run) / STUDY_FILE).resolve()}"


def safe_url(url: str) -> str:
    """The URL with any password hidden (for messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- not a URL sqlalchemy can parse: show it as given
        return url


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at url (tables created when new); ConfigError naming it when unreachable."""
    sqlite = url.startswith("sqlite:///")
    engine_kwargs = {} if sqlite else {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    try:
        if sqlite:
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as err:  # noqa: BLE001 -- sqlalchemy / driver errors of every kind: one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"optuna_storage {safe_url(url)}: cannot open the study database ({reason})") from None


def name_objectives(storage: optuna.storages.BaseStorage, study_name: str, metrics: list[str]) -> None:
    """Record the objectives' metric names on the study (optuna-dashboard labels its axes with them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.load_study(study_name=study_name, storage=storage).set_metric_names(metrics)


def fail_orphans(study: optuna.Study, live: set[int]) -> list[int]:
    """Tell FAIL every RUNNING trial whose number is not in `live` (the trials Tune will continue); return
    their numbers. Such trials were asked by a driver that died before Tune recorded them: nothing would
    ever finish them, and the dashboard would show them running forever."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number in live:
            continue
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(
            ORPHAN_ATTR, "the sweep driver stopped before Tune recorded this trial; marked failed on --resume")
        study.tell(trial.number, state=TrialState.FAIL)
        failed.append(trial.number)
    return failed


def stored_study_url(run: str) -> str | None:
    """The storage URL of a run's study for readers (a remote run's SQLite file is copied to a temporary
    file first), or None when the run has none (made before studies were stored)."""
    spec = load_run_spec(run)
    if spec.optuna_storage:
        return spec.optuna_storage
    if is_remote(run):
        if not exists(join(run, STUDY_FILE)):
            return None
        copy = download(join(run, STUDY_FILE), Path(tempfile.mkdtemp(prefix="objmae-study-")) / STUDY_FILE)
        return f"sqlite:///{copy.resolve()}"
    file = Path(run) / STUDY_FILE
    return f"sqlite:///{file.resolve()}" if file.is_file() else None


def study_for_reading(run: str) -> optuna.Study | None:
    """The run's stored study, or None when it has none (see stored_study_url)."""
    url = stored_study_url(run)
    if url is None:
        return None
    try:
        return without_duplicates(optuna.load_study(study_name=run_name(run), storage=open_storage(url)))
    except KeyError:  # the database holds no study of this run
        return None


def without_duplicates(study: optuna.Study) -> optuna.Study:
    """The study without the proposals that repeated an earlier trial (DUPLICATE_ATTR; sweep/search.py), as an
    in-memory copy when there are any: the report's statistics count each configuration once."""
    trials = [t for t in study.get_trials(deepcopy=False) if DUPLICATE_ATTR not in t.user_attrs]
    if len(trials) == len(study.trials):
        return study
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "[I ...] A new study created in memory" line
    try:
        copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    finally:
        optuna.logging.set_verbosity(level)
    copy.add_trials(trials)
    if study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            copy.set_metric_names(study.metric_names)
    return copy
