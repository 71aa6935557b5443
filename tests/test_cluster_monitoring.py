"""cluster/gpu.yaml's head serves the sweep's metrics, checked offline: its start commands export the RAY_*
hosts that make the dashboard's Metrics view use Prometheus and Grafana, and the very shell commands it runs
start Prometheus (this machine's, when installed) on loopback with Ray's generated scrape config, and Grafana
on loopback with Ray's generated provisioning, our dashboard and a generated admin password (Grafana has no
package here: a recording stand-in takes the place of its binary)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from s3_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
GPU_YAML = REPO / "cluster" / "gpu.yaml"
SESSION_METRICS = "/tmp/ray/session_latest/metrics"


def head() -> tuple[list[str], list[str]]:
    config = yaml.safe_load(GPU_YAML.read_text())
    return config["head_setup_commands"], config["head_start_ray_commands"]


def command_with(start: list[str], word: str) -> str:
    [command] = [c for c in start if word in c]
    return command


def ray_hosts(start: list[str]) -> dict[str, str]:
    ray_start = command_with(start, "ray start --head")
    return dict(re.findall(r"(RAY_(?:PROMETHEUS|GRAFANA|GRAFANA_IFRAME)_HOST)=(\S+?);?(?=\s)", ray_start))


def test_head_installs_pinned_prometheus_and_grafana_checked_against_their_checksums():
    setup, start = head()
    prometheus, grafana = command_with(setup, "prometheus-"), command_with(setup, "grafana-")
    assert re.search(r"PROM=\d+\.\d+\.\d+;", prometheus) and "sha256sum -c" in prometheus
    assert re.search(r"GRAFANA=\d+\.\d+\.\d+;", grafana) and "sha256sum -c" in grafana
    assert not any("launch-prometheus" in c for c in setup + start)  # it downloads whatever is newest


def test_head_start_exports_the_hosts_of_the_dashboard_metrics_view():
    _, start = head()
    hosts = ray_hosts(start)
    assert hosts == {"RAY_PROMETHEUS_HOST": "http://127.0.0.1:9090", "RAY_GRAFANA_HOST": "http://127.0.0.1:3000",
                     "RAY_GRAFANA_IFRAME_HOST": "http://localhost:3000"}  # the browser's end of the forwarded port
    assert "--dashboard-host=127.0.0.1" in command_with(start, "ray start --head")


def _head_command(command: str, tmp_path: Path, ports: dict[int, int]) -> str:
    """The head's command pointed at tmp_path instead of /tmp and /home/ray, on free ports."""
    command = command.replace(SESSION_METRICS, str(tmp_path / "metrics")).replace("/home/ray/", f"{tmp_path}/")
    for service in ("prometheus", "grafana"):  # its log and pid files
        command = command.replace(f"/tmp/{service}.", f"{tmp_path}/{service}.")
    for old, new in ports.items():
        command = re.sub(rf"(127\.0\.0\.1:|HTTP_PORT=){old}\b", rf"\g<1>{new}", command)
    return command


def _ray_metrics_dir(tmp_path: Path) -> Path:
    """What Ray's dashboard writes into <session>/metrics (dashboard/modules/metrics/metrics_head.py)."""
    from ray.dashboard.modules.metrics.templates import GRAFANA_INI_TEMPLATE, PROMETHEUS_YML_TEMPLATE

    metrics = tmp_path / "metrics"
    (metrics / "prometheus").mkdir(parents=True)
    (metrics / "grafana" / "dashboards").mkdir(parents=True)
    sd_file = tmp_path / "prom_metrics_service_discovery.json"
    sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["127.0.0.1:1"]}]))
    (metrics / "prometheus" / "prometheus.yml").write_text(
        PROMETHEUS_YML_TEMPLATE.format(prom_metrics_service_discovery_file_path=sd_file))
    (metrics / "grafana" / "grafana.ini").write_text(
        GRAFANA_INI_TEMPLATE.format(grafana_provisioning_folder=metrics / "grafana" / "provisioning"))
    return metrics


def _stop(pid_file: Path) -> None:
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def test_head_starts_prometheus_on_loopback_with_rays_scrape_config(tmp_path):
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("prometheus not installed (scripts/system_deps.sh: apt-get install prometheus)")
    _, start = head()
    _ray_metrics_dir(tmp_path)
    port = free_port()
    command = _head_command(command_with(start, "prometheus --config.file"), tmp_path, {9090: port})
    assert "127.0.0.1:9090" in command_with(start, "prometheus --config.file")  # what RAY_PROMETHEUS_HOST names
    subprocess.run(["bash", "-c", command.replace("/opt/prometheus/prometheus", exe)], check=True, timeout=60)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status/config", timeout=2) as response:
                    loaded = yaml.safe_load(json.loads(response.read())["data"]["yaml"])
                break
            except OSError:
                assert time.time() < deadline, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.3)
        [job] = loaded["scrape_configs"]
        assert job["job_name"] == "ray"
        assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "prom_metrics_service_discovery.json")]
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]  # loopback only
    finally:
        _stop(tmp_path / "prometheus.pid")  # the pid the head writes is Prometheus's own


def test_head_starts_grafana_on_loopback_with_rays_provisioning_our_dashboard_and_a_generated_password(tmp_path):
    _, start = head()
    metrics = _ray_metrics_dir(tmp_path)
    (tmp_path / "objmae-ray").symlink_to(REPO)  # the checkout file_mounts puts at /home/ray/objmae-ray
    grafana = tmp_path / "opt-grafana"
    (grafana / "bin").mkdir(parents=True)
    record = tmp_path / "grafana-call.json"
    stand_in = grafana / "bin" / "grafana"  # records how it was started, then runs like a server
    stand_in.write_text("#!/usr/bin/env python3\nimport json, os, sys, time\n"
                        f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
                        "time.sleep(600)\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    command = _head_command(command_with(start, "grafana server"), tmp_path, {})
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    for attempt in range(2):  # a restart keeps the password generated the first time
        subprocess.run(["bash", "-c", command.replace("/opt/grafana", str(grafana))], check=True, env=env, timeout=60)
        for _ in range(100):
            if record.exists() and record.stat().st_size:
                break
            time.sleep(0.1)
        call = json.loads(record.read_text())
        _stop(tmp_path / "grafana.pid")
        record.unlink()
        password = (tmp_path / "home" / ".grafana_admin_password").read_text().strip()
        if attempt == 0:
            first = password
    assert password == first and len(password) >= 16 and password != "admin"
    assert stat.S_IMODE((tmp_path / "home" / ".grafana_admin_password").stat().st_mode) == 0o600
    assert call["env"]["GF_SECURITY_ADMIN_PASSWORD"] == password
    assert call["env"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert f"http://127.0.0.1:{call['env']['GF_SERVER_HTTP_PORT']}" == ray_hosts(start)["RAY_GRAFANA_HOST"]
    assert call["argv"] == ["server", "--homepath", str(grafana), "--config", str(metrics / "grafana" / "grafana.ini")]
    shipped = REPO / "cluster" / "grafana" / "objmae-sweep.json"
    assert (metrics / "grafana" / "dashboards" / "objmae-sweep.json").read_text() == shipped.read_text()
