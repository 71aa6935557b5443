"""A real S3-compatible server for the s3:// tests: moto's server mode on a free loopback port.

`moto_server(auth=...)` starts `python -m moto.server` on 127.0.0.1, creates the bucket `runs`, and yields
the AWS variables a client needs (endpoint override + dummy credentials); the server stops at the end.
With auth=True the server checks credentials (moto's INITIAL_NO_AUTH_ACTION_COUNT=0): any key is unknown.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

BUCKET = "runs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(*, auth: bool = False) -> Iterator[dict[str, str]]:
    pytest.importorskip("moto.server", reason="moto[server] not installed (test extra)")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0" if auth else "inf"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.1)
        if not auth:
            boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                         aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield aws
    finally:
        server.terminate()
        server.wait(timeout=10)
