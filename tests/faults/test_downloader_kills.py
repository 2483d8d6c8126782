"""`kill -9` of the downloader at random points of one download, again and again: every restarted
downloader resumes from the bytes on disk, the end result is the file with the right sha256, and in
between nothing ever looks like a finished model (no file under its final name, no state `stopped` or
`running`)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fakes.hub import FakeHub
from tests.faults.conftest import slow_download_stack, wait_service
from tests.harness import wait_for

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
SIZE = 24 * MiB + 13  # not a multiple of anything the downloader or the hub chunk by
KILLS = 12
CUT = 32 * 1024


class Watcher(threading.Thread):
    """Polls the model's state and its folder until stopped, recording anything a client must never see."""

    def __init__(self, url: str, folder: Path, final: str) -> None:
        super().__init__(daemon=True)
        self.url, self.folder, self.final = url, folder, final
        self.bad: list[str] = []
        self.states: set[str] = set()
        self.polls = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=2.0) as http:
            while not self._halt.is_set():
                path = self.folder / self.final
                # Looked at before the state: a complete file may appear between the two, not vanish.
                size = path.stat().st_size if path.exists() else None
                try:
                    state = http.get(f"{self.url}/v1/models/big/big").json().get("state")
                except httpx.HTTPError:
                    state = None
                self.polls += 1
                self.states.add(str(state))
                if size is not None and size != SIZE:
                    self.bad.append(f"{self.final} visible with {size} of {SIZE} bytes")
                if state in ("stopped", "running") and size != SIZE:
                    self.bad.append(f"state {state} while the file has {size} bytes")
                time.sleep(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def test_a_download_survives_many_kill_9_of_the_downloader(make_stack, hub: FakeHub) -> None:
    # Every response is cut after 32 KiB: the transfer advances in small resumed steps (a few MiB/s),
    # slow enough to be killed at many different points of the file.
    # The downloader alone, as compose and Kubernetes run it (local mode's control plane, the catalog and
    # the downloader in one process: tests/e2e/test_download_restart.py).
    stack, folder = slow_download_stack(make_stack, hub, SIZE, 5, separate=True)

    watcher = Watcher(stack.url, folder, "big.Q4_K_M.gguf")
    watcher.start()
    rng = random.Random(7)
    resp = httpx.post(f"{stack.url}/v1/models/big/big/download")
    assert resp.status_code == 202, resp.text
    kills, progress = 0, []
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.8))
            if (folder / "big.Q4_K_M.gguf").exists():
                break  # finished before this kill: enough kills happened on the way (asserted below)
            stack.kill("downloader")
            kills += 1
            progress.append(_bytes_on_disk(folder))
            stack.start_service("downloader")
            wait_service(stack, "downloader")

        final = wait_for(
            lambda: (j := _job(stack)) and j.get("phase") in ("done", "failed") and j, timeout=60
        )
    finally:
        watcher.stop()
    assert final["phase"] == "done", final
    assert kills >= 8, f"only {kills} kills before the download ended (progress {progress})"
    assert watcher.polls > 50 and not watcher.bad, watcher.bad[:5]
    assert "downloading" in watcher.states

    data = (folder / "big.Q4_K_M.gguf").read_bytes()
    assert len(data) == SIZE
    assert hashlib.sha256(data).hexdigest() == hub.sha256_of("org/big-GGUF", "big.Q4_K_M.gguf")
    assert sorted(p.name for p in folder.iterdir()) == ["big.Q4_K_M.gguf", "big.json"]  # no stray partials
    assert httpx.get(f"{stack.url}/v1/models/big/big/state").json()["state"] == "stopped"
    # Always resumed: the bytes kept on disk never went back to zero after the first progress, and the
    # source sent far less than a restart from scratch each time would have needed.
    kept = [p for p in progress if p]
    assert kept == sorted(kept), progress
    sent = sum(_range_len(r[2]) for r in hub.requests if r[1].startswith("/cdn/") and r[2] != "bytes=0-0")
    assert sent < 2 * SIZE, f"{sent} bytes sent for a {SIZE}-byte file over {kills} kills"


def _job(stack) -> dict:  # type: ignore[no-untyped-def]
    try:
        resp = httpx.get(f"{stack.url}/v1/models/big/big/download", headers={"accept": "application/json"})
    except httpx.HTTPError:
        return {}
    return resp.json() if resp.status_code == 200 else {}


def _bytes_on_disk(folder: Path) -> int:
    """Bytes the partial file's sidecar records as written (what a restart resumes from)."""
    total = 0
    for sidecar in folder.glob(".*.part.json"):
        try:
            record = orjson.loads(sidecar.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        total += sum(int(s.get("done", 0)) for s in record.get("segments", []) if isinstance(s, dict))
    return total


def _range_len(header: str | None) -> int:
    """Bytes a request asked for (the hub cuts every response at 128 KiB anyway)."""
    if not header:
        return SIZE
    start, _, end = header.removeprefix("bytes=").partition("-")
    return min((int(end) + 1 if end else SIZE) - int(start), CUT)


def test_resuming_with_every_byte_already_on_disk_runs_no_transfer() -> None:
    # Was: asyncio.wait([]) raised "Set of Tasks/Futures is empty" and the job failed, when a pause or a
    # kill came after the last byte was written but before the file was committed (seen in CI as a flaky
    # tests/integration/test_downloader.py::test_pause_mid_write_never_leaves_a_hole).
    from services.downloader.fetch import all_or_first_error

    asyncio.run(all_or_first_error([]))
