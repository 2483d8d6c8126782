"""OpenAI's inference routes (chat, completions, embeddings, tokens) and start/stop/running: parse with
gateway/protocol/openai.py, serve through gateway/serving.py, render (JSON or Server-Sent Events)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from gateway.errors import APIError, error_responses
from gateway.protocol import models as protocol_models
from gateway.protocol import openai
from gateway.protocol.answer import Usage
from gateway.protocol.common import keep_alive_seconds
from gateway.protocol.models import ModelOut, RunningListOut, StartIn
from gateway.protocol.openai import (
    ChatCompletionIn,
    ChatCompletionOut,
    CompletionIn,
    CompletionOut,
    DetokenizeIn,
    DetokenizeOut,
    EmbeddingIn,
    EmbeddingListOut,
    TokenizeIn,
    TokenizeOut,
)
from gateway.serving import Serving
from gateway.streaming import Answer, gather, replies, sse, streamed
from jan.runner.v1 import runner_service_pb2 as runner_pb

router = APIRouter(tags=["inference"])
INFERENCE_ERRORS = error_responses(400, 404, 409, 422, 429, 503)
# chat and completions answer Server-Sent Events when `stream` is true: the document says so.
STREAMING: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def _serving(request: Request) -> Serving:
    return request.app.state.serving


# --- start / stop / running ------------------------------------------------------------------------------


@router.post(
    "/v1/models/{folder}/{file}/start",
    response_model=ModelOut,
    responses=error_responses(400, 404, 409, 429, 501, 503),
)
async def start_model(request: Request, folder: str, file: str, body: StartIn | None = None) -> Response:
    """Loads the model on a runner (with optional parameter overrides); returns once it runs."""
    body = body or StartIn()
    keep_alive = keep_alive_seconds(body.keep_alive)
    model = await _serving(request).start(f"{folder}/{file}", body.parameters, keep_alive)
    return Response(protocol_models.model_json(model), media_type="application/json")


@router.post(
    "/v1/models/{folder}/{file}/stop", response_model=ModelOut, responses=error_responses(400, 404, 503)
)
async def stop_model(request: Request, folder: str, file: str) -> Response:
    """Unloads the model from the runner that hosts it (nothing to do when it is not running)."""
    model = await _serving(request).stop(f"{folder}/{file}")
    return Response(protocol_models.model_json(model), media_type="application/json")


@router.get("/v1/running", response_model=RunningListOut, responses=error_responses(503))
async def running_models(request: Request) -> Response:
    """Models loaded on every live runner, with their memory and when they unload if idle."""
    data = await _serving(request).running()
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


# --- generation ------------------------------------------------------------------------------------------


def _event_stream(
    answer: Answer,
    render: Callable[[runner_pb.GenerateResponse], dict[str, Any] | None],
    head: bytes,
    usage_chunk: Callable[[dict[str, Any]], dict[str, Any]] | None,
) -> StreamingResponse:
    """OpenAI's Server-Sent Events of the runner's messages, each rendered by `render`; `head` goes out
    with the first; the usage of every choice summed in a last chunk when `usage_chunk` is given."""

    async def events() -> AsyncIterator[bytes]:
        pending = head
        usage = Usage()
        try:
            async for reply in replies(answer):
                usage.count(reply)
                payload = render(reply)
                if payload is not None:
                    yield pending + sse(payload)
                    pending = b""
            if pending:
                yield pending
            if usage_chunk is not None and usage.choices:
                yield sse(usage_chunk(openai.usage_of(usage)))
        except APIError as err:
            # After the headers an error can only travel as an event (a runner that died mid-stream).
            error = {"message": err.message, "type": "server_error", "param": err.param, "code": err.code}
            yield sse({"error": error})
        yield b"data: [DONE]\n\n"

    return streamed(events(), "text/event-stream")


def _json(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post(
    "/v1/chat/completions", response_model=ChatCompletionOut, responses={**STREAMING, **INFERENCE_ERRORS}
)
async def chat_completions(request: Request, body: ChatCompletionIn) -> Response:
    """OpenAI chat completions, streamed as Server-Sent Events when `stream` is true."""
    generate, images = openai.chat_request(body)
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    replies = await _serving(request).generate(generate, images)
    with_logprobs = bool(body.logprobs)
    if not body.stream:
        gathered = await gather(replies)
        return _json(openai.chat_completion(cid, created, model, gathered, with_logprobs))

    def render(reply: runner_pb.GenerateResponse) -> dict[str, Any] | None:
        choice = openai.chat_chunk_choice(reply, with_logprobs)
        return openai.chat_chunk(cid, created, model, [choice]) if choice is not None else None

    # The role chunk of every choice goes out in the same write as the first content.
    roles = [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
        for i in range(body.n)
    ]
    head = sse(openai.chat_chunk(cid, created, model, roles))
    usage = (lambda u: openai.chat_chunk(cid, created, model, [], u)) if body.include_usage else None
    return _event_stream(replies, render, head, usage)


@router.post("/v1/completions", response_model=CompletionOut, responses={**STREAMING, **INFERENCE_ERRORS})
async def completions(request: Request, body: CompletionIn) -> Response:
    """OpenAI (legacy) text completions."""
    generate = openai.completion_request(body)
    cid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    replies = await _serving(request).generate(generate)
    with_logprobs = body.logprobs is not None
    if not body.stream:
        gathered = await gather(replies)
        echo = generate.text if body.echo else ""
        return _json(openai.text_completion(cid, created, model, gathered, with_logprobs, echo))

    offsets: dict[int, int] = {}

    def render(reply: runner_pb.GenerateResponse) -> dict[str, Any] | None:
        choice = openai.text_chunk_choice(reply, with_logprobs, offsets.get(reply.index, 0))
        offsets[reply.index] = offsets.get(reply.index, 0) + len(reply.text)
        return openai.text_chunk(cid, created, model, [choice]) if choice is not None else None

    def usage(u: dict[str, Any]) -> dict[str, Any]:
        return {**openai.text_chunk(cid, created, model, []), "usage": u}

    return _event_stream(replies, render, b"", usage if body.include_usage else None)


@router.post("/v1/embeddings", response_model=EmbeddingListOut, responses=INFERENCE_ERRORS)
async def embeddings(request: Request, body: EmbeddingIn) -> Response:
    embed = openai.embed_request(body)
    keep_alive = keep_alive_seconds(body.keep_alive)
    reply = await _serving(request).embed(embed, keep_alive)
    return _json(openai.embedding_list(body.model, reply, body.encoding_format))


@router.post("/v1/tokenize", response_model=TokenizeOut, responses=INFERENCE_ERRORS)
async def tokenize(request: Request, body: TokenizeIn) -> Response:
    """The model's tokens of `prompt`, or of `messages` rendered with its chat template (as vLLM's and
    llama-server's /tokenize). Starts the model when needed."""
    tokenize_request = openai.tokenize_request(body)
    reply = await _serving(request).tokenize(tokenize_request)
    return _json(openai.tokenize_dict(reply, body.return_token_strs))


@router.post("/v1/detokenize", response_model=DetokenizeOut, responses=INFERENCE_ERRORS)
async def detokenize(request: Request, body: DetokenizeIn) -> Response:
    """The text of a model's tokens."""
    reply = await _serving(request).detokenize(
        runner_pb.DetokenizeRequest(model_id=body.model, tokens=body.tokens)
    )
    return _json({"prompt": reply.text})
