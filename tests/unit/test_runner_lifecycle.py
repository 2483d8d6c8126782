"""The runner core's own rules with a fake engine (tests/fakes/engine.py, through the runner's `engines=`
seam) and a fake catalog: loads within the memory budget, least-recently-used idle models unloaded to make
room and busy ones never, keep-alive, the queue bound and the queue timeout, a client that goes away, and
drain. No model, no gRPC server: milliseconds, but for the keep-alive sweep (once a second)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.common.storage import StorageSettings, make_storage
from services.runner.core import Runner
from services.runner.engines.base import Delta, GenerateRequest, Sampling
from services.runner.settings import RunnerSettings
from tests.fakes.catalog_client import FakeCatalogClient
from tests.fakes.engine import ENGINE, FakeEngines, MiB
from tests.harness import eventually

BUDGET_MIB = 100


@dataclass
class Env:
    runner: Runner
    catalog: FakeCatalogClient
    engines: FakeEngines
    root: Path

    def model(self, model_id: str, **parameters: Any) -> str:
        """A downloaded model of the fake engine (its size: `memory_mib`, else the engines' default)."""
        binary = self.root / f"{model_id.replace('/', '-')}.bin"
        binary.write_bytes(b"weights")
        self.catalog.add_model(model_id, binary, ENGINE, parameters)
        return model_id


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[Env]]:
    @contextlib.asynccontextmanager
    async def make(
        *, start: bool = False, engines: FakeEngines | None = None, **settings: Any
    ) -> AsyncIterator[Env]:
        values: dict[str, Any] = {
            "root": tmp_path,
            "name": "r1",
            "port": 0,
            "memory_budget_bytes": BUDGET_MIB * MiB,
            **settings,
        }
        catalog, engines = FakeCatalogClient(), engines or FakeEngines()
        storage = make_storage(StorageSettings(), tmp_path)
        runner = Runner(RunnerSettings(**values), catalog, storage, engines={ENGINE: engines})  # type: ignore[arg-type]
        if start:
            await runner.start()
        try:
            yield Env(runner, catalog, engines, tmp_path)
        finally:
            engines.gate.set()
            await runner.close()

    return make


def ask(text: str, max_tokens: int = 64, **fields: Any) -> GenerateRequest:
    return GenerateRequest(
        messages=[{"role": "user", "content": text}],
        prompt=None,
        sampling=Sampling(max_tokens=max_tokens),
        **fields,
    )


async def answer(runner: Runner, model_id: str, text: str, **fields: Any) -> list[Delta]:
    return [d async for d in runner.generate(model_id, ask(text, **fields))]


async def test_a_generation_streams_the_engines_answer_with_usage_on_the_last_delta(make_env) -> None:
    async with make_env() as env:
        model = env.model("a/a")
        await env.runner.load(model)
        deltas = await answer(env.runner, model, "one two three")
        assert "".join(d.text for d in deltas) == "one two three"
        assert [d.finish_reason for d in deltas] == [None, None, "stop"]
        assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (3, 3)
        cut = await answer(env.runner, model, "one two three", max_tokens=2)
        assert cut[-1].finish_reason == "length" and cut[-1].completion_tokens == 2
        assert env.runner.loaded[model].active == 0


async def test_a_load_is_told_to_the_catalog_at_once_with_the_memory_it_takes(make_env) -> None:
    async with make_env() as env:
        await env.runner.load(env.model("a/a", memory_mib=30))
        told = env.catalog.told
        assert list(told.model_ids) == ["a/a"] and told.memory_used_bytes == 30 * MiB
        assert told.memory_budget_bytes == BUDGET_MIB * MiB and list(told.engines) == [ENGINE]
        await env.runner.unload("a/a")
        assert list(env.catalog.told.model_ids) == [] and env.catalog.told.memory_used_bytes == 0


async def test_a_load_beyond_the_budget_unloads_the_least_recently_used_idle_model(make_env) -> None:
    async with make_env() as env:
        a, b, c = env.model("a/a"), env.model("b/b"), env.model("c/c")  # 40 MiB each, 100 MiB budget
        await env.runner.load(a)
        await env.runner.load(b)
        await answer(env.runner, a, "a is used again")  # b is now the least recently used
        await env.runner.load(c)
        assert sorted(env.runner.loaded) == [a, c]
        assert env.engines.unloaded() == [b]
        assert env.runner.memory_used == 80 * MiB


async def test_a_busy_model_is_never_unloaded_to_make_room(make_env) -> None:
    async with make_env() as env:
        busy, idle, big = (
            env.model("busy/m", memory_mib=60),
            env.model("idle/m", memory_mib=30),
            env.model("big/m", memory_mib=50),
        )
        await env.runner.load(busy)
        await env.runner.load(idle)
        env.engines.gate.clear()  # the stream stops after its first token
        stream = env.runner.generate(busy, ask("a long answer"))
        await anext(stream)
        with pytest.raises(ResourceExhausted) as refused:
            await env.runner.load(big)
        assert refused.value.code == "insufficient_memory" and "busy/m" in str(refused.value)
        assert sorted(env.runner.loaded) == [busy]  # the idle one went, in vain; the busy one stays
        env.engines.gate.set()
        assert "".join([d.text async for d in stream]) == " long answer"
        await env.runner.load(big)  # idle now: it makes room
        assert sorted(env.runner.loaded) == [big]


