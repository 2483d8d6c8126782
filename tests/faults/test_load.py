"""Many concurrent clients against the real processes, CI-sized (bench/load/bench_load.py measures the
same at larger sizes): listing models and streaming chats with the tiny model. Nothing but 200 and the
documented overload answer, 429 `queue_full`, which clients get exactly when more than slots + queue
(4 + 64 = 68) chats wait for one model at once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from bench.load.bench_load import list_models, run_clients, start_stack, stream_chat
from cli.stack import Stack

pytestmark = pytest.mark.e2e
pytest.importorskip("llama_cpp")
SLOTS, QUEUE = 4, 64  # the runner's defaults: JAN_RUNNER_DEFAULT_N_PARALLEL, JAN_RUNNER_MAX_QUEUE


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("load") / "jan", models=100)
    try:
        yield s
    finally:
        s.stop()


def queue_full_count(stack: Stack) -> float:
    text = httpx.get(f"{stack.url}/metrics").text
    match = re.search(r'^jan_errors_total\{code="queue_full",component="gateway"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_100_clients_listing_models_all_get_200(stack: Stack) -> None:
    result = asyncio.run(run_clients(stack.url, 100, 2, list_models))
    assert dict(result.outcomes) == {"200": 200}


def test_up_to_slots_plus_queue_concurrent_chats_all_stream_to_the_end(stack: Stack) -> None:
    result = asyncio.run(run_clients(stack.url, SLOTS + QUEUE - 8, 1, lambda h, r: stream_chat(h, r, 48)))
    assert dict(result.outcomes) == {"200": SLOTS + QUEUE - 8}


def test_beyond_slots_plus_queue_clients_get_429_queue_full_and_the_rest_complete(stack: Stack) -> None:
    before = queue_full_count(stack)
    clients = 110
    result = asyncio.run(run_clients(stack.url, clients, 1, lambda h, r: stream_chat(h, r, 64)))
    assert set(result.outcomes) == {"200", "429 queue_full"}, result.outcomes
    assert result.outcomes["200"] >= SLOTS + QUEUE and result.outcomes["429 queue_full"] >= 1
    assert sum(result.outcomes.values()) == clients
    assert queue_full_count(stack) - before == result.outcomes["429 queue_full"]  # and metrics count them
    # Nothing is left behind: no request still holds a slot or a place in the queue.
    running = httpx.get(f"{stack.url}/v1/running").json()["data"]
    assert [(r["active"], r["queued"]) for r in running] == [(0, 0)]
