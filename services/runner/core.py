"""The runner core: which models are loaded, within a memory budget, for how long, and who waits.

Loading resolves the model's binaries through the catalog (materialising them from a bucket when they
live in object storage), estimates the memory first and refuses clearly when it cannot fit, makes room
by unloading the least recently used idle models, and tells the catalog at once (the heartbeat carries
the loaded models: the catalog derives `running` from it). Requests beyond a model's slots wait in a
FIFO up to `max_queue`; more get RESOURCE_EXHAUSTED (HTTP 429). Idle models unload after their
keep-alive. Knows nothing about gRPC servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from services.common.catalog_client import CatalogClient
from services.common.engine_names import REMOTE_ENGINES
from services.common.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable, Unimplemented
from services.common.gguf_plan import is_projector
from services.common.storage import Storage
from services.runner.engines.base import (
    Delta,
    Engine,
    GenerateRequest,
    LoadSpec,
    Tokenized,
    TokenizeRequest,
    refuse_unsupported,
)
from services.runner.fit import ModelFit, declared_bytes, fit
from services.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

EngineFactory = Callable[[LoadSpec, RunnerSettings], Engine]


@dataclass
class Hosted:
    model_id: str
    engine: Engine
    overrides: dict[str, Any]
    keep_alive_s: float
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0  # requests inside generate/embed (running or waiting for a slot)

    @property
    def expires_at(self) -> float:
        """Unix seconds when an idle model unloads; 0 = never (or busy)."""
        if self.keep_alive_s < 0 or self.active:
            return 0.0
        return time.time() + self.keep_alive_s - (time.monotonic() - self.last_used)

    def touch(self, keep_alive_s: float = 0.0) -> None:
        self.last_used = time.monotonic()
        if keep_alive_s:
            self.keep_alive_s = keep_alive_s


def llamacpp_factory(spec: LoadSpec, settings: RunnerSettings) -> Engine:
    from services.runner.engines.llamacpp import LlamaCppEngine

    params = dict(spec.parameters)
    if not params.get("n_parallel"):
        # Like Ollama: several slots by default, fewer when the KV caches of all would not fit.
        params.setdefault("ctx_len", settings.default_ctx_len)
        n = settings.default_n_parallel
        while n > 1:
            trial = dataclasses.replace(spec, parameters={**params, "n_parallel": n})
            if LlamaCppEngine.estimate_memory(trial) <= settings.memory_budget_bytes:
                break
            n //= 2
        spec = dataclasses.replace(spec, parameters={**params, "n_parallel": n})
    return LlamaCppEngine(spec, threads=settings.threads, default_ctx_len=settings.default_ctx_len)


def api_factory(spec: LoadSpec, settings: RunnerSettings) -> Engine:
    from services.runner.engines.api import ApiEngine

    return ApiEngine(spec, settings)


def tensorrt_factory(spec: LoadSpec, settings: RunnerSettings) -> Engine:
    from services.runner.engines.tensorrt import TensorRTEngine

    return TensorRTEngine(spec, settings)


DEFAULT_ENGINES: dict[str, EngineFactory] = {
    "llamacpp": llamacpp_factory,
    "api": api_factory,
    "tensorrt": tensorrt_factory,
}


class Runner:
    def __init__(
        self,
        settings: RunnerSettings,
        catalog: CatalogClient,
        storage: Storage,
        engines: dict[str, EngineFactory] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        self.engines = engines or dict(DEFAULT_ENGINES)
        self.loaded: dict[str, Hosted] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._memory_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._heartbeat_interval = 2.0
        self.draining = False
        # Models unloaded on purpose (idle, or asked) not yet told to the catalog: it does not replace them.
        self._released: set[str] = set()
        self._assigned: set[asyncio.Task[None]] = set()
        # Time to first token and tokens of each generation, for the process's metrics: __main__ wires them.
        self.on_first_token: Callable[[str, float], None] = lambda model_id, seconds: None
        self.on_finished: Callable[[str, int], None] = lambda model_id, tokens: None

    # --- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="runner-heartbeat"))
        self._tasks.append(asyncio.create_task(self._reaper_loop(), name="runner-keep-alive"))

    async def drain(self) -> None:
        """Takes no new requests (the catalog hears it at once and places elsewhere) and waits, up to
        `drain_timeout_s`, for those in flight to finish."""
        self.draining = True
        busy = sum(h.active for h in self.loaded.values())
        log.info("draining: %d requests in flight, up to %.0f s", busy, self.settings.drain_timeout_s)
        with contextlib.suppress(Exception):
            await self.heartbeat()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while (busy := sum(h.active for h in self.loaded.values())) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if busy:
            log.warning("drain timeout: %d requests still in flight are cut off", busy)
        else:
            log.info("drained: no request in flight")

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise Unavailable(
                f"runner {self.settings.name} is shutting down and takes no new requests",
                code="runner_draining",
            )

    async def close(self) -> None:
        self._stop.set()
        for task in [*self._tasks, *self._assigned]:
            task.cancel()
        for task in [*self._tasks, *self._assigned]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for model_id in list(self.loaded):
            with contextlib.suppress(Exception):
                await self.unload(model_id, report=False)
        with contextlib.suppress(Exception):
            await self.heartbeat()  # tells the catalog nothing runs here any more

    @property
    def memory_used(self) -> int:
        return sum(h.engine.memory_bytes for h in self.loaded.values())

    def describe(self) -> catalog_pb.Runner:
        return catalog_pb.Runner(
            name=self.settings.name,
            address=self.settings.address,
            memory_budget_bytes=self.settings.memory_budget_bytes,
            memory_used_bytes=self.memory_used,
            model_ids=sorted(self.loaded),
            engines=sorted(self.engines),
            draining=self.draining,
            released_model_ids=sorted(self._released),
        )

    async def heartbeat(self) -> None:
        told = self.describe()
        answer = await self.catalog.register_runner(told)
        self._released -= set(told.released_model_ids)
        self._heartbeat_interval = answer.heartbeat_interval_s
        for assignment in answer.assignments:
            self._take(assignment)

    def _take(self, assignment: catalog_pb.Assignment) -> None:
        """Loads a replica the catalog handed to this runner (a model short of the replicas it was started
        with), in the background; a load of it already on its way is left to finish."""
        model_id = assignment.model_id
        lock = self._loading.get(model_id)
        if model_id in self.loaded or (lock is not None and lock.locked()) or self.draining:
            return

        async def load() -> None:
            try:
                overrides = orjson.loads(assignment.overrides_json or "{}")
                await self.load(model_id, overrides, assignment.keep_alive_s)
                log.info("took a replica of %s, as the catalog asked", model_id)
            except Exception as exc:
                log.warning("cannot take the replica of %s the catalog handed here: %s", model_id, exc)

        task = asyncio.create_task(load(), name=f"replica-{model_id}")
        self._assigned.add(task)
        task.add_done_callback(self._assigned.discard)

    async def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            interval = self._heartbeat_interval
            try:
                await self.heartbeat()
            except Exception as exc:
                log.warning("cannot reach the catalog: %s", exc)
                interval = 0.5  # registering soon matters more than a quiet log
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.2, interval))

    async def _reaper_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            now = time.time()
            for hosted in list(self.loaded.values()):
                expires = hosted.expires_at
                if expires and expires <= now and hosted.active == 0:
                    log.info(
                        "unloading %s: idle for its keep-alive (%.0f s)", hosted.model_id, hosted.keep_alive_s
                    )
                    with contextlib.suppress(Exception):
                        await self.unload(hosted.model_id, release=True)

    # --- loading ------------------------------------------------------------------------------------------

    async def load(
        self, model_id: str, overrides: dict[str, Any] | None = None, keep_alive_s: float = 0.0
    ) -> Hosted:
        self._refuse_if_draining()
        overrides = overrides or {}
        keep = keep_alive_s or self.settings.keep_alive_s
        lock = self._loading.setdefault(model_id, asyncio.Lock())
        async with lock:
            hosted = self.loaded.get(model_id)
            if hosted is not None and (not overrides or overrides == hosted.overrides):
                hosted.touch(keep_alive_s)
                return hosted
            if hosted is not None:
                await self.unload(model_id, report=False)
            model = await self.catalog.get_model(model_id)
            factory = self.engines.get(model.engine)
            if factory is None:
                raise Unimplemented(
                    f"this runner has no {model.engine} engine (it runs {', '.join(sorted(self.engines))})",
                    code="engine_unavailable",
                )
            spec = await asyncio.to_thread(self._spec, model, overrides)
            engine = factory(spec, self.settings)
            need = await asyncio.to_thread(lambda: engine.memory_estimate.bytes)
            await self._make_room(model_id, need)
            started = time.perf_counter()
            try:
                await engine.load()
            except Exception:
                with contextlib.suppress(Exception):
                    await engine.unload()
                raise
            hosted = Hosted(model_id=model_id, engine=engine, overrides=overrides, keep_alive_s=keep)
            self.loaded[model_id] = hosted
            self._released.discard(model_id)
            log.info(
                "loaded %s in %.2f s (%s, ~%d MiB)",
                model_id,
                time.perf_counter() - started,
                engine.name,
                engine.memory_bytes >> 20,
            )
        with contextlib.suppress(Exception):
            await self.heartbeat()  # the model is "running" as soon as the load returns
        return hosted

    def _spec(self, model: model_pb2.Model, overrides: dict[str, Any]) -> LoadSpec:
        if model.engine in REMOTE_ENGINES:
            return self._files_spec(model, overrides, [])
        missing = [b.name for b in model.binaries if not b.present]
        if missing or not model.binaries:
            raise FailedPrecondition(
                f"{model.id} is not downloaded ({', '.join(missing) or 'no binary'} missing): pull it first",
                code="model_not_downloaded",
            )
        folder = model.id.split("/", 1)[0]
        paths = [
            Path(b.external_path)
            if b.external_path
            else self.storage.materialize(folder, b.name, sha256=b.sha256)
            for b in model.binaries
        ]
        return self._files_spec(model, overrides, paths)

    def _files_spec(self, model: model_pb2.Model, overrides: dict[str, Any], paths: list[Path]) -> LoadSpec:
        """The spec of a model whose binaries are at `paths` (in the order of model.binaries; none for a
        remote engine)."""
        files: list[Path] = []
        mmproj: Path | None = None
        for b, path in zip(model.binaries, paths, strict=True) if paths else ():
            if is_projector(b.name):
                mmproj = path
            else:
                files.append(path)
        if paths and not files:
            raise FailedPrecondition(f"{model.id} has no model weights, only a projector", code="no_weights")
        return LoadSpec(
            model_id=model.id,
            files=files,
            mmproj=mmproj,
            parameters={**orjson.loads(model.parameters_json or "{}"), **overrides},
            metadata=orjson.loads(model.metadata_json or "{}"),
            source_url=model.source_url,
        )

    def _estimate_spec(self, model: model_pb2.Model) -> LoadSpec:
        """The spec a load would use, from the files already on this runner (nothing is fetched or
        hashed), else with the declared sizes in their place."""
        if model.engine in REMOTE_ENGINES:
            return self._files_spec(model, {}, [])
        folder = model.id.split("/", 1)[0]
        here = [
            (Path(b.external_path) if Path(b.external_path).is_file() else None)
            if b.external_path
            else self.storage.local_file(folder, b.name)
            for b in model.binaries
        ]
        paths = [p for p in here if p is not None]
        if model.binaries and len(paths) == len(here):
            return self._files_spec(model, {}, paths)
        declared = declared_bytes(model)
        if not declared:
            raise FailedPrecondition(
                f"{model.id} is not on this runner and declares no size (metadata.size)", code="size_unknown"
            )
        spec = self._files_spec(model, {}, [])
        return dataclasses.replace(spec, declared_bytes=declared)

    async def _make_room(self, model_id: str, need: int) -> None:
        budget = self.settings.memory_budget_bytes
        if fit(need, budget, 0) == "wont_fit":
            raise ResourceExhausted(
                f"{model_id} needs ~{need >> 20} MiB (weights + KV cache) and this runner's budget is "
                f"{budget >> 20} MiB: lower ctx_len or n_parallel, or use a bigger runner",
                code="model_too_large",
            )
        async with self._memory_lock:
            idle = sorted((h for h in self.loaded.values() if h.active == 0), key=lambda h: h.last_used)
            while fit(need, budget, self.memory_used) != "fits" and idle:
                victim = idle.pop(0)
                log.info("unloading %s to make room for %s", victim.model_id, model_id)
                await self.unload(victim.model_id, report=False)
            if fit(need, budget, self.memory_used) != "fits":
                busy = ", ".join(sorted(self.loaded))
                raise ResourceExhausted(
                    f"{model_id} needs ~{need >> 20} MiB; {self.memory_used >> 20} of {budget >> 20} MiB are "
                    f"used by models serving requests ({busy}): try again when they are idle",
                    code="insufficient_memory",
                )

    async def unload(self, model_id: str, *, report: bool = True, release: bool = False) -> None:
        """`release`: on purpose (idle, or asked), so that the catalog does not place a replacement."""
        hosted = self.loaded.pop(model_id, None)
        if hosted is None:
            raise NotFound(
                f"{model_id} is not loaded on this runner", code="model_not_loaded", param="model_id"
            )
        if release:
            self._released.add(model_id)
        await hosted.engine.unload()
        log.info("unloaded %s", model_id)
        if report:
            with contextlib.suppress(Exception):
                await self.heartbeat()

    # --- memory estimates ---------------------------------------------------------------------------------

    async def estimate(self, model_ids: list[str]) -> list[ModelFit]:
        """Each model's memory estimate (every model of the catalog when `model_ids` is empty) and its fit
        against the budget and what is loaded now. The estimate is the one a load decides by: the engine the
        load would make, with the parameters and slots it would choose; nothing is loaded or fetched."""
        models = await self.catalog.list_models()
        if model_ids:
            wanted = set(model_ids)
            models = [m for m in models if m.id in wanted]
        fits = {h.model_id: self._loaded_fit(h) for h in self.loaded.values()}
        others = [m for m in models if m.id not in fits]
        used = self.memory_used
        fits |= await asyncio.to_thread(lambda: {m.id: self._estimate_fit(m, used) for m in others})
        known = {m.id for m in models}
        missing = {i: ModelFit(i, error=f"{i} is not in the catalog") for i in model_ids if i not in known}
        return [fits[m.id] for m in models if m.id in fits] + list(missing.values())

    def _loaded_fit(self, hosted: Hosted) -> ModelFit:
        basis = hosted.engine.memory_estimate.basis
        return ModelFit(hosted.model_id, hosted.engine.memory_bytes, "fits", basis, loaded=True)

    def _estimate_fit(self, model: model_pb2.Model, used: int) -> ModelFit:
        factory = self.engines.get(model.engine)
        if factory is None:
            return ModelFit(model.id, error=f"this runner has no {model.engine} engine")
        try:
            estimate = factory(self._estimate_spec(model), self.settings).memory_estimate
        except Exception as exc:  # one model that cannot be estimated says why; the others still are
            log.debug("no memory estimate of %s: %s", model.id, exc)
            return ModelFit(model.id, error=str(exc))
        verdict = fit(estimate.bytes, self.settings.memory_budget_bytes, used)
        return ModelFit(model.id, estimate.bytes, verdict, estimate.basis)

    # --- serving ------------------------------------------------------------------------------------------

    def _hosted(self, model_id: str) -> Hosted:
        self._refuse_if_draining()
        hosted = self.loaded.get(model_id)
        if hosted is None:
            raise FailedPrecondition(f"{model_id} is not loaded on this runner", code="model_not_loaded")
        if hosted.active >= hosted.engine.slots + self.settings.max_queue:
            raise ResourceExhausted(
                f"{model_id} is busy: {hosted.engine.slots} requests run and {self.settings.max_queue} wait",
                code="queue_full",
            )
        return hosted

    async def generate(
        self, model_id: str, request: GenerateRequest, keep_alive_s: float = 0.0
    ) -> AsyncGenerator[Delta, None]:
        started = time.perf_counter()
        hosted = self._hosted(model_id)
        refuse_unsupported(hosted.engine, request)  # nothing the engine cannot honour is ignored
        hosted.active += 1
        hosted.touch(keep_alive_s)
        try:
            stream = hosted.engine.generate(request)
            async with contextlib.aclosing(stream):  # the engine's finally (cancel) runs when we stop
                try:
                    first = await asyncio.wait_for(anext(stream), self.settings.queue_timeout_s)
                except TimeoutError:
                    raise Unavailable(
                        f"{model_id} did not start answering within {self.settings.queue_timeout_s:.0f} s",
                        code="queue_timeout",
                    ) from None
                except StopAsyncIteration:
                    return
                self.on_first_token(model_id, time.perf_counter() - started)
                yield first
                generated = first.completion_tokens  # each choice's last delta carries its usage
                async for delta in stream:
                    generated += delta.completion_tokens
                    yield delta
            self.on_finished(model_id, generated)
        finally:
            hosted.active -= 1
            hosted.touch()

    async def tokenize(self, model_id: str, request: TokenizeRequest) -> Tokenized:
        return await self._hosted(model_id).engine.tokenize(request)

    async def detokenize(self, model_id: str, tokens: list[int]) -> str:
        return await self._hosted(model_id).engine.detokenize(tokens)

    async def embed(
        self, model_id: str, inputs: list[str], keep_alive_s: float = 0.0
    ) -> tuple[list[list[float]], int]:
        hosted = self._hosted(model_id)
        hosted.active += 1
        hosted.touch(keep_alive_s)
        try:
            return await hosted.engine.embed(inputs)
        finally:
            hosted.active -= 1
            hosted.touch()