async def test_a_model_larger_than_the_whole_budget_is_refused_and_nothing_is_unloaded(make_env) -> None:
    async with make_env() as env:
        await env.runner.load(env.model("a/a"))
        with pytest.raises(ResourceExhausted) as refused:
            await env.runner.load(env.model("huge/m", memory_mib=BUDGET_MIB + 1))
        assert refused.value.code == "model_too_large"
        assert list(env.runner.loaded) == ["a/a"] and env.engines.unloaded() == []


async def test_keep_alive_unloads_idle_models_only(make_env) -> None:
    async with make_env(start=True, engines=FakeEngines(memory_mib=20)) as env:
        short, forever, busy = env.model("short/m"), env.model("forever/m"), env.model("busy/m")
        await env.runner.load(short, keep_alive_s=0.05)
        await env.runner.load(forever, keep_alive_s=-1)
        await env.runner.load(busy, keep_alive_s=0.05)
        assert env.runner.loaded[short].expires_at > 0 and env.runner.loaded[forever].expires_at == 0
        env.engines.gate.clear()
        stream = env.runner.generate(busy, ask("still answering"))
        await anext(stream)
        assert env.runner.loaded[busy].expires_at == 0  # busy: it does not expire

        await eventually(lambda: short not in env.runner.loaded, timeout=5, what="the keep-alive sweep")
        assert sorted(env.runner.loaded) == [busy, forever]
        # Unloaded on purpose: the catalog is told at once, and not to place a replacement.
        assert short not in env.catalog.told.model_ids
        assert any(short in told.released_model_ids for told in env.catalog.heartbeats)
        env.engines.gate.set()
        await stream.aclose()


async def test_requests_beyond_the_slots_and_the_queue_are_refused_and_the_others_complete(make_env) -> None:
    async with make_env(max_queue=1) as env:  # the fake engine has 1 slot
        model = env.model("q/m")
        await env.runner.load(model)
        env.engines.gate.clear()
        running = env.runner.generate(model, ask("runs first"))
        assert (await anext(running)).text == "runs"
        waiting = asyncio.create_task(answer(env.runner, model, "waits its turn"))
        await eventually(lambda: env.runner.loaded[model].active == 2, what="the second request queued")
        with pytest.raises(ResourceExhausted) as refused:
            await answer(env.runner, model, "one too many")
        assert refused.value.code == "queue_full"

        env.engines.gate.set()
        assert "".join([d.text async for d in running]) == " first"  # not cut off
        assert "".join(d.text for d in await waiting) == "waits its turn"
        assert env.runner.loaded[model].active == 0


async def test_a_request_that_waits_for_a_slot_too_long_gets_queue_timeout(make_env) -> None:
    async with make_env(queue_timeout_s=0.05) as env:
        model = env.model("q/m")
        await env.runner.load(model)
        env.engines.gate.clear()
        running = env.runner.generate(model, ask("holds the slot"))
        await anext(running)
        with pytest.raises(Unavailable) as late:
            await answer(env.runner, model, "never starts")
        assert late.value.code == "queue_timeout"
        assert env.runner.loaded[model].active == 1  # the refused one left the queue
        await running.aclose()


async def test_a_client_that_goes_away_frees_its_slot(make_env) -> None:
    async with make_env() as env:
        model = env.model("c/m")
        await env.runner.load(model)
        env.engines.gate.clear()
        stream = env.runner.generate(model, ask("cut short by the client"))
        await anext(stream)
        await stream.aclose()
        assert env.runner.loaded[model].active == 0
        env.engines.gate.set()
        assert "".join(d.text for d in await answer(env.runner, model, "next one")) == "next one"


async def test_a_feature_the_engine_lacks_is_refused_naming_the_field(make_env) -> None:
    async with make_env() as env:
        model = env.model("f/m")
        await env.runner.load(model)
        with pytest.raises(InvalidArgument) as refused:
            await answer(env.runner, model, "two choices", n=2)
        assert refused.value.param == "n" and refused.value.code == "unsupported_parameter"
        assert env.runner.loaded[model].active == 0


async def test_drain_waits_for_the_stream_in_flight_and_refuses_new_work(make_env) -> None:
    async with make_env(drain_timeout_s=5) as env:
        model = env.model("d/m")
        await env.runner.load(model)
        env.engines.gate.clear()
        stream = env.runner.generate(model, ask("finishes during the drain"))
        await anext(stream)
        drain = asyncio.create_task(env.runner.drain())
        await eventually(lambda: env.runner.draining, what="the drain to begin")
        assert env.catalog.told.draining  # the catalog heard it at once
        with pytest.raises(Unavailable) as refused:
            await answer(env.runner, model, "too late")
        assert refused.value.code == "runner_draining"
        with pytest.raises(Unavailable):
            await env.runner.load(env.model("other/m"))
        await asyncio.sleep(0.1)
        assert not drain.done()  # still waiting for the stream

        env.engines.gate.set()
        assert [d.finish_reason async for d in stream][-1] == "stop"
        await asyncio.wait_for(drain, 2)


async def test_drain_gives_up_after_its_timeout(make_env) -> None:
    async with make_env(drain_timeout_s=0.1) as env:
        model = env.model("d/m")
        await env.runner.load(model)
        env.engines.gate.clear()
        stream = env.runner.generate(model, ask("never finishes in time"))
        await anext(stream)
        await asyncio.wait_for(env.runner.drain(), 2)
        assert env.runner.loaded[model].active == 1
        await stream.aclose()
