"""`objmae-sweep status` (results/status.py), without Ray: state from the driver's heartbeat and Tune's
experiment state, trials finished / planned, the best configuration so far, the report; local and S3."""
from __future__ import annotations

import datetime
import json

from objmae_ray.cli import sweep_main
from objmae_ray.results.page import write_report
from objmae_ray.results.status import run_status, status_lines
from objmae_ray.sweep import rundir
from s3_helpers import BUCKET


def tune_state(run: str, statuses: dict[str, str]) -> None:
    """An experiment_state file as Tune writes it (only what status reads)."""
    data = {"trial_data": [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in statuses.items()]}
    rundir.write_text(f"{run}/experiment_state-2026-11-27_10-00-00.json", json.dumps(data))


def driver(run: str, state: str, age_s: float) -> None:
    rundir.write_driver_state(run, state, heartbeat_s=30)
    data = json.loads(rundir.read_text(f"{run}/driver.json"))
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age_s)
    data["updated"] = then.isoformat(timespec="seconds")
    rundir.write_text(f"{run}/driver.json", json.dumps(data))


def test_states_trials_and_best_so_far(run_dir):
    """The fixture plans 3 configurations x 2 repeats = 6 trials; 4 are done (a: 60, 70 -> mean 65; b: 65, 61)."""
    run = str(run_dir)
    tune_state(run, {"a0": "TERMINATED", "a1": "TERMINATED", "b0": "TERMINATED", "b1": "RUNNING", "c0": "PENDING"})
    driver(run, "running", age_s=5)
    status = run_status(run)
    assert status.state.startswith("running (driver on ") and (status.finished, status.total) == (3, 6)
    assert status.best == "top1 65 ± 7.071 (2 run(s)): alpha=0.25" and status.report is None
    driver(run, "running", age_s=400)  # heartbeat every 30 s: silent for 400 s means the driver died
    assert run_status(run).state.startswith("interrupted (driver on ")
    driver(run, "interrupted", age_s=1)
    assert run_status(run).state == "interrupted"
    tune_state(run, {t: "TERMINATED" for t in ("a0", "a1", "b0", "b1", "c0")} | {"c1": "ERROR"})
    driver(run, "finished", age_s=1)
    write_report(run_dir, with_figures=False)
    status = run_status(run)
    assert (status.state, status.finished, status.failed) == ("finished", 6, 1)
    assert status.report == f"{run}/report/index.html"


def test_status_lists_runs_of_a_storage_local_and_s3(s3_env, run_dir, capsys):
    tune_state(str(run_dir), {"a0": "TERMINATED"})
    assert sweep_main(["status", str(run_dir.parent)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["exp-1  study exp: interrupted (or running without a heartbeat); trials 1/6 finished",
                   "  best so far: top1 65 ± 7.071 (2 run(s)): alpha=0.25",
                   f"  report: none yet (objmae-report {run_dir})", f"  path: {run_dir}"]
    uri = f"s3://{BUCKET}/status/exp-1"
    rundir.upload(run_dir, uri)
    rundir.write_text(f"s3://{BUCKET}/status/not-a-run/x.txt", "")
    assert status_lines(f"s3://{BUCKET}/status") == [line.replace(str(run_dir), uri) for line in out]
    assert sweep_main(["status", uri]) == 0 and capsys.readouterr().out.splitlines()[0] == out[0]
    assert status_lines(f"s3://{BUCKET}/empty") == [f"s3://{BUCKET}/empty: no objmae-sweep runs here"]
