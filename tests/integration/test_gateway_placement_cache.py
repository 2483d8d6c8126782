"""The gateway's placement hints (gateway/serving.py PlacementCache) against a real catalog and a real
runner (llama.cpp, tiny GGUF): a running model is served without asking the catalog again, and every way
a hint can go stale (stop, delete, a runner that lost the model, a runner that died and came back) still
ends in a correct answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from grpc import aio

from jan.runner.v1 import runner_service_pb2 as runner_pb
from jan.runner.v1 import runner_service_pb2_grpc as runner_grpc
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.catalog_client import CatalogClient
from services.common.grpcserver import GrpcServer
from services.common.storage import StorageSettings, make_storage
from services.runner.core import Runner
from services.runner.servicer import make_server as make_runner_server
from services.runner.settings import RunnerSettings
from tests.harness import TINY_CHAT, Gateway, serving_catalog, serving_gateway, write_tiny_chat_model

pytest.importorskip("llama_cpp")

MODEL = TINY_CHAT
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 3}


@dataclass
class Env:
    root: Path
    gateway: Gateway
    catalog: Catalog
    catalog_address: str
    runner_port: int
    placed: list[str]  # model ids of every PlaceModel the catalog answered
    runner: Runner | None = None
    runner_server: GrpcServer | None = None
    clients: list[CatalogClient] = field(default_factory=list)

    async def start_runner(self) -> None:
        """A runner named r1 on runner_port (the same address every time), registered with the catalog."""
        settings = RunnerSettings(
            root=self.root, name="r1", port=0, catalog_address=self.catalog_address, threads=1
        )
        client = CatalogClient(settings.catalog_address)
        self.clients.append(client)
        runner = Runner(settings, client, make_storage(StorageSettings(), self.root))
        server = make_runner_server(runner)
        self.runner_port = server.bind(f"127.0.0.1:{self.runner_port}")
        settings.advertise_address = f"127.0.0.1:{self.runner_port}"
        await server.start()
        await runner.start()
        await server.set_serving(True)
        await runner.heartbeat()
        self.runner, self.runner_server = runner, server

    async def crash_runner(self) -> None:
        """The runner's server goes away without telling the catalog (as a kill -9 would)."""
        assert self.runner is not None and self.runner_server is not None

        async def silent() -> None:
            return None

        self.runner.heartbeat = silent  # type: ignore[method-assign]
        await self.runner_server.stop(0)
        await self.runner.close()
        self.runner = self.runner_server = None

    @property
    def http(self) -> httpx.AsyncClient:
        return self.gateway.http

    async def chat(self, **extra: Any) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json={**CHAT, **extra})


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., AsyncIterator[Env]]:
    async def make(**gateway: Any) -> AsyncIterator[Env]:
        root = tmp_path / "jan"
        write_tiny_chat_model(root)
        catalog = Catalog(CatalogSettings(root=root, port=0, seed_models_dir=None))
        placed: list[str] = []
        place = catalog.placement.place

        async def counting_place(model_id: str, **how: Any) -> Any:
            placed.append(model_id)
            return await place(model_id, **how)

        catalog.placement.place = counting_place  # type: ignore[method-assign]
        async with serving_catalog(catalog) as address:
            env: Env | None = None
            try:
                async with serving_gateway(catalog_address=address, **gateway) as gw:
                    env = Env(root, gw, catalog, address, 0, placed)
                    await env.start_runner()
                    yield env
            finally:
                if env is not None:
                    if env.runner_server is not None:
                        await env.runner_server.stop(0)
                    if env.runner is not None:
                        await env.runner.close()
                    for client in env.clients:
                        await client.close()

    return make


def _hint(env: Env) -> Any:
    return env.gateway.serving.placements.get(MODEL)


async def _unload_on_the_runner(env: Env) -> None:
    """UnloadModel straight on the runner's gRPC server, behind the gateway's back."""
    async with aio.insecure_channel(f"127.0.0.1:{env.runner_port}") as channel:
        await runner_grpc.RunnerServiceStub(channel).UnloadModel(
            runner_pb.UnloadModelRequest(model_id=MODEL), timeout=10
        )


