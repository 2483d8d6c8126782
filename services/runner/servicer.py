"""gRPC adapter of a runner: converts messages to core calls and back, nothing more."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from grpc import aio

from jan.runner.v1 import runner_service_pb2 as pb
from jan.runner.v1 import runner_service_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.common.grpcserver import GrpcServer
from services.runner.core import Hosted, Runner
from services.runner.engines.base import (
    IMAGE_MARKER,
    Constraint,
    Delta,
    GenerateRequest,
    Image,
    Sampling,
    TokenizeRequest,
    Tool,
    ToolChoice,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RunnerService"].full_name
_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}
MAX_TOP_LOGPROBS = 20


def _loaded(hosted: Hosted) -> pb.LoadedModel:
    engine = hosted.engine
    return pb.LoadedModel(
        model_id=hosted.model_id,
        memory_bytes=engine.memory_bytes,
        expires_at=hosted.expires_at,
        active=min(hosted.active, engine.slots),
        queued=max(0, hosted.active - engine.slots),
        parameters_json=orjson.dumps(engine.effective_parameters).decode(),
        engine=engine.name,
    )


def _sampling(s: pb.Sampling, defaults: dict) -> Sampling:
    """The request's fields win; the model object's parameters fill the rest (spec names included)."""

    given: set[str] = set()

    def pick(field: str, *names: str, cast: type = float, fallback: object = None) -> object:
        if s.HasField(field):  # type: ignore[arg-type]
            given.add(field)
            return getattr(s, field)
        for name in names:
            if defaults.get(name) is not None:
                given.add(field)
                return cast(defaults[name])
        return fallback

    base = Sampling()
    stop = list(s.stop) or defaults.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    sampling = Sampling(
        temperature=float(pick("temperature", "temperature", fallback=base.temperature)),  # type: ignore[arg-type]
        top_p=float(pick("top_p", "top_p", fallback=base.top_p)),  # type: ignore[arg-type]
        top_k=int(pick("top_k", "top_k", cast=int, fallback=base.top_k)),  # type: ignore[call-overload]
        min_p=float(pick("min_p", "min_p", fallback=base.min_p)),  # type: ignore[arg-type]
        max_tokens=int(
            pick("max_tokens", "max_tokens", "token_limit", cast=int, fallback=base.max_tokens)  # type: ignore[call-overload]
        ),
        stop=tuple(str(x) for x in stop),
        seed=int(s.seed) if s.HasField("seed") else None,
        presence_penalty=float(pick("presence_penalty", "presence_penalty", fallback=0.0)),  # type: ignore[arg-type]
        frequency_penalty=float(pick("frequency_penalty", "frequency_penalty", fallback=0.0)),  # type: ignore[arg-type]
        repeat_penalty=float(pick("repeat_penalty", "repeat_penalty", fallback=1.0)),  # type: ignore[arg-type]
    )
    if stop:
        given.add("stop")
    if s.HasField("seed"):
        given.add("seed")
    return dataclasses.replace(sampling, given=frozenset(given))


def _chat(messages: Sequence[pb.ChatMessage]) -> tuple[list[dict[str, Any]], list[Image]]:
    """The messages as the engines take them, and their images in order: an IMAGE_MARKER stands for each
    image in its message's content, so text of a request with images may not contain one itself."""
    images: list[Image] = []
    out = [_message(m, images) for m in messages]
    if images:
        texts = [p.text for m in messages for p in m.parts if p.WhichOneof("part") == "text"]
        if any(IMAGE_MARKER in text for text in [*texts, *(m.content for m in messages)]):
            raise InvalidArgument(f"message text may not contain {IMAGE_MARKER!r}", param="messages")
    return out, images


def _message(m: pb.ChatMessage, images: list[Image]) -> dict[str, Any]:
    content = m.content
    if m.parts:
        pieces = []
        for part in m.parts:
            if part.WhichOneof("part") == "image":
                images.append(Image(data=part.image.data, media_type=part.image.media_type))
                pieces.append(IMAGE_MARKER)
            else:
                pieces.append(part.text)
        content = "".join(pieces)
    message: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        message["tool_call_id"] = m.tool_call_id
    if m.name:
        message["name"] = m.name
    return message


def _constraint(c: pb.Constraint) -> Constraint | None:
    kind = c.WhichOneof("kind")
    if kind == "json_object":
        return Constraint(kind="json_object")
    if kind == "json_schema":
        try:
            schema = orjson.loads(c.json_schema)
        except orjson.JSONDecodeError:
            raise InvalidArgument("the JSON schema is not valid JSON", param="response_format") from None
        if not isinstance(schema, dict):
            raise InvalidArgument("a JSON schema must be an object", param="response_format")
        return Constraint(kind="json_schema", schema=schema)
    if kind == "grammar":
        return Constraint(kind="grammar", grammar=c.grammar)
    return None


def _tool(t: pb.Tool) -> Tool:
    try:
        parameters = orjson.loads(t.parameters_json) if t.parameters_json else {}
    except orjson.JSONDecodeError:
        raise InvalidArgument(
            f"the parameters of tool {t.name!r} are not valid JSON", param="tools"
        ) from None
    if not isinstance(parameters, dict):
        raise InvalidArgument(
            f"the parameters of tool {t.name!r} must be a JSON schema object", param="tools"
        )
    return Tool(name=t.name, description=t.description, parameters=parameters)


_TOOL_CHOICE: dict[int, Any] = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
    pb.TOOL_CHOICE_MODE_FUNCTION: "function",
}


