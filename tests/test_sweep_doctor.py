"""`objmae-sweep doctor` on this (CPU) machine, as a node's setup runs it (a subprocess; objmae_ray/sweep/doctor.py):
every check reports, a CPU node says "no CUDA" cleanly, and each failing check (GPUs declared but not seen,
/dev/shm too small, a dataset missing, storage not writable) exits non-zero with one line naming the node
and the fix."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from objmae_ray.config import TrialConfig
from objmae_ray.sweep.doctor import STORAGE_MARKER, shm_needed, storage_checks, write_marker

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU report (a GPU node reports CUDA)")


def doctor(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", "import sys; from objmae_ray.cli import sweep_main; "
                           "sys.exit(sweep_main(['doctor', *sys.argv[1:]]))", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def trial_file(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "trial.yaml"
    path.write_text(f"""\
name: doc
model: {{preset: micro, img_size: 32, patch_size: 8}}
pretrain: {{epochs: 1, warmup_epochs: 0, batch_size: 8, data: {{kind: folder, root: "{root}", loader_workers: 2}}}}
transfer: []
""")
    return path


def test_a_cpu_node_passes_and_reports_every_check(tmp_path):
    (tmp_path / "photos").mkdir()
    result = doctor("--trial", str(trial_file(tmp_path, tmp_path / "photos")), "--storage", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"objmae-sweep doctor on {socket.gethostname()} (")
    assert [line.split(":")[0] for line in lines[1:]] == ["ok    cuda", "ok    precision", "ok    shm", "ok    data",
                                                          "ok    storage"]
    assert lines[1].startswith(f"ok    cuda: no CUDA (torch {torch.__version__} built for CUDA ")
    assert lines[1].endswith("): CPU only")
    assert lines[2] == "ok    precision: auto -> fp32 (CPU)"
    need = 2 * 2 * 2 * 8 * 3 * 32 * 32 * 4  # margin x prefetch x loader workers x batch x image bytes
    assert shm_needed(TrialConfig.model_validate({"model": {"img_size": 32, "patch_size": 8}, "transfer": [],
                                                  "pretrain": {"batch_size": 8, "data": {"loader_workers": 2}}})) == need
    assert f"the loader workers need {need / 2**30:.2f} GiB" in lines[3]
    assert lines[5] == f"ok    storage: {tmp_path / 'runs'} reachable and writable"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == []  # the write probe is removed


def test_each_failing_check_is_one_line_with_the_node_and_the_fix(tmp_path):
    """--expect-gpus 1 on a CPU machine names both counts; a /dev/shm requirement above what is free names
    both sizes; a missing dataset names the field and path; a storage under a file cannot be written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = doctor("--trial", str(trial_file(tmp_path, tmp_path / "no-photos")), "--expect-gpus", "1",
                    "--min-shm-gb", "1000000", "--storage", str(blocker / "runs"))
    assert result.returncode == 1
    failed = result.stderr.splitlines()
    assert len(failed) == 4, result.stdout + result.stderr
    node = result.stdout.splitlines()[0].removeprefix("objmae-sweep doctor on ")
    assert all(line.startswith(f"FAIL  {node}: ") and "; fix: " in line for line in failed)
    gpus, shm, data, storage = failed
    assert "gpus: the node declares 1 GPU(s) but torch sees 0 (" in gpus
    assert "shm: /dev/shm has " in shm and "GiB free, the loader workers need 1000000.00 GiB" in shm
    assert f"data: pretrain.data.root: {tmp_path / 'no-photos'} not found; fix: sync the data" in data
    assert f"storage: cannot write to {blocker / 'runs'} (" in storage and "s3://" in storage


def test_bad_trial_file_is_one_error_line(tmp_path):
    result = doctor("--trial", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: cannot read (No such file or directory)"


def test_storage_marker_reads_back_only_where_the_driver_wrote_it(tmp_path, monkeypatch):
    """The driver's token is found on the same disk; a node that sees the path on its own disk
    (OBJMAE_NODE_ROOT) can write there but has no marker: not the driver's storage."""
    storage = tmp_path / "runs"
    token = write_marker(str(storage))
    assert (storage / STORAGE_MARKER).read_text().startswith(token)
    [same] = storage_checks(str(storage), token)
    assert same.ok and "the driver's storage (written by the sweep driver on " in same.detail
    [stale] = storage_checks(str(storage), "0" * 16)
    assert not stale.ok
    monkeypatch.setenv("OBJMAE_NODE_ROOT", str(tmp_path / "own-disk"))
    [other] = storage_checks(str(storage), token)
    assert not other.ok and other.detail.startswith(f"cannot read the marker the sweep driver wrote at "
                                                    f"{storage / STORAGE_MARKER}")


def test_the_declared_gpus_come_from_ray_up(monkeypatch):
    """In a node's `worker_start_ray_commands`, `ray up` sets RAY_OVERRIDE_RESOURCES to the node type's
    resources: a type declaring 8 GPUs on a machine with none fails before `ray start`."""
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"CPU": 96, "GPU": 8}')
    result = doctor()
    assert result.returncode == 1
    assert "gpus: the node declares 8 GPU(s) but torch sees 0" in result.stderr


@pytest.mark.skipif(not torch.version.cuda, reason="needs a CUDA build of torch")
def test_a_driver_older_than_the_torch_build_names_both_versions(tmp_path, monkeypatch):
    """A node whose nvidia-smi reports a CUDA 12.2 driver (535) under this CUDA 13 torch build: one line naming
    torch's CUDA version and the driver's, and the driver the build needs."""
    if int(torch.version.cuda.split(".")[0]) <= 12:
        pytest.skip(f"torch is built for CUDA {torch.version.cuda}, which a 12.2 driver runs")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    result = doctor("--expect-gpus", "1")
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if ": cuda: " in line]
    assert f"cuda: the driver is too old for torch: torch {torch.__version__} built for CUDA {torch.version.cuda}, " \
           f"driver 535.104.05 (supports CUDA 12.2); fix: use an image whose driver is >= " in line
