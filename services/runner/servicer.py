"""gRPC adapter of a runner: converts messages to core calls and back, nothing more."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from grpc import aio

from jan.runner.v1 import runner_service_pb2 as pb
from jan.runner.v1 import runner_service_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.common.grpcserver import GrpcServer
from services.runner.core import Hosted, Runner
from services.runner.engines.base import GenerateRequest, Sampling

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RunnerService"].full_name
_FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}


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

    def pick(field: str, *names: str, cast: type = float, fallback: object = None) -> object:
        if s.HasField(field):  # type: ignore[arg-type]
            return getattr(s, field)
        for name in names:
            if defaults.get(name) is not None:
                return cast(defaults[name])
        return fallback

    base = Sampling()
    stop = list(s.stop) or defaults.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    return Sampling(
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
        await self.runner.unload(request.model_id)
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
        if request.HasField("chat"):
            messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
            gen = GenerateRequest(
                messages=messages, prompt=None, sampling=_sampling(request.sampling, defaults)
            )
        else:
            gen = GenerateRequest(
                messages=None, prompt=request.text, sampling=_sampling(request.sampling, defaults)
            )
        # Closed explicitly: a cancelled call (the client went away) must stop the generation now, not
        # when the garbage collector finalises the abandoned generators.
        async with contextlib.aclosing(
            self.runner.generate(request.model_id, gen, request.keep_alive_s)
        ) as deltas:
            async for delta in deltas:
                reply = pb.GenerateResponse(text=delta.text)
                if delta.finish_reason:
                    reply.finish_reason = _FINISH[delta.finish_reason]
                    reply.usage.prompt_tokens = delta.prompt_tokens
                    reply.usage.completion_tokens = delta.completion_tokens
                yield reply

    async def Embed(self, request: pb.EmbedRequest, context: aio.ServicerContext) -> pb.EmbedResponse:
        vectors, tokens = await self.runner.embed(request.model_id, list(request.inputs))
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=v) for v in vectors], prompt_tokens=tokens)


def make_server(runner: Runner) -> GrpcServer:
    """A gRPC server (health, reflection, error mapping) serving a runner; bind it, then start it."""
    server = GrpcServer([SERVICE_NAME])
    server.add_servicer(RunnerServicer(runner), pb.DESCRIPTOR.services_by_name["RunnerService"])
    return server