async def test_a_running_model_is_served_without_asking_the_catalog_again(make_env) -> None:
    async for env in make_env():
        first = await env.chat()
        assert first.status_code == 200, first.text
        # Placed (not running), started just in time (placed to start), remembered.
        assert env.placed == [MODEL] * 2
        assert _hint(env) is not None
        assert (await env.chat()).status_code == 200
        async with env.http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status_code == 200
            assert [line async for line in resp.aiter_lines() if line][-1] == "data: [DONE]"
        done = await env.http.post("/v1/completions", json={"model": MODEL, "prompt": "a"})
        assert done.status_code == 200
        assert (await env.http.post("/v1/embeddings", json={"model": MODEL, "input": "a"})).status_code == 200
        assert env.placed == [MODEL] * 2

        # start always goes through the catalog (and drops the hint).
        assert (await env.http.post(f"/v1/models/{MODEL}/start")).status_code == 200
        assert env.placed == [MODEL] * 3
        assert (await env.chat()).status_code == 200
        assert (await env.chat()).status_code == 200
        assert env.placed == [MODEL] * 4


async def test_a_hint_expires_after_its_ttl(make_env) -> None:
    async for env in make_env(placement_ttl_s=0.3):
        assert (await env.chat()).status_code == 200
        assert (await env.chat()).status_code == 200
        assert env.placed == [MODEL] * 2  # placed, and placed to start
        await asyncio.sleep(0.4)
        assert (await env.chat()).status_code == 200
        assert env.placed == [MODEL] * 3


async def test_no_hints_with_a_ttl_of_zero(make_env) -> None:
    async for env in make_env(placement_ttl_s=0):
        for _ in range(3):
            assert (await env.chat()).status_code == 200
        assert env.placed == [MODEL] * 4 and _hint(env) is None  # the first also placed to start


async def test_stop_drops_the_hint(make_env) -> None:
    async for env in make_env(jit_start=False):
        assert (await env.http.post(f"/v1/models/{MODEL}/start")).status_code == 200
        assert (await env.chat()).status_code == 200 and _hint(env) is not None
        stop = await env.http.post(f"/v1/models/{MODEL}/stop")
        assert stop.json()["state"] == "stopped"
        assert _hint(env) is None
        placed = len(env.placed)
        resp = await env.chat()
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "model_not_running", resp.text
        assert len(env.placed) == placed + 1  # the catalog said so, not a stale hint


async def test_deleting_the_model_drops_the_hints(make_env) -> None:
    async for env in make_env():
        assert (await env.chat()).status_code == 200 and _hint(env) is not None
        assert (await env.http.delete(f"/v1/models/{MODEL}")).status_code == 200
        resp = await env.chat()
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found", resp.text


async def test_a_runner_that_lost_the_model_still_answers(make_env) -> None:
    async for env in make_env():
        assert (await env.chat()).status_code == 200 and _hint(env) is not None
        await _unload_on_the_runner(env)  # the runner tells the catalog at once
        resp = await env.chat()
        assert resp.status_code == 200, resp.text
        assert env.placed == [MODEL] * 4  # the hint was wrong: placed, and placed to start, again
        assert (await env.catalog.get(MODEL)).state == 4  # running

        # The same when the catalog has not heard of it yet (it still says "loaded" there): the runner's
        # word wins and the model is loaded again. Embeddings and streams as well.
        assert env.runner is not None
        await env.runner.unload(MODEL, report=False)
        resp = await env.chat()
        assert resp.status_code == 200, resp.text
        await env.runner.unload(MODEL, report=False)
        assert (await env.http.post("/v1/embeddings", json={"model": MODEL, "input": "a"})).status_code == 200
        await env.runner.unload(MODEL, report=False)
        async with env.http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status_code == 200
            lines = [line async for line in resp.aiter_lines() if line]
        assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines), lines


async def test_a_runner_that_died_and_came_back_serves_at_once(make_env) -> None:
    async for env in make_env():
        assert (await env.chat()).status_code == 200 and _hint(env) is not None
        await env.crash_runner()
        # While it is down (the catalog still lists it): quick 503s, in the one error shape. Several, over
        # a few seconds: long enough for a reused gRPC channel to be deep in its reconnect backoff.
        for _ in range(6):
            resp = await env.chat()
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "runner_unavailable", resp.text
            await asyncio.sleep(0.5)
        assert (await env.http.get("/v1/running")).json()["data"] == []

        await env.start_runner()  # same name, same address
        for _ in range(3):
            resp = await env.chat()
            assert resp.status_code == 200, resp.text  # the first request after the restart included
        assert (await env.http.get("/v1/running")).json()["data"][0]["model_id"] == MODEL


async def test_a_hinted_runner_that_died_is_replaced_by_the_catalog_choice(make_env) -> None:
    async for env in make_env():
        assert (await env.chat()).status_code == 200 and _hint(env) is not None
        await env.crash_runner()
        await env.start_runner()  # back before any request noticed; the old connection is dead
        resp = await env.chat()
        assert resp.status_code == 200, resp.text
