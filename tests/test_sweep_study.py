"""The Optuna study in a database (sweep/study.py, sweep/search.py), without Ray running: a searcher restored
after a dead driver fails the trials nobody continues and the grid still covers every point; multi-objective
studies keep both directions and their Pareto front, which optuna-dashboard serves; bad storage URLs and
runs without a study are refused in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search.search_generator import SearchGenerator

from objmae_ray.cli import sweep_main
from objmae_ray.errors import ConfigError
from objmae_ray.sweep.rundir import STUDY_FILE, save_spec
from objmae_ray.sweep.search import build_search
from objmae_ray.sweep.spec import load_spec
from objmae_ray.sweep.study import ORPHAN_ATTR, name_objectives, open_storage, study_for_reading
from s3_helpers import free_port
from test_sweep_tuner import tiny_spec

REPO = Path(__file__).resolve().parents[1]


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def test_restore_after_dead_driver_fails_orphans_and_grid_stays_covered(tmp_path):
    """Tune's checkpoint knew trials t1 (finished) and t2 (running); t3 was asked after it, then the driver died.
    On restore t2 stays RUNNING (Tune continues it), t3 is failed (marked), and the next ask runs t3's point."""
    spec = load_spec(tiny_spec(tmp_path, "grid", "sampler: {kind: grid}\nconcurrency: 3\nsearch_space:\n"
                                                 "  padding: {choices: [zero, replicate, random]}\n"))
    url = sqlite(tmp_path / STUDY_FILE)
    searcher = build_search(spec, open_storage(url), study_name="run-1")
    points = {tid: searcher.suggest(tid)["masking.padding"] for tid in ("t1", "t2")}
    searcher.on_trial_complete("t1", {"top1": 50.0})
    SearchGenerator(searcher).save_to_dir(str(tmp_path), session_str="s")  # Tune's experiment checkpoint
    points["t3"] = searcher.suggest("t3")["masking.padding"]  # asked after it: lost with the driver
    assert sorted(points.values()) == ["random", "replicate", "zero"]

    restored = build_search(spec, open_storage(url), study_name="run-1")
    SearchGenerator(restored).restore_from_dir(str(tmp_path))  # what Tuner.restore does
    study = optuna.load_study(study_name="run-1", storage=url)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL]
    assert ORPHAN_ATTR in study.trials[2].user_attrs and ORPHAN_ATTR not in study.trials[1].user_attrs
    assert restored.suggest("t4")["masking.padding"] == points["t3"]  # the orphan's point is run, not t2's again
    restored.on_trial_complete("t2", {"top1": 60.0})
    restored.on_trial_complete("t4", {"top1": 40.0})
    study = optuna.load_study(study_name="run-1", storage=url)
    done = {t.params["masking.padding"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert done == {"zero", "replicate", "random"} and not study.get_trials(states=(TrialState.RUNNING,))
    assert study.best_value == 60.0 and study.best_params["masking.padding"] == points["t2"]


def test_multi_objective_study_keeps_its_pareto_front_on_the_dashboard(tmp_path, capsys):
    """Two objectives through the searcher into SQLite; `objmae-sweep dashboard` serves the study on loopback and
    its API returns both directions, the metric names and the non-dominated trials as best_trials."""
    pytest.importorskip("optuna_dashboard")
    spec_file = tiny_spec(tmp_path, "mo", "sampler: {kind: list}\nconcurrency: 4\nconfigurations:\n"
                                         "  - {alpha: 0.125}\n  - {alpha: 0.25}\n  - {alpha: 0.375}\n  - {alpha: 0.5}\n",
                          objectives="  - {metric: top1, mode: max}\n  - {metric: speedup_est, mode: max}\n")
    spec = load_spec(spec_file)
    run = tmp_path / "runs" / "mo-1"
    save_spec(spec, str(run))
    storage = open_storage(sqlite(run / STUDY_FILE))
    searcher = build_search(spec, storage, study_name="mo-1")
    name_objectives(storage, "mo-1", ["top1", "speedup_est"])
    results = {"a": (50.0, 2.0), "b": (60.0, 1.5), "c": (40.0, 1.0), "d": (55.0, 2.5)}  # front: b, d
    for tid, (top1, speedup) in results.items():
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {"top1": top1, "speedup_est": speedup})
    study = study_for_reading(str(run))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert sorted(tuple(t.values) for t in study.best_trials) == [(55.0, 2.5), (60.0, 1.5)]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "objmae_ray.cli", "dashboard", str(run), "--port", str(port)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        first = server.stdout.readline()
        assert first.startswith(f"optuna-dashboard: http://127.0.0.1:{port}/dashboard/studies/")
        study_id = int(first.strip().rsplit("/", 1)[-1])
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}")
        assert detail["name"] == "mo-1" and detail["directions"] == ["maximize", "maximize"]
        assert detail["objective_names"] == ["top1", "speedup_est"] and len(detail["trials"]) == 4
        assert sorted(tuple(t["values"]) for t in detail["best_trials"]) == [(55.0, 2.5), (60.0, 1.5)]
    finally:
        server.terminate()
        server.wait(timeout=10)


def _get_json(url: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_bad_study_storage_is_refused_in_one_line(tmp_path, capsys):
    """An unreachable database (password hidden), an unopenable SQLite path: one line, nothing started."""
    pytest.importorskip("pymysql")
    closed = free_port()
    url = f"mysql+pymysql://user:secret@127.0.0.1:{closed}/optuna"
    with pytest.raises(ConfigError) as err:
        open_storage(url)
    assert str(err.value).startswith(f"optuna_storage mysql+pymysql://user:***@127.0.0.1:{closed}/optuna: cannot "
                                     "open the study database") and "secret" not in str(err.value)
    assert "Connection refused" in str(err.value) and "\n" not in str(err.value)

    spec_file = tiny_spec(tmp_path, "bad", "sampler: {kind: grid}\nsearch_space:\n  padding: {choices: [zero]}\n")
    (tmp_path / "a-file").write_text("")
    for bad in (url, sqlite(tmp_path / "a-file" / STUDY_FILE)):
        assert sweep_main([str(spec_file), "--optuna-storage", bad, "--name", "never"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: optuna_storage ") and "Traceback" not in err
    assert not (tmp_path / "runs" / "never").exists()  # refused before the run directory or Ray


def test_dashboard_on_a_run_without_study_says_so(run_dir, capsys):
    """A run made before studies were stored: one line, the run untouched."""
    before = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    assert sweep_main(["dashboard", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run_dir}: no Optuna study database (the run was made before studies were stored); " \
                  "nothing was changed\n"
    assert sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before


def test_report_reads_the_study_without_the_repeated_proposals(tmp_path):
    """A proposal that repeated an earlier trial (told its value, marked objmae_duplicate_of) is left out of the
    study the report reads, so importance and parallel coordinates count each configuration once."""
    from objmae_ray.sweep.study import without_duplicates

    study = optuna.create_study(directions=["maximize"])
    study.add_trial(optuna.trial.create_trial(params={"a": 1}, distributions={
        "a": optuna.distributions.IntDistribution(0, 3)}, value=5.0))
    study.add_trial(optuna.trial.create_trial(params={"a": 1}, distributions={
        "a": optuna.distributions.IntDistribution(0, 3)}, value=5.0, user_attrs={"objmae_duplicate_of": 0}))
    assert len(study.trials) == 2 and len(without_duplicates(study).trials) == 1
    assert without_duplicates(without_duplicates(study)).trials[0].value == 5.0
