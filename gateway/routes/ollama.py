"""Ollama's routes (`/api/...`, and `/` which clients probe): parse with gateway/protocol/ollama.py, serve
through gateway/serving.py and the catalog and downloader clients, answer JSON or newline-delimited JSON
(streams are Ollama's default). Errors are Ollama's `{"error": "..."}`, in a stream as its last line."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.clients import CatalogClient
from gateway.errors import APIError, Dialect, error_body
from gateway.protocol import ollama
from gateway.protocol.answer import Choice, Usage
from gateway.protocol.common import ImageRef, Unsupported, keep_alive_seconds
from gateway.protocol.ollama import ChatIn, Clock, CopyIn, EmbeddingsIn, EmbedIn, GenerateIn, NameIn, PullIn
from gateway.serving import Serving
from gateway.streaming import Answer, gather, ndjson, replies, streamed
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb

router = APIRouter(tags=["ollama"])
NDJSON = "application/x-ndjson"
LOCAL_STATES = [model_pb2.MODEL_STATE_STOPPED, model_pb2.MODEL_STATE_RUNNING]
# Streamed answers are newline-delimited JSON (`stream` defaults to true, as in Ollama).
STREAMING: dict[int | str, dict[str, Any]] = {200: {"content": {NDJSON: {}, "application/json": {}}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its errors in Ollama's shape (a body that does not validate is 400)."""
    return {status: {"model": ollama.ErrorOut, "description": "error"} for status in (*statuses, 401)}


INFERENCE_ERRORS = _errors(400, 404, 409, 429, 503)


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _catalog(request: Request) -> CatalogClient:
    return request.app.state.catalog


