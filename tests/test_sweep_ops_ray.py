"""Operating sweeps, end to end on the session's Ray cluster through the `objmae-sweep` console script:
the quiet console, the stored study read back through optuna-dashboard's HTTP API, MLflow runs read back
through the MLflow client, `status`; and the whole S3 chain against moto on loopback (sweep to s3://,
Ctrl-C, --resume, objmae-export s3://, objmae-report s3://)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from safetensors.torch import load_file

from objmae_ray.sweep import rundir
from objmae_ray.sweep.console import EPOCH_LINES_PER_PHASE
from objmae_ray.sweep.space import describe
from objmae_ray.sweep.spec import load_spec
from objmae_ray.sweep.study import without_duplicates
from s3_helpers import BUCKET, free_port, moto_server
from test_sweep_study import _get_json

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "search_spaces" / "smoke.yaml"


def cli(*args: str, env: dict | None = None, timeout: float = 600, module: str = "objmae_ray.cli",
        entry: str = "sweep_main") -> subprocess.CompletedProcess:
    """One console script in a fresh process (as a user runs it)."""
    code = f"import sys; from {module} import {entry}; sys.exit({entry}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def results_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_smoke_sweep_console_study_dashboard_mlflow_status(ray_session, tmp_path, monkeypatch):
    pytest.importorskip("optuna_dashboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store on request
    from mlflow.tracking import MlflowClient

    address = ray_session.get_runtime_context().gcs_address
    mlruns = f"file:{tmp_path / 'mlruns'}"
    done = cli(str(SMOKE), "--address", address, "--name", "ops", "--storage", str(tmp_path / "runs"),
               "--set", "num_samples=2", "--mlflow", mlruns, env={"OBJMAE_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "ops"
    lines = done.stdout.splitlines()
    # the quiet console: one line per trial event, Ray's worker output in the run directory instead
    assert len(lines) < 40, done.stdout
    assert "TrainingReport(" not in done.stdout + done.stderr and "RayTrainWorker" not in done.stdout
    events = [line.split(" ", 3)[3] for line in lines if line[:2].isdigit() and " trial " in line]
    trial_ids = sorted({line.split(" ")[2] for line in lines if line[:2].isdigit() and " trial " in line})
    spec = load_spec(SMOKE)
    pre, fine = spec.base.pretrain.epochs, spec.base.transfer[0].epochs
    per_trial = 2 + min(pre, EPOCH_LINES_PER_PHASE) + min(fine, EPOCH_LINES_PER_PHASE)  # started, epochs, finished
    assert len(trial_ids) == 2 and len(events) == 2 * per_trial, events
    assert sum(e.startswith(f"pretrain epoch {pre}/{pre}: recon_loss ") for e in events) == 2
    assert sum(e.startswith("finished: top1 ") for e in events) == 2
    assert "Reporting training result" in (run / "logs" / "workers.log").read_text()

    # the stored study equals results.csv
    rows = results_csv((run / "results.csv").read_text())
    study = without_duplicates(optuna.load_study(study_name="ops", storage=f"sqlite:///{run / 'optuna.db'}"))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 == [TrialState.COMPLETE] * len(rows)
    by_config = {r["configuration"]: float(r["top1_mean"]) for r in rows}
    assert {describe(dict(sorted(t.params.items()))): t.value for t in study.trials} == by_config

    # optuna-dashboard on that run, read through its HTTP API
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "objmae_ray.cli", "dashboard", str(run), "--port", str(port)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        study_id = int(server.stdout.readline().strip().rsplit("/", 1)[-1])
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    ran = [t for t in detail["trials"]  # not the sampler's repeated proposals (marked, never run)
           if not any(a["key"] == "objmae_duplicate_of" for a in t.get("user_attrs", []))]
    assert len(ran) == len(rows) and detail["objective_names"] == ["top1"]
    shown = [{p["name"]: p["param_external_value"] for p in t["params"]} for t in ran]
    assert {describe({k: float(v) if k == "masking.alpha" else v for k, v in sorted(params.items())}): t["values"][0]
            for params, t in zip(shown, ran)} == by_config

    # MLflow: a parent run, a child per trial with params, per-epoch metrics and status; the best export
    client = MlflowClient(tracking_uri=mlruns)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "ops")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2 and parent.info.status == "FINISHED"
    assert {c.data.tags["objmae.trial_id"] for c in children} == set(trial_ids)
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["objmae.status"] == "done"
        assert child.data.params["model.preset"] == "micro" and "masking.alpha" in child.data.params
        history = client.get_metric_history(child.info.run_id, "recon_loss")
        assert [m.step for m in history] == list(range(1, pre + fine + 1))  # one per epoch report
        top1 = client.get_metric_history(child.info.run_id, "top1")[-1].value
        assert top1 in by_config.values()
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "best_trial")]
    assert "best_trial/encoder.safetensors" in artifacts and "best_trial/config.yaml" in artifacts

    status = cli("status", str(run), timeout=120)
    assert status.returncode == 0 and status.stdout.splitlines()[0] == "ops  study smoke: finished; trials 2/2 finished"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_s3_chain_sweep_interrupt_resume_export_report(ray_session, tmp_path):
    """The README's cluster flow against a real S3-compatible server: nothing read or written locally except
    the export the user asks for."""
    address = ray_session.get_runtime_context().gcs_address
    storage = f"s3://{BUCKET}/objmae"
    run = f"{storage}/chain"
    with moto_server() as aws:
        env = {**aws, "OBJMAE_CACHE": str(tmp_path / "cache")}
        args = [str(SMOKE), "--address", address, "--name", "chain", "--storage", storage,
                "--set", "num_samples=2", "--set", "concurrency=1"]
        code = "import sys; from objmae_ray.cli import sweep_main; sys.exit(sweep_main(sys.argv[1:]))"
        driver = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO), **env})
        seen = []
        deadline = time.time() + 600
        for line in driver.stdout:  # Ctrl-C once the first trial has finished
            seen.append(line)
            if " finished: top1 " in line or time.time() > deadline:
                break
        assert any(" finished: top1 " in line for line in seen), "".join(seen)[-3000:]
        driver.send_signal(signal.SIGINT)
        rest, _ = driver.communicate(timeout=300)
        assert driver.returncode != 0 and "--resume --name chain" in rest, rest[-3000:]
        with pytest.MonkeyPatch.context() as mp:
            for key, value in aws.items():
                mp.setenv(key, value)
            assert rundir.read_driver_state(run)["state"] == "interrupted"
            assert rundir.exists(f"{run}/train-{seen[-1].split(' ')[2]}")  # checkpoints went to the bucket

            resumed = cli(*args, "--resume", env=env)
            assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
            assert f"resuming {run}" in resumed.stdout and f"report: {run}/report/index.html" in resumed.stdout
            rows = results_csv(rundir.read_text(f"{run}/results.csv"))
            assert len(rows) == 2 and all(r["runs"] == "1" for r in rows)
            assert "| 1 done |" in rundir.read_text(f"{run}/results.md")
            assert rundir.read_driver_state(run)["state"] == "finished"
            assert rundir.read_text(f"{run}/report/index.html").count("<h1>ObjMAE sweep: smoke</h1>") == 1

            db = rundir.download(f"{run}/optuna.db", tmp_path / "copy" / "optuna.db")
            trials = optuna.load_study(study_name="chain", storage=f"sqlite:///{db}").trials
            assert not [t for t in trials if t.state == TrialState.RUNNING]
            assert sorted(t.value for t in trials if t.state == TrialState.COMPLETE) == \
                sorted(float(r["top1_mean"]) for r in rows)

            exported = cli(run, "--out", str(tmp_path / "best"), entry="export_main")
            assert exported.returncode == 0, exported.stderr
            meta = json.loads((tmp_path / "best" / "metrics.json").read_text())
            assert meta["checkpoint"].startswith(f"{run}/train-") and meta["metrics"]["top1"] == \
                max(float(r["top1_mean"]) for r in rows)
            assert len(load_file(str(tmp_path / "best" / "encoder.safetensors"))) > 0

            report = cli(run, "--no-figures", entry="report_main")
            assert report.returncode == 0, report.stderr
            assert report.stdout.startswith(f"report written to {run}/report ")

            status = cli("status", storage, env=env, timeout=120)
            assert status.returncode == 0 and status.stdout.splitlines()[0] == \
                "chain  study smoke: finished; trials 2/2 finished", status.stdout + status.stderr


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_status_table_at_an_interval(ray_session, tmp_path, capfd):
    """Tune's classic status table (searched values, objective, report count) every interval, not per event."""
    from ray import tune

    from objmae_ray.sweep.console import status_reporter, tune_console
    from objmae_ray.sweep.spec import load_spec

    def trainable(config):
        for i in range(4):
            time.sleep(1.0)
            tune.report({"top1": 10.0 * i + config["masking.alpha"]})

    spec = load_spec(SMOKE)
    with tune_console():
        tune.Tuner(tune.with_resources(trainable, {"cpu": 0.1}),
                   param_space={"masking.alpha": tune.grid_search([0.25, 0.5]), "masking.padding": "zero",
                                "masking.selection": "mae"},
                   run_config=tune.RunConfig(storage_path=str(tmp_path), name="table", verbose=1,
                                             progress_reporter=status_reporter(spec, interval_s=1.5))).fit()
    out = capfd.readouterr().out
    tables = out.count("== Status ==")
    assert 1 <= tables <= 8, out  # about one per 1.5 s of a run of a few seconds, none for the start or the end
    assert re.search(r"\|\s+alpha \| padding\s+\| selection\s+\|\s+top1 \|\s+reports \|", out), out
    assert "started with configuration" not in out  # the new output engine's per-trial tables are off
