"""Anthropic's Messages routes (`POST /v1/messages`, `POST /v1/messages/count_tokens`): parse with
gateway/protocol/anthropic.py, serve through gateway/serving.py, render (JSON or named Server-Sent Events).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.errors import APIError, Dialect, error_body
from gateway.protocol import anthropic
from gateway.protocol.anthropic import CountTokensIn, CountTokensOut, MessageOut, MessagesIn
from gateway.serving import Serving
from gateway.streaming import Answer, gather, replies, sse, streamed

router = APIRouter(tags=["anthropic"])
ERRORS = anthropic.error_responses(400, 404, 409, 413, 429, 503)
# A message is a stream of named Server-Sent Events when `stream` is true: the document says so.
STREAMING: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _json(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post("/v1/messages", response_model=MessageOut, responses={**STREAMING, **ERRORS})
async def create_message(request: Request, body: MessagesIn) -> Response:
    """Anthropic Messages, streamed as named Server-Sent Events when `stream` is true."""
    generate, images = anthropic.generate_request(body)
    mid = f"msg_{uuid.uuid4().hex}"
    try:
        answer = await _serving(request).generate(generate, images)
    except APIError as err:
        raise anthropic.in_our_terms(err) from None
    if not body.stream:
        gathered = await gather(answer)
        return _json(anthropic.message(mid, body.model, gathered, body.max_tokens))
    stream = anthropic.MessageStream(mid, body.model, body.max_tokens)
    return streamed(message_events(answer, stream), "text/event-stream")


async def message_events(answer: Answer, stream: anthropic.MessageStream) -> AsyncIterator[bytes]:
    """The stream's events; after the headers an error can only travel as an `error` event."""
    try:
        pending = b"".join(sse(payload, name) for name, payload in stream.start())
        async for reply in replies(answer):
            events = stream.add(reply)
            if events:
                yield pending + b"".join(sse(payload, name) for name, payload in events)
                pending = b""
        if not stream.finished:
            raise APIError(503, "the runner ended the stream without an answer", code="runner_unavailable")
    except APIError as err:
        yield sse(error_body(Dialect.ANTHROPIC, err.status, err.message, err.code, err.param), "error")


@router.post("/v1/messages/count_tokens", response_model=CountTokensOut, responses=ERRORS)
async def count_tokens(request: Request, body: CountTokensIn) -> Response:
    """The prompt's tokens, rendered with the model's chat template as a message would be. Starts the
    model when needed."""
    try:
        reply = await _serving(request).tokenize(anthropic.tokenize_request(body))
    except APIError as err:
        raise anthropic.in_our_terms(err) from None
    return _json(anthropic.tokens_count(reply))
