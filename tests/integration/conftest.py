"""Integration fixtures: a real S3 server (moto) on a free loopback port, shared by the session."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    # http.client ignores proxy variables, so this can only ever reach loopback.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """Endpoint (host:port) of a moto S3 server; keys "test"/"test", region us-east-1, plain http."""
    if not MOTO_SERVER.exists():
        pytest.skip(f"{MOTO_SERVER} is not installed")
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not _answers(port):
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("moto_server did not answer within 20 s")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
