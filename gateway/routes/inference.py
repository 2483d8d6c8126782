"""Running models: start/stop, the OpenAI inference endpoints (chat, completions, embeddings) with SSE
streaming, and the list of loaded models. The catalog says which runner serves a model (placement
lives there); tokens then flow from that runner straight to the client. Inference requests reuse the
catalog's answer for a running model for a few seconds (a hint, see PlacementCache); a hint that turns
out wrong costs one more try through the catalog, before any byte of the answer is sent."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from grpc import aio

from gateway import convert
from gateway.clients import CatalogClient, PlacementCache, RunnerClient, RunnerPool, Unreachable, rpc_errors
from gateway.convert import (
    ChatCompletionIn,
    ChatCompletionOut,
    CompletionIn,
    CompletionOut,
    EmbeddingIn,
    EmbeddingListOut,
    ModelOut,
    RunningListOut,
    StartIn,
)
from gateway.errors import APIError, error_responses, from_rpc_error
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.runner.v1 import runner_service_pb2 as runner_pb

router = APIRouter(tags=["inference"])
INFERENCE_ERRORS = error_responses(400, 404, 409, 422, 429, 503)
# chat and completions answer Server-Sent Events when `stream` is true: the document says so.
STREAMING: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def _catalog(request: Request) -> CatalogClient:
    return request.app.state.catalog


def _runners(request: Request) -> RunnerPool:
    return request.app.state.runners


def _placements(request: Request) -> PlacementCache:
    return _catalog(request).placements


def _remember(request: Request, model_id: str, client: RunnerClient) -> None:
    _placements(request).put(model_id, client, request.app.state.settings.placement_ttl_s)


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, code="invalid_request", param=param)


async def _runner_for(
    request: Request,
    model_id: str,
    *,
    start: bool,
    overrides: dict[str, Any] | None = None,
    keep_alive: float = 0.0,
    always_load: bool = False,
) -> RunnerClient:
    """The runner serving `model_id`, loading it there first when needed (just-in-time start).
    `always_load`: ask the runner even when the model runs (an explicit start renews its keep-alive).
    Always asks the catalog; where the model then runs is remembered as a hint (PlacementCache)."""
    placed = await _catalog(request).call("PlaceModel", catalog_pb.PlaceModelRequest(model_id=model_id))
    client = _runners(request).get(placed.runner.address)
    if placed.loaded and not overrides and not always_load:
        _remember(request, model_id, client)
        return client
    if not start:
        raise APIError(
            409,
            f"{model_id} is not running: start it (POST /v1/models/{model_id}/start)",
            code="model_not_running",
        )
    load = runner_pb.LoadModelRequest(
        model_id=model_id,
        overrides_json=orjson.dumps(overrides).decode() if overrides else "",
        keep_alive_s=keep_alive,
    )
    await client.call("LoadModel", load, timeout=request.app.state.settings.load_timeout_s)
    _remember(request, model_id, client)
    return client


T = TypeVar("T")


async def _on_runner(
    request: Request, model_id: str, keep_alive: float, send: Callable[[RunnerClient], Awaitable[T]]
) -> T:
    """`send` (the inference call, awaited up to its first answer) on the runner serving `model_id`.

    A placement hint skips PlaceModel. When the hinted runner no longer has the model, or cannot be
    reached (its channel is then already replaced), the hint is dropped and the catalog places the
    model as without one: once, and only before any byte of the answer went out."""
    settings = request.app.state.settings
    hinted = _placements(request).get(model_id)
    if hinted is not None:
        try:
            return await send(hinted)
        except APIError as exc:
            if not isinstance(exc, Unreachable) and exc.code != "model_not_loaded":
                raise
            _placements(request).drop(model_id)
    runner = await _runner_for(request, model_id, start=settings.jit_start, keep_alive=keep_alive)
    try:
        return await send(runner)
    except APIError as exc:
        if exc.code != "model_not_loaded" or not settings.jit_start:
            raise
    # Unloaded between placement and the request (keep-alive ran out, or the catalog had not heard yet):
    # the runner's word wins, load it again, once.
    _placements(request).drop(model_id)
    runner = await _runner_for(request, model_id, start=True, keep_alive=keep_alive, always_load=True)
    return await send(runner)


# --- start / stop / running ------------------------------------------------------------------------------


@router.post(
    "/v1/models/{folder}/{file}/start",
    response_model=ModelOut,
    responses=error_responses(400, 404, 409, 429, 501, 503),
)
async def start_model(request: Request, folder: str, file: str, body: StartIn | None = None) -> Response:
    """Loads the model on a runner (with optional parameter overrides); returns once it runs."""
    model_id = f"{folder}/{file}"
    body = body or StartIn()
    try:
        keep_alive = convert.parse_keep_alive(body.keep_alive)
    except ValueError as exc:
        raise _bad(str(exc), "keep_alive") from None
    await _runner_for(
        request, model_id, start=True, overrides=body.parameters, keep_alive=keep_alive, always_load=True
    )
    reply = await _catalog(request).call("GetModel", catalog_pb.GetModelRequest(id=model_id))
    return Response(convert.model_json(reply.model), media_type="application/json")


@router.post(
    "/v1/models/{folder}/{file}/stop", response_model=ModelOut, responses=error_responses(400, 404, 503)
)
async def stop_model(request: Request, folder: str, file: str) -> Response:
    """Unloads the model from the runner that hosts it (nothing to do when it is not running)."""
    model_id = f"{folder}/{file}"
    catalog = _catalog(request)
    _placements(request).drop(model_id)
    try:
        runners = await catalog.call("ListRunners", catalog_pb.ListRunnersRequest())
        for runner in runners.runners:
            if model_id in runner.model_ids:
                await (
                    _runners(request)
                    .get(runner.address)
                    .call("UnloadModel", runner_pb.UnloadModelRequest(model_id=model_id))
                )
    finally:
        _placements(request).drop(model_id)  # again: a request may have placed it meanwhile
    reply = await catalog.call("GetModel", catalog_pb.GetModelRequest(id=model_id))
    return Response(convert.model_json(reply.model), media_type="application/json")


@router.get("/v1/running", response_model=RunningListOut, responses=error_responses(503))
async def running_models(request: Request) -> Response:
    """Models loaded on every live runner, with their memory and when they unload if idle."""
    runners = await _catalog(request).call("ListRunners", catalog_pb.ListRunnersRequest())
    data = []
    for runner in runners.runners:
        try:
            listed = (
                await _runners(request).get(runner.address).call("ListLoaded", runner_pb.ListLoadedRequest())
            )
        except APIError:
            continue  # a runner that just died: its models are no longer running
        for m in listed.models:
            data.append(
                {
                    "model_id": m.model_id,
                    "runner": runner.name,
                    "engine": m.engine,
                    "memory_bytes": m.memory_bytes,
                    "expires_at": round(m.expires_at, 1),
                    "active": m.active,
                    "queued": m.queued,
                }
            )
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


# --- generation ------------------------------------------------------------------------------------------


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _generate(
    request: Request,
    model_id: str,
    generate: runner_pb.GenerateRequest,
    *,
    stream: bool,
    include_usage: bool,
    render_chunk: Callable[[str, str | None], dict[str, Any]],
    render_full: Callable[[str, runner_pb.GenerateResponse], dict[str, Any]],
    first_chunk: dict[str, Any] | None,
) -> Response:
    # The first message is awaited before answering: a failure at the start is a normal HTTP error.
    replies = await _on_runner(
        request, model_id, generate.keep_alive_s, lambda runner: runner.generate(generate)
    )
    if not stream:
        text, last = [], None
        async with rpc_errors("runner"), contextlib.aclosing(replies):
            async for reply in replies:
                text.append(reply.text)
                last = reply
        if last is None:
            raise APIError(503, "the runner ended the stream without an answer", code="runner_unavailable")
        return Response(orjson.dumps(render_full("".join(text), last)), media_type="application/json")

    async def events() -> AsyncIterator[bytes]:
        usage = None
        # The role chunk goes out in the same write as the first content: one less send per answer.
        head = _sse(first_chunk) if first_chunk is not None else b""
        try:
            # Closed explicitly, so that a client that went away cancels the runner's work at once (not
            # when the garbage collector finalises the abandoned stream).
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    finish = convert.FINISH_NAMES.get(reply.finish_reason) if reply.finish_reason else None
                    if reply.text or finish:
                        yield head + _sse(render_chunk(reply.text, finish))
                        head = b""
                    if finish:
                        usage = reply.usage
            if head:
                yield head
            if include_usage and usage is not None:
                chunk = render_chunk("", None)
                chunk["choices"] = []
                chunk["usage"] = convert.usage_dict(usage)
                yield _sse(chunk)
        except aio.AioRpcError as exc:
            # After the headers an error can only travel as an event (a runner that died mid-stream).
            err = from_rpc_error(exc, "runner")
            yield _sse(
                {
                    "error": {
                        "message": err.message,
                        "type": "server_error",
                        "param": err.param,
                        "code": err.code,
                    }
                }
            )
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/v1/chat/completions", response_model=ChatCompletionOut, responses={**STREAMING, **INFERENCE_ERRORS}
)
async def chat_completions(request: Request, body: ChatCompletionIn) -> Response:
    """OpenAI chat completions, streamed as Server-Sent Events when `stream` is true."""
    try:
        generate = convert.chat_request(body)
    except ValueError as exc:
        raise _bad(str(exc), "messages") from None
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        return convert.chat_chunk(cid, created, body.model, {"content": text} if text else {}, finish)

    return await _generate(
        request,
        body.model,
        generate,
        stream=body.stream,
        include_usage=body.include_usage,
        render_chunk=chunk,
        render_full=lambda text, last: convert.chat_completion(cid, created, body.model, text, last),
        first_chunk=convert.chat_chunk(cid, created, body.model, {"role": "assistant", "content": ""}),
    )


@router.post("/v1/completions", response_model=CompletionOut, responses={**STREAMING, **INFERENCE_ERRORS})
async def completions(request: Request, body: CompletionIn) -> Response:
    """OpenAI (legacy) text completions."""
    try:
        generate = convert.completion_request(body)
    except ValueError as exc:
        raise _bad(str(exc), "prompt") from None
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    return await _generate(
        request,
        body.model,
        generate,
        stream=body.stream,
        include_usage=body.include_usage,
        render_chunk=lambda text, finish: convert.text_chunk(cid, created, body.model, text, finish),
        render_full=lambda text, last: convert.text_completion(cid, created, body.model, text, last),
        first_chunk=None,
    )


@router.post("/v1/embeddings", response_model=EmbeddingListOut, responses=INFERENCE_ERRORS)
async def embeddings(request: Request, body: EmbeddingIn) -> Response:
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise _bad("input must not be empty", "input")
    try:
        keep_alive = convert.parse_keep_alive(body.keep_alive)
    except ValueError as exc:
        raise _bad(str(exc), "keep_alive") from None
    embed = runner_pb.EmbedRequest(model_id=body.model, inputs=inputs)
    reply = await _on_runner(request, body.model, keep_alive, lambda runner: runner.call("Embed", embed))
    return Response(
        orjson.dumps(convert.embedding_list(body.model, reply, body.encoding_format)),
        media_type="application/json",
    )
