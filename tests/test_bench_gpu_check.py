"""bench/gpu_check.sh cannot rot: its `--cpu` mode runs every step (CUDA-marked tests, Table 4 benchmark, data
benchmark, a one-trial sweep on a packed synthetic set) and writes one JSON file; a failing step fails it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OBJMAE_PYTHON": sys.executable})


def test_a_failing_step_fails_the_script(tmp_path):
    proc = run_script("--cpu", "--steps", "nosuch", "--out", str(tmp_path / "out.json"), timeout=120)
    assert proc.returncode == 1
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["failed"] == ["nosuch"] and result["nosuch"]["error"] == "unknown step 'nosuch'"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_cpu_mode_runs_every_step(ray_session, tmp_path):
    address = ray_session.get_runtime_context().gcs_address  # the session's cluster: never two Rays at once
    out = tmp_path / "gpu_check.json"
    proc = run_script("--cpu", "--out", str(out), "--address", address, timeout=1100)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "cpu" and result["failed"] == []
    counts = result["tests"]["counts"]
    assert counts["tests"] >= 4 and counts["failures"] == counts["errors"] == counts["skipped"] == 0
    assert [row["alpha"] for row in result["speedup"]["result"]["alphas"]] == [0.5, 0.25, 0.125, 0.0625]
    data = result["data"]["result"]
    assert data["augment"]["ms_per_batch"] > 0 and data["synthetic"]["agreement"]["patch_labels_agree"] == 1.0
    [trial] = result["sweep"]["trials"]
    assert trial["status"] == "done" and trial["speedup_measured"] > 0 and 0 <= trial["data_wait_frac"] <= 1
    table = result["sweep"]["results_md"]  # the same results table as a sweep on the JPEG path, measured speed-up
    assert "| Speed Up |" in table and "| Data Wait % |" in table and "speed-up = measured step-time ratio" in table
