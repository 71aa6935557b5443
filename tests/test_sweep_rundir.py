"""The run directory on local disk and on a real S3-compatible server (moto, loopback): URIs kept intact,
files round-trip, runs are found and read in place, storage problems refused in one line."""
from __future__ import annotations

import json

import pytest

from objmae_ray.errors import ConfigError
from objmae_ray.results.records import records_from_dir
from objmae_ray.sweep import rundir
from s3_helpers import BUCKET, free_port, moto_server


def test_uris_stay_uris():
    assert rundir.join("s3://runs/objmae/", "smoke-1", "/trial_a") == "s3://runs/objmae/smoke-1/trial_a"
    assert rundir.run_name("s3://runs/objmae/smoke-1/") == "smoke-1"
    assert rundir.checkpoint_uri("s3://runs/objmae/smoke-1/trial_a", "runs/objmae/smoke-1/train-a/checkpoint_0") == \
        "s3://runs/objmae/smoke-1/train-a/checkpoint_0"
    assert rundir.checkpoint_uri("/data/runs/smoke-1/trial_a", "/data/runs/smoke-1/train-a/checkpoint_0") == \
        "/data/runs/smoke-1/train-a/checkpoint_0"
    assert rundir.local_dir("/data/runs/smoke-1") == rundir.Path("/data/runs/smoke-1")
    assert str(rundir.local_dir("s3://runs/objmae/smoke-1")).endswith("runs/s3/runs/objmae/smoke-1")


def test_files_round_trip_on_s3(s3_env, tmp_path):
    root = f"s3://{BUCKET}/rt"
    rundir.write_text(f"{root}/a/b.txt", "hello")
    assert rundir.read_text(f"{root}/a/b.txt") == "hello"
    assert rundir.read_text(f"{root}/a/missing.txt") is None
    assert rundir.listdir(root) == [("a", True)] and rundir.listdir(f"{root}/nothing") == []
    assert rundir.is_dir(f"{root}/a") and rundir.exists(f"{root}/a/b.txt") and not rundir.exists(f"{root}/zz")
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "sub" / "w.bin").write_bytes(b"\x00\x01")
    rundir.upload(tmp_path / "up", f"{root}/tree")
    back = rundir.download(f"{root}/tree", tmp_path / "down")
    assert (back / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    rundir.check_storage(root)  # bucket reachable and writable: no error


def test_run_read_in_place_on_s3_equals_local(s3_env, run_dir):
    """The same run, local and uploaded to S3: the same records, runs listed, statuses, checkpoint URIs."""
    uri = f"s3://{BUCKET}/objmae/{run_dir.name}"
    rundir.upload(run_dir, uri)
    local, remote = records_from_dir(run_dir), records_from_dir(uri)
    assert [(r.trial_id, r.params, r.history, r.status) for r in local] == \
        [(r.trial_id, r.params, r.history, r.status) for r in remote]
    assert [r.path for r in remote] == [f"{uri}/trial_{t}" for t in ("a0", "a1", "b0", "b1")]
    assert rundir.run_dirs(f"s3://{BUCKET}/objmae") == [uri]
    assert rundir.load_run_spec(uri).study == "exp"
    assert rundir.latest_run(rundir.load_run_spec(uri), f"s3://{BUCKET}/objmae") == "exp-1"
    state = {"trial_data": [[json.dumps({"trial_id": "a0", "status": "TERMINATED"}), ""]]}
    rundir.write_text(f"{uri}/experiment_state-2026-01-01_00-00-00.json", json.dumps(state))
    assert rundir.trial_statuses(uri) == {"a0": "TERMINATED"}


def test_storage_problems_are_one_line(tmp_path, monkeypatch):
    """Wrong credentials name the bucket; an unreachable endpoint names the endpoint; a missing bucket says so."""
    with moto_server(auth=True) as aws:
        for key, value in aws.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ConfigError) as err:
            rundir.check_storage(f"s3://{BUCKET}/objmae")
        line = str(err.value)
        assert "\n" not in line and f"bucket '{BUCKET}'" in line and "ACCESS_DENIED" in line
        assert "AWS_ACCESS_KEY_ID" in line
    with moto_server() as aws:
        for key, value in aws.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ConfigError, match="^s3://nobucket: bucket not found$"):
            rundir.check_storage("s3://nobucket/objmae")
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    with pytest.raises(ConfigError) as err:
        rundir.check_storage(f"s3://{BUCKET}/objmae")
    assert "\n" not in str(err.value) and f"AWS_ENDPOINT_URL={closed}" in str(err.value)
    rundir.check_storage(str(tmp_path))  # local storage: nothing to check


def test_sweep_refuses_bad_storage_before_ray(tmp_path, monkeypatch, capsys):
    """objmae-sweep --storage s3://... with an unreachable endpoint: one line, exit 2, before any trial."""
    from objmae_ray.cli import sweep_main
    from test_sweep_tuner import tiny_spec

    spec_file = tiny_spec(tmp_path, "s", "sampler: {kind: grid}\nsearch_space:\n  padding: {choices: [zero]}\n")
    closed = f"http://127.0.0.1:{free_port()}"
    for key, value in {"AWS_ENDPOINT_URL": closed, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    assert sweep_main([str(spec_file), "--storage", f"s3://{BUCKET}/objmae", "--name", "never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: s3://{BUCKET}: ") and f"AWS_ENDPOINT_URL={closed}" in err
