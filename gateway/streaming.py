"""How every dialect consumes the runner's answer: gathered whole, or streamed message by message with a
runner error raised as an APIError (so each dialect writes it in its own shape), and the framings the
dialects stream in (Server-Sent Events, with or without event names; newline-delimited JSON)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from fastapi.responses import StreamingResponse

from gateway.clients import rpc_errors
from gateway.errors import APIError
from gateway.protocol.answer import Gathered
from jan.runner.v1 import runner_service_pb2 as runner_pb

Answer = AsyncGenerator[runner_pb.GenerateResponse, None]


async def replies(answer: Answer) -> AsyncIterator[runner_pb.GenerateResponse]:
    """The runner's messages. Closed explicitly when the consumer stops, so that a client that went away
    cancels the runner's work at once (not when the garbage collector finalises the abandoned stream); a
    runner that fails mid-answer raises APIError."""
    async with rpc_errors("runner"), contextlib.aclosing(answer):
        async for reply in answer:
            yield reply


async def gather(answer: Answer) -> Gathered:
    """The whole answer (non-streaming responses)."""
    gathered = Gathered()
    async for reply in replies(answer):
        gathered.add(reply)
    if not gathered.choices:
        raise APIError(503, "the runner ended the stream without an answer", code="runner_unavailable")
    return gathered


def sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    """One Server-Sent Event; named (`event: <name>`) as Anthropic's and the Responses API's are."""
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


def ndjson(payload: dict[str, Any]) -> bytes:
    """One line of newline-delimited JSON (Ollama's streams)."""
    return orjson.dumps(payload) + b"\n"


def streamed(body: AsyncIterator[bytes], media_type: str) -> StreamingResponse:
    """A streamed response that no proxy buffers or caches."""
    return StreamingResponse(
        body, media_type=media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
