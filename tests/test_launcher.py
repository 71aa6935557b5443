"""The cluster flow end to end: an autoscaling cluster that starts a worker node for the smoke sweep, and
scripts/check_cluster.sh (sshd + `ray up` + `ray job submit` + export + `ray down`).

Both end EVERY Ray process on the machine (`AutoscalingCluster.shutdown()` runs `ray stop --force`; `ray up`
and `ray down` run `ray stop`), so they are marked `launcher` and run in their own pytest call after the
main suite (scripts/test.sh), never beside the session cluster of tests/conftest.py; while developing, run
them under `flock /tmp/objmae-ray.lock`. They never use the `ray_cluster` fixture.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from objmae_ray.results.records import records_from_dir

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
VENV_BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.launcher, pytest.mark.slow]


def fake_cluster_config(head_resources: dict, worker_node_types: dict) -> dict:
    """A complete autoscaling config for Ray's fake multi-node provider (workers are extra raylets on this
    machine, started and stopped by the autoscaler), in place of the fake_multi_node/example.yaml that
    AutoscalingCluster opens and the 2.60 wheel lacks."""
    return {
        "cluster_name": "objmae-autoscaling-test",
        "max_workers": sum(t["max_workers"] for t in worker_node_types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
            **worker_node_types,
        },
    }


@pytest.fixture
def ray_on_path(monkeypatch):
    """`ray` (AutoscalingCluster, the scripts) resolves to this interpreter's environment."""
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.timeout(900)
def test_smoke_sweep_scales_a_worker_node_up_and_finishes(ray_on_path, tmp_path, monkeypatch):
    """A head with 0 CPUs and one worker type (2 CPUs, 0..1 nodes), like a fresh cluster/gpu.yaml: the sweep
    finds the autoscaler's node types, is not refused, says it waits for nodes, the autoscaler starts the
    worker node and the smoke sweep (2 trials) finishes there."""
    from ray.cluster_utils import AutoscalingCluster

    class Cluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kwargs):
            return {**fake_cluster_config(head_resources, worker_node_types), **kwargs}

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cluster = Cluster(head_resources={"CPU": 0},
                      worker_node_types={"cpu2": {"resources": {"CPU": 2}, "node_config": {},
                                                  "min_workers": 0, "max_workers": 1}})
    cluster.start(override_env=env)
    try:
        log = tmp_path / "sweep.log"
        with open(log, "w") as out:
            rc = subprocess.run([sys.executable, "-m", "objmae_ray.cli", str(SMOKE), "--address", "auto",
                                 "--name", "scaled", "--set", f"storage={tmp_path / 'runs'}",
                                 "--set", "num_samples=2"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                timeout=780).returncode
        text = log.read_text()
        nodes = _alive_nodes(env)
    finally:
        cluster.shutdown()
    assert rc == 0, text[-4000:]
    assert ("waiting for nodes: a trial needs 1 x 0.5 CPU; the live nodes hold 0; "
            "the autoscaler can start cpu2 (up to 1)") in text.splitlines()
    records = records_from_dir(tmp_path / "runs" / "scaled")
    assert len(records) == 2 and all(r.status == "done" for r in records)
    assert sorted(n["CPU"] for n in nodes) == [0, 2]  # the head and the node the autoscaler started


def _alive_nodes(env: dict) -> list[dict]:
    """Resources of the cluster's alive nodes, read by a separate driver (this process never joins Ray)."""
    code = ("import json, ray; ray.init(address='auto', logging_level='ERROR');"
            "print(json.dumps([{'CPU': n['Resources'].get('CPU', 0)} for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_check_cluster_script_runs_the_readme_flow(ray_on_path, tmp_path):
    """scripts/check_cluster.sh end to end (about 3-5 min on 2 cores): `ray up` over a real sshd on
    loopback, token-refused and token-accepted job submission, the smoke sweep as a job, export, `ray down`,
    and no Ray left answering. Skips where it cannot install sshd/rsync (exit 3)."""
    started = time.time()
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_cluster.sh")], capture_output=True, text=True,
                            cwd=REPO, timeout=840, env={**os.environ, "OBJMAE_VENV": str(VENV_BIN.parent)})
    if result.returncode == 3:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    steps = [line for line in result.stdout.splitlines() if line.startswith("check_cluster: ")]
    assert steps[-1] == "check_cluster: OK", steps
    for step in ("ray up", "worker raylet joined", "job without the token refused", "sweep job succeeded"):
        assert f"check_cluster: {step}" in steps
    print(f"check_cluster.sh: {time.time() - started:.0f} s")
