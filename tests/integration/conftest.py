"""Integration fixtures: the in-process stack over the tiny chat model (tests/harness.py serving_stack),
and a real S3 server (moto) on a free loopback port, shared by the session."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from cli.stack import free_port
from tests.harness import TOOLS_CTX, Stack, serving_stack, write_tiny_chat_model

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@pytest.fixture
def stack_models() -> Callable[[Path], None]:
    """What `stack` serves: writes the models under a root. This one writes `tiny/chat` with a context
    long enough for tools; a module that needs other models overrides this fixture."""
    return lambda root: write_tiny_chat_model(root, n_ctx=TOOLS_CTX)


@pytest.fixture
async def stack(tmp_path: Path, stack_models: Callable[[Path], None]) -> AsyncIterator[Stack]:
    """Catalog, runner (llama.cpp) and gateway in-process over the models `stack_models` writes."""
    root = tmp_path / "jan"
    stack_models(root)
    async with serving_stack(root) as s:
        yield s


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
    port = free_port()
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