def _offered(request: pb.GenerateRequest | pb.TokenizeRequest) -> dict[str, Any]:
    """The tools a request offers, how, and the answer's constraint: with the messages, they make the prompt
    (a Tokenize counts them as a Generate renders them)."""
    return {
        "constraint": _constraint(request.constraint) if request.HasField("constraint") else None,
        "tools": tuple(_tool(t) for t in request.tools),
        "tool_choice": ToolChoice(mode=_TOOL_CHOICE[request.tool_choice.mode], name=request.tool_choice.name),
        "parallel_tool_calls": (
            request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
        ),
    }


def generate_request(request: pb.GenerateRequest, defaults: dict) -> GenerateRequest:
    """The engine's request of a GenerateRequest; unset sampling fields from the model's parameters."""
    if request.top_logprobs < 0 or request.top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"top_logprobs must be 0-{MAX_TOP_LOGPROBS}", param="top_logprobs")
    messages, images = _chat(request.chat.messages) if request.HasField("chat") else (None, [])
    return GenerateRequest(
        messages=messages,
        prompt=None if request.HasField("chat") else request.text,
        sampling=_sampling(request.sampling, defaults),
        **_offered(request),
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
        n=max(1, request.n),
        logit_bias=dict(request.logit_bias),
        reasoning="inline" if request.reasoning == pb.REASONING_MODE_INLINE else "separate",
        images=tuple(images),
    )


def tokenize_request(request: pb.TokenizeRequest) -> TokenizeRequest:
    """The engine's request of a TokenizeRequest."""
    messages, images = _chat(request.chat.messages) if request.HasField("chat") else (None, [])
    if images:
        raise InvalidArgument("counting the tokens of images is not supported", param="messages")
    return TokenizeRequest(
        text=request.text if request.HasField("text") else None,
        messages=messages,
        add_special=request.add_special if request.HasField("add_special") else True,
        **_offered(request),
    )


def _response(delta: Delta) -> pb.GenerateResponse:
    reply = pb.GenerateResponse(text=delta.text, index=delta.index, reasoning=delta.reasoning)
    for call in delta.tool_calls:
        reply.tool_calls.append(
            pb.ToolCallDelta(index=call.index, id=call.id, name=call.name, arguments=call.arguments)
        )
    for lp in delta.logprobs:
        reply.logprobs.append(
            pb.TokenLogprob(
                token=lp.token,
                bytes=lp.bytes,
                logprob=lp.logprob,
                top_logprobs=[pb.TopLogprob(token=t.token, bytes=t.bytes, logprob=t.logprob) for t in lp.top],
            )
        )
    if delta.finish_reason:
        reply.finish_reason = _FINISH[delta.finish_reason]
        reply.usage.prompt_tokens = delta.prompt_tokens
        reply.usage.completion_tokens = delta.completion_tokens
        reply.usage.cached_tokens = delta.cached_tokens
        reply.stop_sequence = delta.stop_sequence
    return reply


class RunnerServicer(pb_grpc.RunnerServiceServicer):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: aio.ServicerContext
    ) -> pb.LoadModelResponse:
        overrides = orjson.loads(request.overrides_json) if request.overrides_json else {}
        if not isinstance(overrides, dict):
            raise InvalidArgument("overrides must be a JSON object", param="parameters")
        hosted = await self.runner.load(request.model_id, overrides, request.keep_alive_s)
        return pb.LoadModelResponse(model=_loaded(hosted))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        await self.runner.unload(request.model_id, release=True)
        return pb.UnloadModelResponse()

    async def ListLoaded(
        self, request: pb.ListLoadedRequest, context: aio.ServicerContext
    ) -> pb.ListLoadedResponse:
        return pb.ListLoadedResponse(
            models=[_loaded(h) for h in self.runner.loaded.values()],
            runner=self.runner.settings.name,
            memory_budget_bytes=self.runner.settings.memory_budget_bytes,
            memory_used_bytes=self.runner.memory_used,
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        hosted = self.runner.loaded.get(request.model_id)
        defaults = hosted.engine.spec.parameters if hosted else {}
        gen = generate_request(request, defaults)
        # Closed explicitly: a cancelled call (the client went away) must stop the generation now, not
        # when the garbage collector finalises the abandoned generators.
        async with contextlib.aclosing(
            self.runner.generate(request.model_id, gen, request.keep_alive_s)
        ) as deltas:
            async for delta in deltas:
                yield _response(delta)

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: aio.ServicerContext
    ) -> pb.TokenizeResponse:
        out = await self.runner.tokenize(request.model_id, tokenize_request(request))
        return pb.TokenizeResponse(
            tokens=out.tokens,
            pieces=out.pieces if request.with_pieces else [],
            max_model_len=out.max_model_len,
        )

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        return pb.DetokenizeResponse(
            text=await self.runner.detokenize(request.model_id, list(request.tokens))
        )

    async def EstimateModels(
        self, request: pb.EstimateModelsRequest, context: aio.ServicerContext
    ) -> pb.EstimateModelsResponse:
        fits = await self.runner.estimate(list(request.model_ids))
        return pb.EstimateModelsResponse(
            runner=self.runner.settings.name,
            memory_budget_bytes=self.runner.settings.memory_budget_bytes,
            memory_used_bytes=self.runner.memory_used,
            estimates=[f.to_pb() for f in fits],
        )

    async def Embed(self, request: pb.EmbedRequest, context: aio.ServicerContext) -> pb.EmbedResponse:
        vectors, tokens = await self.runner.embed(request.model_id, list(request.inputs))
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=v) for v in vectors], prompt_tokens=tokens)


def make_server(runner: Runner) -> GrpcServer:
    """A gRPC server (health, reflection, error mapping) serving a runner; bind it, then start it."""
    server = GrpcServer([SERVICE_NAME])
    server.add_servicer(RunnerServicer(runner), pb.DESCRIPTOR.services_by_name["RunnerService"])
    return server
