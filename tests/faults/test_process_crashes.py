"""Processes that die mid-work, with the tiny GGUF model: a runner killed mid-stream (the client gets an
error event, the model becomes stopped, a restarted runner serves again), and a gateway killed during a
download and during a generation (the download goes on and completes, the runner frees the slot of the
generation nobody reads any more)."""

from __future__ import annotations

import hashlib
import time

import httpx
import openai
import orjson
import pytest

from tests.fakes.hub import FakeHub
from tests.faults.conftest import MODEL, slow_download_stack, wait_service, write_tiny_model
from tests.harness import wait_for

pytestmark = pytest.mark.e2e
pytest.importorskip("llama_cpp")
MiB = 1024 * 1024
LONG = 12_000  # tokens: ~15 s of generation for the tiny model, far longer than any check below waits


def _state(stack) -> str:  # type: ignore[no-untyped-def]
    return str(httpx.get(f"{stack.url}/v1/models/{MODEL}/state", timeout=5).json()["state"])


def _events(resp: httpx.Response):  # type: ignore[no-untyped-def]
    """The parsed `data:` events of an SSE response ("[DONE]" as it is)."""
    for line in resp.iter_lines():
        if line.startswith("data: "):
            yield line[6:] if line == "data: [DONE]" else orjson.loads(line[6:])


def _long_stream(stack) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "the cat"}], "max_tokens": LONG}
    return httpx.stream("POST", f"{stack.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)


def test_a_runner_killed_mid_stream_ends_the_stream_with_an_error_and_a_restart_recovers(
    make_stack, tmp_path
) -> None:
    write_tiny_model(tmp_path / "jan", n_ctx=16384)
    stack = make_stack()
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60)

    with _long_stream(stack) as resp:
        assert resp.status_code == 200
        events = _events(resp)
        for _ in range(3):
            assert "choices" in next(events)
        assert _state(stack) == "running"
        killed = time.monotonic()
        stack.kill("runner")
        rest = list(events)
    # The stream ends at once, with an error event in the one error shape, then [DONE].
    assert time.monotonic() - killed < 10
    assert rest[-1] == "[DONE]"
    errors = [e for e in rest[:-1] if "error" in e]
    assert len(errors) == 1 and set(errors[0]["error"]) == {"message", "type", "param", "code"}, rest[-3:]
    assert "runner" in errors[0]["error"]["message"].lower()
    assert len(rest) < LONG // 2  # it did not go on generating somewhere

    # Nobody hosts the model any more: stopped, and a request is a quick 503 in the error shape.
    wait_for(lambda: _state(stack) == "stopped", timeout=15)
    resp = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert resp.status_code == 503 and resp.json()["error"]["code"], resp.text

    # A restarted runner registers again and serves, streaming included.
    stack.start_service("runner")
    wait_service(stack, "runner")
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content and answer.usage and answer.usage.completion_tokens == 16
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "the dog"}], stream=True, max_tokens=8
        )
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert _state(stack) == "running"


def test_a_runner_killed_while_idle_serves_again_as_soon_as_it_is_back(make_stack, tmp_path) -> None:
    write_tiny_model(tmp_path / "jan")
    stack = make_stack()

    def chat() -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=30)

    # Started just in time, then served from the gateway's placement hint.
    assert chat().status_code == 200 and chat().status_code == 200
    stack.kill("runner")
    # While it is down the gateway dials the dead runner (until the catalog forgets it, then no_runner):
    # quick 503s, long enough for a reused gRPC channel to sit in its reconnect backoff.
    for _ in range(8):
        resp = chat()
        assert resp.status_code == 503 and resp.json()["error"]["code"], resp.text
        time.sleep(0.5)
    stack.start_service("runner")
    wait_service(stack, "runner")
    for _ in range(3):  # the first request after the restart included: no lingering 503
        resp = chat()
        assert resp.status_code == 200, resp.text
    assert _state(stack) == "running"


def test_a_gateway_killed_during_a_generation_frees_the_runner_slot(make_stack, tmp_path) -> None:
    write_tiny_model(tmp_path / "jan", n_ctx=16384)
    stack = make_stack()
    with _long_stream(stack) as resp:
        assert resp.status_code == 200
        events = _events(resp)  # kept open: closing it would disconnect, which cancels by itself
        for _ in range(3):
            assert "choices" in next(events)
        running = httpx.get(f"{stack.url}/v1/running").json()["data"]
        assert [(r["model_id"], r["active"]) for r in running] == [(MODEL, 1)]
        killed = time.monotonic()
        stack.kill("gateway")
    stack.start_service("gateway")
    wait_service(stack, "gateway")
    # The runner saw its caller vanish and stopped generating: the slot is free long before the
    # LONG tokens could have been produced, and the model still runs for the next request.
    wait_for(lambda: httpx.get(f"{stack.url}/v1/running").json()["data"][0]["active"] == 0, timeout=10)
    assert time.monotonic() - killed < 12
    assert _state(stack) == "running"
    resp = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 4


def test_a_gateway_killed_during_a_download_leaves_it_running_to_completion(make_stack, hub: FakeHub) -> None:
    size = 12 * MiB + 5
    stack, folder = slow_download_stack(make_stack, hub, size, 9)

    assert httpx.post(f"{stack.url}/v1/models/big/big/download").status_code == 202
    # A client watches the progress through the gateway when the gateway dies.
    with httpx.stream("GET", f"{stack.url}/v1/models/big/big/download", timeout=30) as resp:
        events = _events(resp)
        first = next(events)
        assert first["phase"] in ("queued", "connecting", "downloading"), first
        stack.kill("gateway")
        with pytest.raises(httpx.HTTPError):
            list(events)
    stack.start_service("gateway")
    wait_service(stack, "gateway")
    state = httpx.get(f"{stack.url}/v1/models/big/big/state").json()
    assert state["state"] in ("downloading", "stopped"), state  # not lost, not failed

    def ended() -> dict:
        job = httpx.get(f"{stack.url}/v1/models/big/big/download", headers={"accept": "application/json"})
        return job.json() if job.json().get("phase") in ("done", "failed") else {}

    assert wait_for(ended, timeout=60)["phase"] == "done"
    data = (folder / "big.Q4_K_M.gguf").read_bytes()
    assert hashlib.sha256(data).hexdigest() == hub.sha256_of("org/big-GGUF", "big.Q4_K_M.gguf")
    assert sorted(p.name for p in folder.iterdir()) == ["big.Q4_K_M.gguf", "big.json"]
    assert httpx.get(f"{stack.url}/v1/models/big/big/state").json()["state"] == "stopped"
    assert [j["phase"] for j in httpx.get(f"{stack.url}/v1/downloads").json()["data"]] == ["done"]
