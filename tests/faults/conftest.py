"""Fault-test fixtures: the real service processes (cli/stack.py) on free ports, with the tiny GGUF model
(tests/fakes/tiny_gguf.py) in place; the loopback fake Hub to download from is tests/conftest.py's `hub`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cli.stack import Stack
from tests.fakes.hub import FakeHub, Faults
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import CHAT_TEMPLATE, TINY_CHAT, process_stack, wait_for

MODEL = TINY_CHAT
# Environment of every fault stack: reports expire fast so a dead process shows within seconds, and
# retries start quickly.
FAST_ENV = {
    "JAN_CATALOG_SEED_MODELS_DIR": "",
    "JAN_CATALOG_REPORT_TTL_S": "3",
    "JAN_CATALOG_WATCH_DEBOUNCE_MS": "20",
    "JAN_RUNNER_THREADS": "1",
    "JAN_DOWNLOADER_BACKOFF_INITIAL_S": "0.1",
}


def write_tiny_model(root: Path, model_id: str = MODEL, *, n_ctx: int = 4096, **parameters: Any) -> Path:
    """The tiny GGUF and its model object under root/models; returns the GGUF's path."""
    folder, file = model_id.split("/")
    gguf = write_tiny_gguf(
        root / "models" / folder / f"{file}.gguf", chat_template=CHAT_TEMPLATE, n_ctx=n_ctx
    )
    params = {"ctx_len": n_ctx, "temperature": 0, "max_tokens": 16, **parameters}
    (root / "models" / folder / f"{file}.json").write_bytes(orjson.dumps({"parameters": params}))
    return gguf


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """make_stack(root=None, separate=False, **env) starts the real processes (once per test) and stops
    them after; `separate`: the catalog and the downloader each in a process of its own."""
    with ExitStack() as stacks:

        def make(root: Path | None = None, separate: bool = False, **env: str) -> Stack:
            return stacks.enter_context(
                process_stack(root or tmp_path / "jan", {**FAST_ENV, **env}, separate=separate)
            )

        yield make


def slow_download_stack(
    make_stack: Callable[..., Stack], hub: FakeHub, size: int, seed: int, separate: bool = False
) -> tuple[Stack, Path]:
    """A stack whose model `big/big` is a Hub file of `size` bytes served in 32 KiB pieces (every response
    is cut after 32 KiB): its download advances in small resumed steps, slow enough to be interrupted at
    many points. Returns the stack and the model's folder, once the catalog lists the model."""
    hub.add_repo("org/big-GGUF", {"big.Q4_K_M.gguf": (size, seed)})
    hub.faults["org/big-GGUF/big.Q4_K_M.gguf"] = Faults(cut_after=32 * 1024, cut_times=10**9)
    stack = make_stack(
        separate=separate,
        JAN_ALLOW_PRIVATE_NETWORKS="true",
        HF_ENDPOINT=hub.url,
        JAN_DOWNLOADER_MIN_SPLIT_BYTES=str(4 * 1024 * 1024),
        JAN_DOWNLOADER_RETRIES="1000",
    )
    folder = stack.root / "models" / "big"
    folder.mkdir(parents=True)
    url = f"{hub.url}/org/big-GGUF/resolve/main/big.Q4_K_M.gguf"
    (folder / "big.json").write_bytes(orjson.dumps({"source_url": url}))
    wait_for(lambda: httpx.get(f"{stack.url}/v1/models/big/big").status_code == 200)
    return stack, folder


def wait_service(stack: Stack, name: str, timeout: float = 30.0) -> None:
    """Waits until a (re)started process answers: the gateway's /healthz sees its services (catalog,
    downloader), or, for the gateway itself, answers at all."""
    import httpx

    def ready() -> bool:
        assert stack.procs[name].poll() is None, f"{name} exited:\n{stack.log_tail(name)}"
        try:
            resp = httpx.get(f"{stack.url}/healthz", timeout=1.0)
        except httpx.HTTPError:
            return False
        body = resp.json()
        if name == "runner":
            return bool(body.get("runners", 0) >= 1)
        return name == "gateway" or all(body.get("services", {}).get(s) for s in stack.services_of(name))

    wait_for(ready, timeout)
