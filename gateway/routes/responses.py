"""OpenAI's Responses API routes: `POST /v1/responses` (parsed and rendered by
gateway/protocol/responses.py, served through gateway/serving.py, JSON or named Server-Sent Events), and
the routes of stored responses, which answer 404: nothing is stored here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.errors import APIError, error_responses
from gateway.protocol import responses
from gateway.protocol.responses import ResponseBuilder, ResponseOut, ResponsesIn
from gateway.serving import Serving
from gateway.streaming import Answer, replies, sse, streamed

router = APIRouter(tags=["responses"])
STREAMING: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}
NO_ANSWER = "the runner ended the stream without an answer"


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _frames(events: list[responses.Event]) -> bytes:
    return b"".join(sse(payload, name) for name, payload in events)


async def _events(builder: ResponseBuilder, answer: Answer) -> AsyncIterator[bytes]:
    yield _frames(builder.start())
    try:
        async for reply in replies(answer):
            if frames := _frames(builder.feed(reply)):
                yield frames
    except APIError as err:
        # After the headers an error can only travel as events (a runner that died mid-answer).
        yield _frames(builder.fail(err.message))
        return
    if not builder.done:
        yield _frames(builder.fail(NO_ANSWER))


@router.post(
    "/v1/responses",
    response_model=ResponseOut,
    responses={**STREAMING, **error_responses(400, 404, 409, 422, 429, 503)},
)
async def create_response(request: Request, body: ResponsesIn) -> Response:
    """OpenAI's Responses API, stateless (nothing is stored); named Server-Sent Events when `stream`."""
    generate, images = responses.generate_request(body)
    try:
        answer = await _serving(request).generate(generate, images)
    except APIError as err:
        err.param = responses.param_name(err.param)
        raise
    builder = ResponseBuilder(body)
    if body.stream:
        return streamed(_events(builder, answer), "text/event-stream")
    async for reply in replies(answer):
        builder.feed(reply)
    if not builder.done:
        raise APIError(503, NO_ANSWER, code="runner_unavailable")
    return Response(orjson.dumps(builder.response()), media_type="application/json")


@router.post(
    "/v1/responses/input_tokens",
    response_model=responses.InputTokensOut,
    responses=error_responses(400, 404, 409, 422, 429, 503),
)
async def count_input_tokens(request: Request, body: responses.InputTokensIn) -> Response:
    """The input tokens of a response with these fields (the prompt rendered with the model's chat
    template, tool definitions included). Starts the model when needed."""
    count = responses.tokenize_request(body)
    try:
        reply = await _serving(request).tokenize(count)
    except APIError as err:
        err.param = responses.param_name(err.param)
        raise
    body_out = {"object": "response.input_tokens", "input_tokens": len(reply.tokens)}
    return Response(orjson.dumps(body_out), media_type="application/json")


def _not_stored(response_id: str) -> APIError:
    return APIError(
        404,
        f"response {response_id!r} not found: responses are not stored here (every response is store: false)",
        code="response_not_found",
        param="response_id",
    )


@router.get("/v1/responses/{response_id}", response_model=ResponseOut, responses=error_responses(404))
async def get_response(response_id: str) -> Response:
    """Always 404: responses are not stored."""
    raise _not_stored(response_id)


@router.delete("/v1/responses/{response_id}", responses=error_responses(404))
async def delete_response(response_id: str) -> Response:
    """Always 404: responses are not stored."""
    raise _not_stored(response_id)


@router.post("/v1/responses/{response_id}/cancel", response_model=ResponseOut, responses=error_responses(404))
async def cancel_response(response_id: str) -> Response:
    """Always 404: there are no background responses to cancel."""
    raise _not_stored(response_id)


@router.get("/v1/responses/{response_id}/input_items", responses=error_responses(404))
async def list_input_items(response_id: str) -> Response:
    """Always 404: responses are not stored."""
    raise _not_stored(response_id)
