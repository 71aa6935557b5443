"""Trial metrics in a real Prometheus: Debian's `prometheus` (scripts/system_deps.sh installs it in CI) on
127.0.0.1, scraping with the config Ray writes for the session, while a two-trial smoke sweep runs on the
session's cluster. Every trial's loss and images/s series are found (the loss equal to the console's), and
every PromQL expression of the shipped Grafana dashboard (cluster/grafana/objmae-sweep.json) returns data.
Without Ray: what one report exports (NaN as is), and the local run's monitoring line and the command it prints."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from objmae_ray.sweep.monitor import scrape_config
from s3_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "cluster" / "grafana" / "objmae-sweep.json"
SMOKE = REPO / "search_spaces" / "smoke.yaml"
SCRAPE_S = 2


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the shipped dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def prometheus(ray_session, tmp_path_factory):
    """Prometheus on a free loopback port with Ray's generated scrape config of this session (its
    scrape interval shortened to SCRAPE_S for the test); yields its base URL."""
    exe = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if not exe:
        pytest.skip("prometheus not installed (scripts/system_deps.sh: apt-get install prometheus)")
    from ray._private.worker import _global_node

    generated = Path(scrape_config(_global_node.get_session_dir_path()))
    deadline = time.time() + 60
    while not generated.is_file() and time.time() < deadline:  # the dashboard writes it once it is up
        time.sleep(0.5)
    config = yaml.safe_load(generated.read_text())
    sd_file = config["scrape_configs"][0]["file_sd_configs"][0]["files"][0]
    assert Path(sd_file).is_file(), f"Ray's service discovery file {sd_file} is missing"
    config["global"]["scrape_interval"] = f"{SCRAPE_S}s"
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([exe, f"--config.file={work / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={work / 'data'}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (work / "prometheus.log").read_text()
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, expr: str) -> list[dict]:
    body = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def query_range(url: str, expr: str, start: float, end: float) -> list[dict]:
    """What Grafana asks for: the expression over the run, one point per scrape interval."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{SCRAPE_S}s"}
    body = _get(f"{url}/api/v1/query_range?" + urllib.parse.urlencode(params))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_trial_metrics_in_prometheus_and_every_dashboard_query(ray_session, prometheus, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    name = "metrics"
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "objmae_ray.cli", str(SMOKE), "--address", address, "--name", name,
         "--storage", str(tmp_path / "runs"), "--set", "num_samples=2", "--set", "transfer.0.epochs=3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OBJMAE_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    time.sleep(2 * SCRAPE_S)
    end = time.time()
    # the console's trials and their last pre-train loss (4 significant digits)
    losses = {m.group(1): float(m.group(2)) for m in
              re.finditer(r"trial (\S+) pretrain epoch 2/2: recon_loss (\S+)", done.stdout)}
    assert len(losses) == 2, done.stdout
    window = f"[{int(end - start) + 60}s]"

    # every trial's loss and images/s series, the loss equal to what the trial reported
    loss = query(prometheus, f'last_over_time(ray_objmae_recon_loss{{study="{name}", phase="pretrain"}}{window})')
    assert {r["metric"]["trial_id"]: pytest.approx(float(r["value"][1]), rel=1e-3) for r in loss} == losses
    for series in loss:
        labels = series["metric"]
        assert labels["selection"] in ("object", "inter", "mae") and labels["patch_size"] == "8"
        assert labels["searched"].startswith("alpha=") and f"padding={labels['padding']}" in labels["searched"]
    rates = query(prometheus, f'last_over_time(ray_objmae_images_per_s{{study="{name}"}}{window})')
    assert {(r["metric"]["trial_id"], r["metric"]["phase"]) for r in rates} == \
        {(t, p) for t in losses for p in ("pretrain", "finetune")}
    assert all(float(r["value"][1]) > 0 for r in rates)
    # the sweep's own series: trials per state (both running at once) and the best objective so far
    running = query(prometheus, f'max_over_time(ray_objmae_trials{{study="{name}", state="RUNNING"}}{window})')
    assert [float(r["value"][1]) for r in running] == [2.0]  # concurrency 2: both trials ran at once
    best = query(prometheus, f'max_over_time(ray_objmae_best{{study="{name}", metric="top1"}}{window})')
    top1 = [float(v) for v in re.findall(r"trial \S+ finished: top1 (\S+)", done.stdout)]
    assert [float(r["value"][1]) for r in best] == [pytest.approx(max(top1), rel=1e-3)]

    # every panel query of the shipped dashboard, its template variables filled in, returns data
    gpu_run = bool(query(prometheus, "ray_node_gpus_available"))
    for title, expr in dashboard_exprs():
        concrete = expr.replace("$study", name).replace("$trial", ".*")
        if not gpu_run and "gpu_memory" in concrete:  # exported on CUDA devices only: valid, and empty on CPU
            assert query_range(prometheus, concrete, start, end) == [], title
            continue
        if not gpu_run:  # no GPU here: Ray's node CPU series stands in for its GPU series, testing the join
            concrete = concrete.replace("ray_node_gpus_utilization", "ray_node_cpu_utilization")
        result = query_range(prometheus, concrete, start, end)
        assert result and all(series["values"] for series in result), f"{title}: no data for {concrete}"
        if "group_left" in concrete:  # one series per trial, on the node that ran it
            assert {series["metric"]["trial_id"] for series in result} == set(losses), title


# ---- without Ray: what a report exports, and the local run's monitoring line ----------------------------
def test_a_report_becomes_tagged_gauges_nan_exported_as_is_no_gpu_series_on_cpu():
    import torch

    from objmae_ray.config import TrialConfig
    from objmae_ray.train.metrics import GAUGES, TAG_KEYS, TrialMetrics

    cfg = TrialConfig.model_validate({"model": {"preset": "micro", "img_size": 32, "patch_size": 8},
                                      "masking": {"alpha": 0.25, "selection": "inter", "padding": "random"}})
    metrics = TrialMetrics({"study": "s", "trial_id": "t1", "searched": "alpha=0.25, padding=random"}, cfg,
                           torch.device("cpu"))
    assert metrics.tags == {"study": "s", "trial_id": "t1", "phase": "", "alpha": "0.25", "padding": "random",
                            "patch_size": "8", "selection": "inter", "searched": "alpha=0.25, padding=random"}
    assert set(metrics.tags) == set(TAG_KEYS) and not any("gpu" in name for name in metrics.gauges)
    report = {"phase": "pretrain", "epoch": 2, "recon_loss": float("nan"), "train_loss": 1.5, "top1": 0.0,
              "lr": 1e-3, "images_per_s": 250.0, "speedup_measured": 2.5, "data_wait_frac": 0.25, "epoch_time_s": 4.0}
    values = metrics.values(report, epochs=4)
    assert {k: v for k, v in values.items() if k != "objmae_recon_loss"} == {
        "objmae_epoch": 3.0, "objmae_phase_progress": 0.75, "objmae_train_loss": 1.5, "objmae_top1": 0.0,
        "objmae_lr": 1e-3, "objmae_images_per_s": 250.0, "objmae_speedup_measured": 2.5, "objmae_data_wait_frac": 0.25}
    assert values["objmae_recon_loss"] != values["objmae_recon_loss"]  # NaN, as reported
    assert set(values) <= set(GAUGES)
    metrics.record(report, epochs=4)  # a NaN gauge value is accepted, not dropped or raised on


def test_local_monitoring_line_starts_prometheus_or_says_what_is_off(tmp_path, monkeypatch):
    from ray.dashboard.modules.metrics.templates import PROMETHEUS_YML_TEMPLATE

    from objmae_ray.sweep import monitor

    session = tmp_path / "session"
    (session / "metrics" / "prometheus").mkdir(parents=True)
    (session / "prom_metrics_service_discovery.json").write_text("[]")
    Path(monitor.scrape_config(str(session))).write_text(PROMETHEUS_YML_TEMPLATE.format(
        prom_metrics_service_discovery_file_path=session / "prom_metrics_service_discovery.json"))
    monkeypatch.setattr(monitor.shutil, "which", lambda name: None)
    off = monitor.monitoring_line(str(session))
    assert off.startswith("monitoring: off (Prometheus is not installed") and "\n" not in off
    monkeypatch.undo()
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("prometheus not installed (scripts/system_deps.sh: apt-get install prometheus)")
    with socket.socket() as taken:  # the default port in use: another port, said so
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(monitor, "PROMETHEUS_PORT", taken.getsockname()[1])
        line = monitor.monitoring_line(str(session))
    assert line.startswith(f"monitoring (port {monitor.PROMETHEUS_PORT} is in use): prometheus --config.file=")
    command, url = line.split(": ", 1)[1].split("  then ")
    port = int(re.search(r"127\.0\.0\.1:(\d+)", command).group(1))
    assert url == f"http://127.0.0.1:{port}/graph" and port != monitor.PROMETHEUS_PORT
    argv = command.replace("/tmp/objmae-prometheus", str(tmp_path / "data")).split()  # the printed command runs
    proc = subprocess.Popen([exe, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                config = _get(f"http://127.0.0.1:{port}/api/v1/status/config")["data"]["yaml"]
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline
                time.sleep(0.3)
        assert str(session / "prom_metrics_service_discovery.json") in config
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sweep_metrics_keep_the_best_by_mode_and_pickle_without_their_gauges():
    import pickle
    from types import SimpleNamespace

    from objmae_ray.config import SweepSpec
    from objmae_ray.sweep.monitor import SweepMetrics
    from objmae_ray.sweep.spec import load_spec

    spec = load_spec(SMOKE)
    spec = SweepSpec.model_validate({**spec.model_dump(), "objectives": [{"metric": "top1", "mode": "max"},
                                                                          {"metric": "recon_loss", "mode": "min"}]})
    callback = SweepMetrics(spec, "s")
    callback.on_step_end(iteration=1, trials=[SimpleNamespace(status="RUNNING"), SimpleNamespace(status="RUNNING"),
                                              SimpleNamespace(status="PENDING")])
    assert callback._counts == {"PENDING": 1, "RUNNING": 2, "PAUSED": 0, "TERMINATED": 0, "ERROR": 0}
    for result in ({"top1": 40.0, "recon_loss": 0.9}, {"top1": 30.0, "recon_loss": 0.7},
                   {"top1": float("nan"), "recon_loss": 0.8}, {"phase": "pretrain"}):
        callback.on_trial_result(iteration=2, trials=[], trial=None, result=result)
    assert callback.best == {"top1": 40.0, "recon_loss": 0.7}
    restored = pickle.loads(pickle.dumps(callback))  # Tune saves its callbacks in tuner.pkl
    assert restored.best == callback.best and restored._gauges is None and restored._counts is None
    # an objective naming a transfer phase keeps the best of that phase's report key, not the plain metric
    phased = SweepMetrics(SweepSpec.model_validate({**spec.model_dump(), "objectives": [
        {"metric": "top1", "mode": "max", "phase": 0}]}), "s")
    phased.on_trial_result(iteration=1, trials=[], trial=None, result={"top1": 90.0, "transfer0_top1": 50.0})
    assert phased.best == {"transfer0_top1": 50.0}
