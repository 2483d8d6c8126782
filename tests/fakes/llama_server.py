"""llama-cpp-python's own OpenAI-compatible server on a free loopback port: the real remote of the `api`
engine's tests (bearer key checked, streaming, usage, embeddings).

`llama_server(model_path, api_key=...)` is a context manager yielding the base URL (`http://127.0.0.1:P/v1`).
The model is served under the alias `tiny`; `--interrupt_requests false` makes requests queue instead of
cutting off a stream in progress (its default).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cli.stack import free_port

ALIAS = "tiny"


def _answers(port: int, api_key: str) -> bool:
    # http.client ignores proxy variables: this only ever reaches loopback.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {api_key}"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def llama_server(
    model_path: Path, *, api_key: str = "sk-test-key", embedding: bool = False, timeout: float = 60.0
) -> Iterator[str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api_key",
        api_key,
        "--n_ctx",
        "512",
        "--n_threads",
        "1",
        "--chat_format",
        "chatml",
        "--interrupt_requests",
        "false",
        "--embedding",
        "true" if embedding else "false",
        "--verbose",
        "false",
    ]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    log = tempfile.TemporaryFile()  # a pipe nobody reads could fill up and stall the server
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port, api_key):
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer within {timeout:.0f} s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