def _json(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


def _error_line(err: APIError) -> bytes:
    return ndjson(error_body(Dialect.OLLAMA, err.status, err.message, err.code, err.param))


@asynccontextmanager
async def _named(name: str) -> AsyncIterator[None]:
    """A model that does not exist is `model '<name>' not found` (404), as Ollama says it."""
    try:
        yield
    except APIError as exc:
        if exc.code == "model_not_found" and exc.status == 404 and not exc.message.startswith("model '"):
            raise APIError(404, f"model '{name}' not found", code=exc.code) from None
        raise


async def _model(request: Request, name: str) -> model_pb2.Model:
    ref = ollama.parse_name(name)
    if isinstance(ref, ollama.HfName):
        return ollama.pick_hf_model(await _catalog(request).list_all([], []), ref, name)
    return await _catalog(request).get_model(ref)


async def _model_id(request: Request, name: str) -> str:
    ref = ollama.parse_name(name)
    if isinstance(ref, ollama.HfName):
        return (await _model(request, name)).id
    return ref


async def _apply_num_ctx(request: Request, model_id: str, opts: ollama.Options, keep_alive: float) -> None:
    """num_ctx is a load parameter: the model is (re)loaded with that context when it runs with another
    (the runner keeps a load with the same overrides as it is)."""
    if opts.num_ctx is not None:
        await _serving(request).start(model_id, {"ctx_len": opts.num_ctx}, keep_alive)


async def _load_or_unload(
    request: Request, body: ChatIn | GenerateIn, model_id: str, opts: ollama.Options
) -> str:
    """An empty request loads the model (keep_alive 0: unloads it), as in Ollama; the done_reason."""
    if ollama.unloads(body.keep_alive):
        await _serving(request).stop(model_id)
        return "unload"
    overrides = {"ctx_len": opts.num_ctx} if opts.num_ctx is not None else None
    await _serving(request).start(model_id, overrides, keep_alive_seconds(body.keep_alive))
    return "load"


# --- probes -----------------------------------------------------------------------------------------------


@router.get("/api/version")
@router.head("/api/version")
async def version() -> Response:
    """The version of Ollama's API this gateway follows."""
    return _json({"version": ollama.OLLAMA_VERSION})


# --- models -----------------------------------------------------------------------------------------------


@router.get("/api/tags", responses=_errors(503))
async def tags(request: Request) -> Response:
    """The models that can run now (downloaded, or on a remote API), named with `:latest`."""
    models = await _catalog(request).list_all(LOCAL_STATES, [])
    return _json({"models": [ollama.listed_model(m) for m in models]})


@router.post("/api/show", responses=_errors(400, 404, 503))
async def show(request: Request, body: NameIn) -> Response:
    ollama.refuse_extras(body)
    async with _named(body.given):
        model = await _model(request, body.given)
    return _json(ollama.show(model))


@router.get("/api/ps", responses=_errors(503))
async def ps(request: Request) -> Response:
    """The models loaded on the runners, with their memory and when they unload if idle."""
    entries = await _serving(request).running()
    models = {m.id: m for m in await _catalog(request).list_all([model_pb2.MODEL_STATE_RUNNING], [])}
    return _json({"models": [ollama.running_model(e, models.get(e["model_id"])) for e in entries]})


@router.delete("/api/delete", responses=_errors(400, 404, 409, 503))
async def delete(request: Request, body: NameIn) -> Response:
    """Deletes the model object and its files."""
    ollama.refuse_extras(body)
    async with _named(body.given):
        await _catalog(request).delete_model(await _model_id(request, body.given))
    return Response(status_code=200)


@router.post("/api/copy", responses=_errors(400, 404, 409, 501, 503))
async def copy(request: Request, body: CopyIn) -> Response:
    """A new model object `destination` over the same files as `source` (in the same folder, where the
    files are): its own id, with the source's parameters and metadata."""
    ollama.refuse_extras(body)
    async with _named(body.source):
        source = await _model(request, body.source)
    destination = ollama.parse_name(body.destination, "destination")
    if isinstance(destination, ollama.HfName) or destination.count("/") != 1:
        raise Unsupported("destination", "destination must be a model id '<folder>/<file>'")
    folder = source.id.split("/", 1)[0]
    if destination.split("/", 1)[0] != folder:
        raise Unsupported(
            "destination",
            f"destination must be in the source's folder ({folder}/<file>): files are shared within a folder",
        )
    # The answer's capabilities are the catalog's derivation (or the source's own): the copy derives its own.
    metadata = orjson.loads(source.metadata_json or "{}")
    metadata.pop("capabilities", None)
    metadata_json = orjson.dumps(metadata).decode()
    if source.source_url in ("", "./") and source.engine in ("", "llamacpp"):
        # Made from local files: the copy names the same binaries of the folder.
        if any(b.external_path for b in source.binaries) or not source.binaries:
            raise APIError(
                501,
                f"{source.id} uses a file outside its folder: only models whose files are in their folder "
                "can be copied",
                code="copy_unavailable",
            )
        metadata["binaries"] = [
            {k: v for k, v in (("name", b.name), ("sha256", b.sha256), ("size", b.size)) if v}
            for b in source.binaries
        ]
        metadata_json = orjson.dumps(metadata).decode()
    create = catalog_pb.CreateModelRequest(
        id=destination,
        source_url=source.source_url or "./",
        parameters_json=source.parameters_json,
        metadata_json=metadata_json,
        description=source.description,
        owned_by=source.owned_by,
    )
    await _catalog(request).create_model(create)
    return Response(status_code=200)


@router.post("/api/pull", responses={**STREAMING, **_errors(400, 404, 409, 429, 502, 503)})
async def pull(request: Request, body: PullIn) -> Response:
    """Downloads a model (a hf.co/<org>/<repo>:<quant> name imports the repository first), streaming
    Ollama's progress lines: `pulling manifest`, `pulling <digest>` with bytes, ..., `success`."""
    ollama.refuse_extras(body)
    if body.insecure:
        raise Unsupported("insecure", "insecure: downloads always verify TLS here")
    name = body.given
    ref = ollama.parse_name(name)
    async with _named(name):
        if isinstance(ref, ollama.HfName):
            imported = await request.app.state.downloader.import_repository(
                downloader_pb.ImportRepositoryRequest(repo_url=ref.repo_url)
            )
            model = ollama.pick_hf_model(list(imported.models), ref, name)
        else:
            model = await _catalog(request).get_model(ref)
    present = model.state in LOCAL_STATES
    jobs = None
    if not present:
        await request.app.state.downloader.start(model.id)
        jobs = await request.app.state.downloader.watch(model.id)

    async def lines() -> AsyncIterator[dict[str, Any]]:
        yield ollama.PULL_STARTED
        if jobs is not None:
            async for reply in jobs:
                for line in ollama.pull_files(reply.job, model):
                    yield line
                if (failure := ollama.pull_failure(reply.job)) is not None:
                    raise APIError(502, failure, code=reply.job.error_code or "download_failed")
        for line in ollama.PULL_DONE:
            yield line

    if not body.stream:
        last: dict[str, Any] = {}
        async for line in lines():
            last = line
        return _json(last)

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for line in lines():
                yield ndjson(line)
        except APIError as err:
            yield _error_line(err)

    return streamed(stream(), NDJSON)


# --- generation -------------------------------------------------------------------------------------------


def _ndjson_answer(answer: Answer, clock: Clock, render: Render, with_logprobs: bool) -> Response:
    """The answer as Ollama streams it: a line per runner message with text or thinking, the tool calls
    (whole, arguments as objects) when they are complete, then the `done` line with the metrics."""

    async def lines() -> AsyncIterator[bytes]:
        usage, calls = Usage(), Choice()
        finish: runner_pb.FinishReason.ValueType = runner_pb.FINISH_REASON_UNSPECIFIED
        try:
            async for reply in replies(answer):
                usage.count(reply)
                finish = reply.finish_reason or finish
                if reply.tool_calls:
                    calls.add(runner_pb.GenerateResponse(tool_calls=reply.tool_calls))
                if reply.text or reply.reasoning or (with_logprobs and reply.logprobs):
                    extra = {"logprobs": ollama.logprobs_out(reply.logprobs)} if with_logprobs else {}
                    yield ndjson(render(reply.text, reply.reasoning, **extra))
            if calls.calls:
                out = [ollama.tool_call_out(c, i) for i, c in enumerate(calls.tool_calls)]
                yield ndjson(render("", "", tool_calls=out))
            metrics = clock.metrics(time.perf_counter_ns(), usage.prompt_tokens, usage.completion_tokens)
            yield ndjson(render("", "", **ollama.done_fields(finish, metrics)))
        except APIError as err:
            yield _error_line(err)

    return streamed(lines(), NDJSON)


async def _answer(
    request: Request, body: ChatIn | GenerateIn, generate: runner_pb.GenerateRequest, images: list[ImageRef]
) -> Answer:
    async with _named(body.model):
        return await _serving(request).generate(generate, images)


Render = Callable[..., dict[str, Any]]
Translate = Callable[[str], ollama.Translated]


async def _generation(
    request: Request, body: ChatIn | GenerateIn, asked: bool, translate: Translate, render: Render
) -> Response:
    """Chat and generate alike: `translate` the body for the model, then the answer streamed as
    newline-delimited JSON, or whole; nothing `asked` (no messages, no prompt): load or unload the model."""
    clock = Clock(time.perf_counter_ns())
    async with _named(body.model):
        model_id = await _model_id(request, body.model)
        generate, images, opts = translate(model_id)
        if not asked:
            reason = await _load_or_unload(request, body, model_id, opts)
            return _json({**render(""), "done": True, "done_reason": reason})
        await _apply_num_ctx(request, model_id, opts, generate.keep_alive_s)
    answer = await _answer(request, body, generate, images)
    clock.first = time.perf_counter_ns()
    if body.stream:
        return _ndjson_answer(answer, clock, render, bool(body.logprobs))
    gathered = await gather(answer)
    c = gathered.first
    extra: dict[str, Any] = {}
    if c.calls:
        extra["tool_calls"] = [ollama.tool_call_out(call, i) for i, call in enumerate(c.tool_calls)]
    if body.logprobs:
        extra["logprobs"] = ollama.logprobs_out(c.logprobs)
    u = gathered.usage
    metrics = clock.metrics(time.perf_counter_ns(), u.prompt_tokens, u.completion_tokens)
    return _json({**render(c.content, c.thinking, **extra), **ollama.done_fields(c.finish_reason, metrics)})


@router.post("/api/chat", responses={**STREAMING, **INFERENCE_ERRORS})
async def chat(request: Request, body: ChatIn) -> Response:
    """A chat turn; streamed as newline-delimited JSON unless `stream` is false. No messages: loads the
    model (unloads it with keep_alive 0)."""
    render = functools.partial(ollama.chat_chunk, body.model)
    return await _generation(
        request, body, bool(body.messages), lambda model_id: ollama.chat_request(body, model_id), render
    )


@router.post("/api/generate", responses={**STREAMING, **INFERENCE_ERRORS})
async def generate(request: Request, body: GenerateIn) -> Response:
    """A completion of `prompt` and `images` (through the model's chat template unless `raw`). Neither:
    loads the model (unloads it with keep_alive 0)."""
    render = functools.partial(ollama.generate_chunk, body.model)
    asked = bool(body.prompt or body.images)
    return await _generation(
        request, body, asked, lambda model_id: ollama.generate_request(body, model_id), render
    )


# --- embeddings -------------------------------------------------------------------------------------------


@router.post("/api/embed", responses=INFERENCE_ERRORS)
async def embed(request: Request, body: EmbedIn) -> Response:
    """Embeddings of `input` (a text or a list), L2-normalised as Ollama returns them; `dimensions`
    keeps the first ones (normalised again)."""
    start = time.perf_counter_ns()
    inputs = ollama.embed_inputs(body)
    opts = ollama.options(body.options, sampling=False)
    keep_alive = keep_alive_seconds(body.keep_alive)
    async with _named(body.model):
        model_id = await _model_id(request, body.model)
        await _apply_num_ctx(request, model_id, opts, keep_alive)
        if not inputs:
            await _serving(request).start(model_id, None, keep_alive)
            return _json({"model": body.model, "embeddings": []})
        reply = await _serving(request).embed(
            runner_pb.EmbedRequest(model_id=model_id, inputs=inputs), keep_alive
        )
    return _json(
        {
            "model": body.model,
            "embeddings": ollama.embeddings_out(reply, body.dimensions),
            "total_duration": time.perf_counter_ns() - start,
            "prompt_eval_count": reply.prompt_tokens,
        }
    )


@router.post("/api/embeddings", responses=INFERENCE_ERRORS)
async def embeddings(request: Request, body: EmbeddingsIn) -> Response:
    """The older embeddings route: one `prompt`, one `embedding` (as the model gives it)."""
    ollama.refuse_extras(body)
    opts = ollama.options(body.options, sampling=False)
    keep_alive = keep_alive_seconds(body.keep_alive)
    async with _named(body.model):
        model_id = await _model_id(request, body.model)
        await _apply_num_ctx(request, model_id, opts, keep_alive)
        if not body.prompt:
            await _serving(request).start(model_id, None, keep_alive)
            return _json({"embedding": []})
        reply = await _serving(request).embed(
            runner_pb.EmbedRequest(model_id=model_id, inputs=[body.prompt]), keep_alive
        )
    return _json({"embedding": list(reply.embeddings[0].values)})
