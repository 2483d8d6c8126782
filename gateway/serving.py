"""The one serving path of every dialect: where a model's replicas run (the catalog places them; a
short-lived hint skips asking), just-in-time start, which replica takes the request (gateway/routing.py),
another try before the first byte when the replica is gone or the hint stale, then the runner's answer
streamed back. A request's images are read first (gateway/images.py). Routes translate; this module
decides.

Inference requests reuse the catalog's answer for a running model for a few seconds (PlacementCache); a
hint that turns out wrong costs one more try through the catalog, before any byte of the answer is sent.
A model short of the replicas it wants gets the missing ones started in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import orjson

from gateway.clients import CatalogClient, RunnerPool, Unreachable
from gateway.errors import APIError
from gateway.images import ImageReader
from gateway.metrics import MODEL_REPLICAS, served_by
from gateway.protocol.common import ImageRef
from gateway.routing import Replica, Router, prefix_keys
from gateway.settings import GatewaySettings
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb

log = logging.getLogger(__name__)

T = TypeVar("T")
# A runner's answers that mean "not here; the catalog places it again": the model is not loaded there
# (any more), or the runner is shutting down and takes no new requests.
ELSEWHERE = frozenset({"model_not_loaded", "runner_draining"})
# Tries of one request before its first byte: the replica chosen, then others (or a fresh start).
MAX_TRIES = 3


class PlacementCache:
    """model_id → the replicas the catalog placed it on: a hint that lets an inference request skip
    PlaceModel for `ttl` seconds. The catalog alone decides placement; a hint is never renewed, only
    replaced by the catalog's next answer. It is gone after its ttl, once one of its runners' channels was
    replaced (unreachable), on a catalog write, and when the caller drops it (stop, or a runner says the
    model is not loaded)."""

    MAX_HINTS = 4096

    def __init__(self) -> None:
        self._hints: dict[str, tuple[tuple[Replica, ...], tuple[int, ...], float]] = {}

    def get(self, model_id: str) -> tuple[Replica, ...] | None:
        hint = self._hints.get(model_id)
        if hint is None:
            return None
        replicas, resets, expires = hint
        if time.monotonic() >= expires or tuple(r.client.resets for r in replicas) != resets:
            del self._hints[model_id]
            return None
        return replicas

    def put(self, model_id: str, replicas: Sequence[Replica], ttl: float) -> None:
        if ttl <= 0 or not replicas:
            return
        now = time.monotonic()
        if len(self._hints) >= self.MAX_HINTS:
            self._hints = {k: v for k, v in self._hints.items() if v[2] > now}
            if len(self._hints) >= self.MAX_HINTS:
                self._hints.clear()
        held = tuple(replicas)
        self._hints[model_id] = (held, tuple(r.client.resets for r in held), now + ttl)

    def drop(self, model_id: str) -> None:
        self._hints.pop(model_id, None)

    def clear(self) -> None:
        self._hints.clear()


class Serving:
    """Placement, start/stop and inference calls on the replicas serving a model (kept in app.state)."""

    def __init__(
        self, catalog: CatalogClient, runners: RunnerPool, settings: GatewaySettings, images: ImageReader
    ) -> None:
        self.catalog = catalog
        self.runners = runners
        self.settings = settings
        self.images = images
        self.placements = PlacementCache()
        self.router = Router(settings.routing, settings.affinity_load_factor)
        self._topping_up: dict[str, asyncio.Task[None]] = {}
        catalog.after_write = self.placements.clear  # a deleted model must not go on being served

    def _replicas(self, runners: Sequence[catalog_pb.Runner]) -> list[Replica]:
        return [Replica(r.name, self.runners.get(r.address)) for r in runners]

    async def replicas_for(
        self, model_id: str, *, start: bool, keep_alive: float = 0.0, avoid: frozenset[str] = frozenset()
    ) -> tuple[tuple[Replica, ...], bool]:
        """The replicas serving `model_id` (never empty), and whether they were just started: just in
        time, when none ran and `start` allows. A hint skips asking the catalog unless some runners are
        to be avoided."""
        hinted = None if avoid else self.placements.get(model_id)
        if hinted is not None:
            return hinted, False
        started = False
        placed = await self.catalog.place(catalog_pb.PlaceModelRequest(model_id=model_id, avoid=avoid))
        replicas = self._replicas(placed.replicas)
        MODEL_REPLICAS.labels(model_id).set(len(replicas))
        if not replicas:
            if not start:
                raise APIError(
                    409,
                    f"{model_id} is not running: start it (POST /v1/models/{model_id}/start)",
                    code="model_not_running",
                )
            replicas = await self._start(
                model_id, placed, keep_alive=keep_alive or placed.keep_alive_s, avoid=avoid, wait="first"
            )
            started = True
        elif start and len(replicas) < placed.wanted and placed.targets:
            self._top_up(model_id, placed)
        self.placements.put(model_id, replicas, self.settings.placement_ttl_s)
        return tuple(replicas), started

    async def _start(
        self,
        model_id: str,
        like: catalog_pb.PlaceModelResponse | None = None,
        *,
        replicas: int = 0,
        overrides: dict[str, Any] | None = None,
        keep_alive: float = 0.0,
        avoid: frozenset[str] = frozenset(),
        wait: Literal["all", "first"] = "all",
        reload: bool = False,
    ) -> list[Replica]:
        """Loads the model where the catalog places its replicas. `like`: the catalog's answer whose
        replicas, overrides and keep-alive a just-in-time start keeps. `wait`: "all" loads every missing
        replica before answering; "first" only the first (the others load in the background). `reload`:
        also the replicas that run (an explicit start renews their keep-alive and applies its overrides).
        Answers the replicas that run; raises when none does."""
        overrides_json = orjson.dumps(overrides).decode() if overrides else ""
        if like is not None:
            replicas, overrides_json = like.wanted, like.overrides_json
        placed = await self.catalog.place(
            catalog_pb.PlaceModelRequest(
                model_id=model_id,
                start=True,
                replicas=replicas,
                overrides_json=overrides_json,
                keep_alive_s=keep_alive,
                avoid=avoid,
            )
        )
        running = self._replicas(placed.replicas)
        load_on = (running if reload else []) + self._replicas(placed.targets)
        serving = [] if reload else running
        request = runner_pb.LoadModelRequest(
            model_id=model_id, overrides_json=overrides_json, keep_alive_s=keep_alive
        )
        if not load_on:
            return serving
        if wait == "first":
            await load_on[0].client.load(request, timeout=self.settings.load_timeout_s)
            if load_on[1:]:
                self._top_up(model_id, placed, load_on[1:], request)
            return [*serving, load_on[0]]
        results = await asyncio.gather(
            *(r.client.load(request, timeout=self.settings.load_timeout_s) for r in load_on),
            return_exceptions=True,
        )
        errors = [e for e in results if isinstance(e, BaseException)]
        for replica, result in zip(load_on, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("replica of %s on %s did not load: %s", model_id, replica.name, result)
            else:
                serving.append(replica)
        if not serving:
            raise errors[0]
        return serving

    def _top_up(
        self,
        model_id: str,
        placed: catalog_pb.PlaceModelResponse,
        load_on: Sequence[Replica] = (),
        request: runner_pb.LoadModelRequest | None = None,
    ) -> None:
        """Starts the model's missing replicas in the background (once at a time per model); requests
        go on to the replicas that run, and to the new ones once the next placement lists them."""
        if model_id in self._topping_up:
            return

        async def top_up() -> None:
            try:
                if load_on and request is not None:
                    await asyncio.gather(
                        *(r.client.load(request, timeout=self.settings.load_timeout_s) for r in load_on)
                    )
                else:
                    await self._start(model_id, placed, keep_alive=placed.keep_alive_s)
            except Exception as exc:
                log.warning("a missing replica of %s did not start: %s", model_id, exc)
            finally:
                self._topping_up.pop(model_id, None)
                self.placements.drop(model_id)  # the next request asks where the replicas are now

        self._topping_up[model_id] = asyncio.get_running_loop().create_task(top_up())

    async def on_runner(
        self,
        model_id: str,
        keep_alive: float,
        send: Callable[[Any], Awaitable[T]],
        keys: Sequence[bytes] = (),
    ) -> tuple[Replica, T]:
        """`send` (the inference call, awaited up to its first answer) on the replica the router picks,
        counted as outstanding there until the caller's `self.router.end`.

        When the replica cannot be reached (it is then passed over, and the catalog told to leave it out),
        or says the model is not there or it is shutting down, the request goes to another replica, or the
        model is started again: up to MAX_TRIES, and only before any byte of the answer went out."""
        jit = self.settings.jit_start
        tried: set[str] = set()
        avoid: set[str] = set()
        failure: APIError | None = None
        for _ in range(MAX_TRIES):
            try:
                placed, started = await self.replicas_for(
                    model_id, start=jit, keep_alive=keep_alive, avoid=frozenset(avoid)
                )
            except APIError as exc:
                if failure is not None and exc.code == "no_runner":
                    raise failure from None  # every runner failed here: that is the answer
                raise
            replicas = list(placed) if started else [r for r in placed if r.name not in tried]
            if not replicas:
                if not jit and failure is not None:
                    raise failure
                # The catalog still names only replicas that failed here (it has not heard yet): load
                # the model again where it places it, as a start would.
                replicas = await self._start(
                    model_id, keep_alive=keep_alive, avoid=frozenset(avoid), wait="first", reload=True
                )
            replica = self.router.choose(replicas, keys)
            self.router.begin(model_id, replica)
            try:
                result = await send(replica.client)
            except APIError as exc:
                self.router.end(model_id, replica)
                if isinstance(exc, Unreachable):
                    self.router.suspect(replica)
                    avoid.add(replica.name)
                elif exc.code in ELSEWHERE:
                    if exc.code == "runner_draining":
                        avoid.add(replica.name)
                else:
                    raise
                log.info("%s on %s: %s; trying elsewhere", model_id, replica.name, exc.code or exc.status)
                tried.add(replica.name)
                self.placements.drop(model_id)
                failure = exc
                continue
            self.router.served(replica, keys)
            holder = served_by.get()
            if holder is not None:
                holder.append(replica.name)
            return replica, result
        assert failure is not None
        raise failure

    async def _unary(self, model_id: str, keep_alive: float, send: Callable[[Any], Awaitable[T]]) -> T:
        replica, result = await self.on_runner(model_id, keep_alive, send)
        self.router.end(model_id, replica)
        return result

    # --- what routes call ---------------------------------------------------------------------------------

    async def generate(
        self, request: runner_pb.GenerateRequest, images: Sequence[ImageRef] = ()
    ) -> AsyncGenerator[runner_pb.GenerateResponse, None]:
        """The answer's messages; the first is awaited, so a failure at the start raises here. `images`:
        what the request's image parts wait for, read first (a bad one is a 400 before any model starts)."""
        await self.images.fill(request, images)
        keys = prefix_keys(request) if self.router.mode == "affinity" else []
        replica, stream = await self.on_runner(
            request.model_id, request.keep_alive_s, lambda runner: runner.generate(request), keys
        )

        async def answer() -> AsyncGenerator[runner_pb.GenerateResponse, None]:
            try:
                async for message in stream:
                    yield message
            finally:
                self.router.end(request.model_id, replica)

        return answer()

    async def embed(self, request: runner_pb.EmbedRequest, keep_alive: float) -> runner_pb.EmbedResponse:
        return await self._unary(request.model_id, keep_alive, lambda runner: runner.embed(request))

    async def tokenize(self, request: runner_pb.TokenizeRequest) -> runner_pb.TokenizeResponse:
        return await self._unary(request.model_id, 0.0, lambda runner: runner.tokenize(request))

    async def detokenize(self, request: runner_pb.DetokenizeRequest) -> runner_pb.DetokenizeResponse:
        return await self._unary(request.model_id, 0.0, lambda runner: runner.detokenize(request))

    async def start(
        self, model_id: str, overrides: dict[str, Any] | None, keep_alive: float
    ) -> model_pb2.Model:
        """Loads the model's replicas (`replicas` among the overrides, else its parameters.replicas) on
        distinct runners, or renews those that run; answers once they run."""
        overrides = dict(overrides or {})
        replicas = overrides.pop("replicas", None)
        if replicas is not None and (
            isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1
        ):
            raise APIError(
                400,
                "parameters.replicas must be a whole number, 1 or more "
                f"(got {orjson.dumps(replicas).decode()})",
                param="parameters.replicas",
            )
        self.placements.drop(model_id)
        await self._start(
            model_id, replicas=replicas or 0, overrides=overrides, keep_alive=keep_alive, reload=True
        )
        self.placements.drop(model_id)
        return await self.catalog.get_model(model_id)

    async def stop(self, model_id: str) -> model_pb2.Model:
        """Unloads the model from every runner that hosts it (nothing to do when it is not running), and
        tells the catalog to place no replacement."""
        self.placements.drop(model_id)
        try:
            await self.catalog.release(model_id)
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
