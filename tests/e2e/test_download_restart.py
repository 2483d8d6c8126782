"""A download survives `kill -9` of the downloader, alone (as compose and Kubernetes run it) or with the
catalog (local mode's control plane, one process): the restarted process resumes it from the bytes on
disk, the result is verified, and no partial file ever looks like a model."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from cli.stack import CONTROL_PLANE, Stack
from tests.fakes.hub import FakeHub, Faults
from tests.harness import process_stack, wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


@pytest.fixture(params=["downloader", CONTROL_PLANE])
def stack(request: pytest.FixtureRequest, tmp_path: Path, hub: FakeHub) -> Iterator[Stack]:
    """The stack; the process that the test kills is the downloader's (request.param)."""
    env = {
        "JAN_ALLOW_PRIVATE_NETWORKS": "true",
        "HF_ENDPOINT": hub.url,
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_CATALOG_REPORT_TTL_S": "3",
        "JAN_DOWNLOADER_MIN_SPLIT_BYTES": str(4 * MiB),
        "JAN_DOWNLOADER_BACKOFF_INITIAL_S": "0.1",
    }
    with process_stack(tmp_path / "jan", env, separate=request.param == "downloader") as s:
        assert s.process_of("downloader") == request.param
        yield s


def job(stack: Stack, model_id: str) -> dict:
    resp = httpx.get(f"{stack.url}/v1/models/{model_id}/download", headers={"accept": "application/json"})
    return resp.json() if resp.status_code == 200 else {}


def test_kill_9_of_the_downloader_then_restart_resumes(stack: Stack, hub: FakeHub) -> None:
    hub.add_repo("org/big-GGUF", {"big.Q4_K_M.gguf": (24 * MiB + 17, 11)})
    # The server stalls every connection at 3 MiB for long enough to kill the downloader mid-file.
    hub.faults["org/big-GGUF/big.Q4_K_M.gguf"] = Faults(stall_at=3 * MiB, stall_seconds=30)
    folder = stack.root / "models" / "big"
    folder.mkdir(parents=True)
    url = f"{hub.url}/org/big-GGUF/resolve/main/big.Q4_K_M.gguf"
    (folder / "big.json").write_bytes(orjson.dumps({"source_url": url}))
    wait_for(lambda: httpx.get(f"{stack.url}/v1/models/big/big").status_code == 200)

    assert httpx.post(f"{stack.url}/v1/models/big/big/download").status_code == 202
    wait_for(lambda: job(stack, "big/big").get("bytes_done", 0) >= 3 * MiB)
    state = wait_for(
        lambda: (st := httpx.get(f"{stack.url}/v1/models/big/big/state").json())["bytes_done"] and st
    )
    assert state["state"] == "downloading" and state["bytes_total"] == 24 * MiB + 17
    # The partial file is hidden: it is not a model, and the model is not complete.
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["big.json"]
    time.sleep(1.0)  # the fetcher records its progress beside the partial file twice a second
    done_before = job(stack, "big/big")["bytes_done"]

    process = stack.process_of("downloader")
    stack.kill(process)
    hub.faults.pop("org/big-GGUF/big.Q4_K_M.gguf")
    if process == "downloader":
        # Nobody reports the download any more: the catalog stops calling it downloading.
        state_url = f"{stack.url}/v1/models/big/big/state"
        wait_for(lambda: httpx.get(state_url).json()["state"] == "not-downloaded")
    requests_before = len(hub.requests)
    stack.start_service(process)

    final = wait_for(lambda: (j := job(stack, "big/big")) and j.get("phase") in ("done", "failed") and j)
    assert final["phase"] == "done", final
    data = (folder / "big.Q4_K_M.gguf").read_bytes()
    assert hashlib.sha256(data).hexdigest() == hub.sha256_of("org/big-GGUF", "big.Q4_K_M.gguf")
    # It resumed: the restarted downloader asked only for what was missing.
    resumed = [r for r in hub.requests[requests_before:] if r[1].startswith("/cdn/") and r[2] != "bytes=0-0"]
    assert resumed and all(r[2] and r[2].startswith("bytes=") for r in resumed)
    fetched_again = sum(_range_len(r[2], len(data)) for r in resumed)
    assert fetched_again <= len(data) - done_before + 1
    assert sorted(p.name for p in folder.iterdir()) == ["big.Q4_K_M.gguf", "big.json"]  # no stray partials
    assert httpx.get(f"{stack.url}/v1/models/big/big/state").json()["state"] == "stopped"


def _range_len(header: str | None, total: int) -> int:
    start, _, end = (header or "bytes=0-").removeprefix("bytes=").partition("-")
    return (int(end) + 1 if end else total) - int(start)
