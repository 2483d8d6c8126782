"""The gateway's OpenAI inference surface against a real catalog and a real runner (llama.cpp with a tiny
GGUF written by the tests), driven by the official openai SDK over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import openai
import orjson
import pytest

from tests.harness import TINY_CHAT, Stack, serving_stack, write_tiny_chat_model

pytest.importorskip("llama_cpp")

MODEL = TINY_CHAT


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., AsyncIterator[Stack]]:
    async def make(jit_start: bool = True) -> AsyncIterator[Stack]:
        root = tmp_path / "jan"
        write_tiny_chat_model(root)
        async with serving_stack(root, jit_start=jit_start) as stack:
            yield stack

    return make


async def test_chat_completion_shapes_and_usage(make_env) -> None:
    async for env in make_env():
        answer = await env.sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "the cat"}]
        )
        assert answer.id.startswith("chatcmpl-") and answer.model == MODEL
        assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.content
        assert answer.usage is not None and answer.usage.completion_tokens == 12
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + 12
        assert (await env.catalog.get(MODEL)).state == 4  # started just in time, running

        stream = await env.sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "the cat"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == answer.choices[0].message.content  # greedy: streaming gives the same text
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["length"]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 12


async def test_the_sse_transcript(make_env) -> None:
    async for env in make_env():
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 3,
        }
        async with env.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in resp.aiter_lines() if line]
        assert all(line.startswith("data: ") for line in lines)
        assert lines[-1] == "data: [DONE]"
        events = [orjson.loads(line[6:]) for line in lines[:-1]]
        assert [e["object"] for e in events] == ["chat.completion.chunk"] * len(events)
        assert len({e["id"] for e in events}) == 1
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])


async def test_completions_embeddings_and_overrides(make_env) -> None:
    async for env in make_env():
        done = await env.sdk.completions.create(model=MODEL, prompt="the dog", max_tokens=5, temperature=0)
        assert (
            done.object == "text_completion" and done.usage is not None and done.usage.completion_tokens == 5
        )
        stream = await env.sdk.completions.create(
            model=MODEL, prompt="the dog", max_tokens=5, temperature=0, stream=True
        )
        assert "".join([c.choices[0].text async for c in stream]) == done.choices[0].text
        emb = await env.sdk.embeddings.create(model=MODEL, input="the cat")
        assert len(emb.data) == 1 and len(emb.data[0].embedding) == 64
        b64 = await env.http.post(
            "/v1/embeddings", json={"model": MODEL, "input": ["a", "b"], "encoding_format": "base64"}
        )
        assert b64.status_code == 200 and isinstance(b64.json()["data"][1]["embedding"], str)
        start = await env.http.post(f"/v1/models/{MODEL}/start", json={"parameters": {"ctx_len": 256}})
        assert start.status_code == 200 and start.json()["state"] == "running"
        running = (await env.http.get("/v1/running")).json()["data"]
        assert running[0]["model_id"] == MODEL and running[0]["runner"] == "r1"
        stop = await env.http.post(f"/v1/models/{MODEL}/stop")
        assert stop.json()["state"] == "stopped" and (await env.http.get("/v1/running")).json()["data"] == []


async def test_errors(make_env) -> None:
    async for env in make_env(jit_start=False):
        with pytest.raises(openai.ConflictError) as exc:
            await env.sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert exc.value.body["code"] == "model_not_running"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await env.sdk.chat.completions.create(
                model="no/model", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError):
            await env.sdk.chat.completions.create(
                model="../etc", messages=[{"role": "user", "content": "hi"}]
            )
        await env.http.post(f"/v1/models/{MODEL}/start")
        too_long = "the cat " * 400
        with pytest.raises(openai.BadRequestError) as exc:
            await env.sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": too_long}]
            )
        assert exc.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
        bad = await env.http.post("/v1/models/tiny/chat/start", json={"keep_alive": "soon"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"
