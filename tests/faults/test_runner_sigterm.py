"""SIGTERM of a runner process during a stream (what Kubernetes and compose send when they stop it): the
stream finishes normally, then the runner exits by itself within its drain timeout."""

from __future__ import annotations

import signal
import time

import httpx
import orjson
import pytest

from tests.faults.conftest import MODEL, write_tiny_model

pytest.importorskip("llama_cpp")
TOKENS = 1500  # ~2 s of generation for the tiny model: the signal arrives while it streams


def test_sigterm_lets_the_stream_in_flight_finish_then_the_runner_exits(make_stack, tmp_path) -> None:
    write_tiny_model(tmp_path / "jan", n_ctx=4096)
    stack = make_stack(JAN_RUNNER_DRAIN_TIMEOUT_S="30")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "the cat"}], "max_tokens": TOKENS}
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        lines = (line for line in resp.iter_lines() if line.startswith("data: "))
        for _ in range(3):
            assert "choices" in orjson.loads(next(lines)[6:])
        runner = stack.procs["runner"]
        runner.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    events = [orjson.loads(line[6:]) for line in rest[:-1]]
    assert not [e for e in events if "error" in e], events[-3:]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    # Then it exits by itself, well before the drain timeout.
    runner.wait(timeout=20)
    assert time.monotonic() - signalled < 20
