"""The one serving path of every dialect: where a model runs (the catalog places it; a short-lived hint
skips asking), just-in-time start, one retry before the first byte when the hint or the placement turns
out stale, then the runner's answer streamed back. Routes translate; this module decides.

Inference requests reuse the catalog's answer for a running model for a few seconds (PlacementCache); a
hint that turns out wrong costs one more try through the catalog, before any byte of the answer is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import orjson

from gateway.clients import CatalogClient, RunnerClient, RunnerPool, Unreachable
from gateway.errors import APIError
from gateway.settings import GatewaySettings
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb

T = TypeVar("T")
# A runner's answers that mean "not here; the catalog places it again": the model is not loaded there
# (any more), or the runner is shutting down and takes no new requests.
ELSEWHERE = frozenset({"model_not_loaded", "runner_draining"})


class PlacementCache:
    """model_id → the runner client the catalog placed it on, where it was loaded: a hint that lets an
    inference request skip PlaceModel for `ttl` seconds. The catalog alone decides placement; a hint is
    never renewed, only replaced by the catalog's next answer. It is gone after its ttl, once its runner's
    channel was replaced (unreachable), on a catalog write, and when the caller drops it (stop, or the
    runner says the model is not loaded)."""

    MAX_HINTS = 4096

    def __init__(self) -> None:
        self._hints: dict[str, tuple[RunnerClient, int, float]] = {}

    def get(self, model_id: str) -> RunnerClient | None:
        hint = self._hints.get(model_id)
        if hint is None:
            return None
        client, resets, expires = hint
        if client.resets != resets or time.monotonic() >= expires:
            del self._hints[model_id]
            return None
        return client

    def put(self, model_id: str, client: RunnerClient, ttl: float) -> None:
        if ttl <= 0:
            return
        now = time.monotonic()
        if len(self._hints) >= self.MAX_HINTS:
            self._hints = {k: v for k, v in self._hints.items() if v[2] > now}
            if len(self._hints) >= self.MAX_HINTS:
                self._hints.clear()
        self._hints[model_id] = (client, client.resets, now + ttl)

    def drop(self, model_id: str) -> None:
        self._hints.pop(model_id, None)

    def clear(self) -> None:
        self._hints.clear()


class Serving:
    """Placement, start/stop and inference calls on the runner serving a model (kept in app.state)."""

    def __init__(self, catalog: CatalogClient, runners: RunnerPool, settings: GatewaySettings) -> None:
        self.catalog = catalog
        self.runners = runners
        self.settings = settings
        self.placements = PlacementCache()
        catalog.after_write = self.placements.clear  # a deleted model must not go on being served

    def _remember(self, model_id: str, client: RunnerClient) -> None:
        self.placements.put(model_id, client, self.settings.placement_ttl_s)

    async def runner_for(
        self,
        model_id: str,
        *,
        start: bool,
        overrides: dict[str, Any] | None = None,
        keep_alive: float = 0.0,
        always_load: bool = False,
    ) -> RunnerClient:
        """The runner serving `model_id`, loading it there first when needed (just-in-time start).
        `always_load`: ask the runner even when the model runs (an explicit start renews its keep-alive).
        Always asks the catalog; where the model then runs is remembered as a hint."""
        placed = await self.catalog.place(model_id)
        client = self.runners.get(placed.runner.address)
        if placed.loaded and not overrides and not always_load:
            self._remember(model_id, client)
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
        await client.load(load, timeout=self.settings.load_timeout_s)
        self._remember(model_id, client)
        return client

    async def on_runner(
        self, model_id: str, keep_alive: float, send: Callable[[RunnerClient], Awaitable[T]]
    ) -> T:
        """`send` (the inference call, awaited up to its first answer) on the runner serving `model_id`.

        A placement hint skips PlaceModel. When the hinted runner no longer has the model, or cannot be
        reached (its channel is then already replaced), the hint is dropped and the catalog places the
        model as without one: once, and only before any byte of the answer went out."""
        hinted = self.placements.get(model_id)
        if hinted is not None:
            try:
                return await send(hinted)
            except APIError as exc:
                if not isinstance(exc, Unreachable) and exc.code not in ELSEWHERE:
                    raise
                self.placements.drop(model_id)
        jit = self.settings.jit_start
        runner = await self.runner_for(model_id, start=jit, keep_alive=keep_alive)
        try:
            return await send(runner)
        except APIError as exc:
            if exc.code not in ELSEWHERE or not jit:
                raise
        # Unloaded between placement and the request (keep-alive ran out, or the catalog had not heard
        # yet), or the runner has begun shutting down: the runner's word wins, place it again, once.
        self.placements.drop(model_id)
        runner = await self.runner_for(model_id, start=True, keep_alive=keep_alive, always_load=True)
        return await send(runner)

    # --- what routes call ---------------------------------------------------------------------------------

    async def generate(
        self, request: runner_pb.GenerateRequest
    ) -> AsyncGenerator[runner_pb.GenerateResponse, None]:
        """The answer's messages; the first is awaited, so a failure at the start raises here."""
        return await self.on_runner(
            request.model_id, request.keep_alive_s, lambda runner: runner.generate(request)
        )

    async def embed(self, request: runner_pb.EmbedRequest, keep_alive: float) -> runner_pb.EmbedResponse:
        return await self.on_runner(request.model_id, keep_alive, lambda runner: runner.embed(request))

    async def tokenize(self, request: runner_pb.TokenizeRequest) -> runner_pb.TokenizeResponse:
        return await self.on_runner(request.model_id, 0.0, lambda runner: runner.tokenize(request))

    async def detokenize(self, request: runner_pb.DetokenizeRequest) -> runner_pb.DetokenizeResponse:
        return await self.on_runner(request.model_id, 0.0, lambda runner: runner.detokenize(request))

    async def start(
        self, model_id: str, overrides: dict[str, Any] | None, keep_alive: float
    ) -> model_pb2.Model:
        await self.runner_for(
            model_id, start=True, overrides=overrides, keep_alive=keep_alive, always_load=True
        )
        return await self.catalog.get_model(model_id)

    async def stop(self, model_id: str) -> model_pb2.Model:
        """Unloads the model from every runner that hosts it (nothing to do when it is not running)."""
        self.placements.drop(model_id)
        try:
            for runner in await self.catalog.list_runners():
                if model_id in runner.model_ids:
                    await self.runners.get(runner.address).unload(model_id)
        finally:
            self.placements.drop(model_id)  # again: a request may have placed it meanwhile
        return await self.catalog.get_model(model_id)

    async def running(self) -> list[dict[str, Any]]:
        """Models loaded on every live runner, with their memory and when they unload if idle."""
        data = []
        for runner in await self.catalog.list_runners():
            try:
                listed = await self.runners.get(runner.address).list_loaded()
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
                        "parameters": orjson.loads(m.parameters_json or "{}"),
                    }
                )
        return data

    async def memory_fit(
        self, model_ids: list[str]
    ) -> list[tuple[runner_pb.EstimateModelsResponse, runner_pb.ModelEstimate]] | None:
        """Per model, the estimate of the runner where it fits best (where it is loaded, when it is), with
        that runner's answer (name, budget, use). Every live runner estimates by its own rule; a runner that
        does not answer is left out. None when no runner answers."""
        runners = await self.catalog.list_runners()
        replies = await asyncio.gather(
            *(self.runners.get(r.address).estimate_models(model_ids) for r in runners), return_exceptions=True
        )
        best: dict[str, tuple[runner_pb.EstimateModelsResponse, runner_pb.ModelEstimate]] = {}
        answered = False
        for reply in replies:
            if isinstance(reply, APIError):
                continue  # a runner that just died or is too old to estimate
            if isinstance(reply, BaseException):
                raise reply
            answered = True
            for estimate in reply.estimates:
                held = best.get(estimate.model_id)
                if held is None or _fit_rank(reply, estimate) > _fit_rank(*held):
                    best[estimate.model_id] = (reply, estimate)
        return list(best.values()) if answered else None


# Better fits first: a known fit beats none, fits > tight > won't fit; then more free memory.
_FIT_ORDER = {
    runner_pb.FIT_UNSPECIFIED: 0,
    runner_pb.FIT_WONT_FIT: 1,
    runner_pb.FIT_TIGHT: 2,
    runner_pb.FIT_FITS: 3,
}


def _fit_rank(reply: runner_pb.EstimateModelsResponse, estimate: runner_pb.ModelEstimate) -> tuple[int, ...]:
    free = reply.memory_budget_bytes - reply.memory_used_bytes
    return (int(estimate.loaded), _FIT_ORDER[estimate.fit], free)
