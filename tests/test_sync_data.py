"""scripts/sync_data.sh: the copy of a dataset to a node's local disk that cluster/gpu.yaml runs on every
GPU worker, from a directory (rsync) or from S3 (`aws s3 sync`, here against moto on 127.0.0.1)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3_helpers import BUCKET, moto_server

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sync_data.sh"
VENV_BIN = Path(sys.executable).parent
# a COCO-like tree: nested folders, binary and text files
TREE = {"train2017/000001.jpg": bytes(range(256)) * 4, "train2017/000002.jpg": b"\xff\xd8" + b"\x00" * 999,
        "annotations/instances_train2017.json": b'{"images": [], "annotations": []}'}


def sync(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mark_unchanged_copy(path: Path) -> bytes:
    """Overwrite a synced file with other bytes of the same size and time: a sync that copies it again
    (instead of only what changed at the source) puts the source's bytes back."""
    stat = path.stat()
    marked = bytes(b ^ 0xFF for b in path.read_bytes())
    path.write_bytes(marked)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return marked


@pytest.fixture
def home_env(tmp_path) -> dict[str, str]:
    """The environment with a fresh HOME (the script must not write the user's AWS config) and this
    venv's bin first on PATH (its `aws`, from the test extra)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def test_directory_source_is_copied_and_resynced_incrementally(tmp_path, home_env):
    if shutil.which("rsync") is None:
        pytest.skip("rsync not installed (scripts/system_deps.sh installs it as root)")
    src, dest = tmp_path / "src", tmp_path / "dest"
    for name, data in TREE.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    first = sync(home_env, src, dest)
    assert first.returncode == 0, first.stderr
    assert tree(dest) == TREE
    assert re.fullmatch(rf"synced {re.escape(str(src))} -> {re.escape(str(dest))}: \S+ in \d+ s\n", first.stdout)

    # a node that restarts copies what changed and keeps the rest
    kept = mark_unchanged_copy(dest / "train2017/000001.jpg")
    (src / "train2017/000002.jpg").write_bytes(b"changed")
    (src / "val2017").mkdir()
    (src / "val2017/000003.jpg").write_bytes(b"new")
    assert sync(home_env, f"{src}/", dest).returncode == 0  # a trailing slash means the same folder
    assert tree(dest) == {**TREE, "train2017/000001.jpg": kept, "train2017/000002.jpg": b"changed",
                          "val2017/000003.jpg": b"new"}


def test_bad_arguments_give_one_line(tmp_path, home_env):
    missing = sync(home_env, tmp_path / "nowhere", tmp_path / "dest")
    assert missing.returncode == 1
    assert missing.stderr == f"error: {tmp_path / 'nowhere'}: dataset directory not found\n"
    usage = sync(home_env, "only-one")
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: ") and usage.stderr.count("\n") == 1


def test_missing_rsync_is_one_line(tmp_path, home_env):
    """A node without rsync: the script names the tool and how to get it, not `line N: rsync: command not found`."""
    bin_dir = tmp_path / "bin"  # PATH with the script's other tools and no rsync
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "date", "du", "cut"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (tmp_path / "src").mkdir()
    result = sync({**home_env, "PATH": str(bin_dir)}, tmp_path / "src", tmp_path / "dest")
    assert result.returncode == 1
    assert result.stderr == "error: rsync not found: install it (apt-get install rsync) to copy from a directory\n"


def test_s3_source_is_synced_with_the_aws_cli(tmp_path, home_env):
    if shutil.which("aws", path=home_env["PATH"]) is None:
        pytest.skip("awscli not installed (test extra)")
    import boto3

    dest = tmp_path / "dest"
    with moto_server() as aws:
        env = {**home_env, **aws}
        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        for name, data in TREE.items():
            s3.put_object(Bucket=BUCKET, Key=f"coco/{name}", Body=data)
        s3.put_object(Bucket=BUCKET, Key="other/not-this.jpg", Body=b"outside the prefix")

        first = sync(env, f"s3://{BUCKET}/coco", dest)
        assert first.returncode == 0, first.stderr
        assert tree(dest) == TREE
        assert first.stdout.startswith(f"synced s3://{BUCKET}/coco -> {dest}: ")

        # a node that restarts copies what changed and keeps the rest
        kept = mark_unchanged_copy(dest / "train2017/000001.jpg")
        s3.put_object(Bucket=BUCKET, Key="coco/train2017/000002.jpg", Body=b"a longer, changed object")
        s3.put_object(Bucket=BUCKET, Key="coco/val2017/000003.jpg", Body=b"new")
        assert sync(env, f"s3://{BUCKET}/coco/", dest).returncode == 0
        assert tree(dest) == {**TREE, "train2017/000001.jpg": kept,
                              "train2017/000002.jpg": b"a longer, changed object", "val2017/000003.jpg": b"new"}

    # the 64-request setting went into a temporary copy of the AWS config, not into HOME's
    assert not (Path(home_env["HOME"]) / ".aws").exists()
