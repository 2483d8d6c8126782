"""A runner that is shutting down (SIGTERM: `Runner.drain`) finishes the stream it is answering, takes no new
request, and the catalog and the gateway send new requests to another runner. Two real runners with the
tiny GGUF, the catalog on its gRPC server, the gateway over ASGI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.errors import Unavailable
from services.common.storage import StorageSettings, make_storage
from services.runner.engines.base import GenerateRequest, Sampling
from services.runner.settings import RunnerSettings
from tests.harness import TINY_CHAT, serving_catalog, serving_gateway, serving_runner, write_tiny_chat_model

MODEL = TINY_CHAT


def chat(content: str, max_tokens: int) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


async def running_on(http: httpx.AsyncClient) -> set[str]:
    return {r["runner"] for r in (await http.get("/v1/running")).json()["data"] if r["model_id"] == MODEL}


async def test_a_draining_runner_finishes_its_stream_and_new_requests_go_elsewhere(tmp_path: Path) -> None:
    root = tmp_path / "jan"
    write_tiny_chat_model(root)
    catalog = Catalog(CatalogSettings(root=root, port=0, seed_models_dir=None))
    storage = make_storage(StorageSettings(), root)
    async with serving_catalog(catalog) as cat_address:

        def settings(name: str) -> RunnerSettings:
            return RunnerSettings(
                root=root, name=name, port=0, catalog_address=cat_address, threads=1, drain_timeout_s=20
            )

        async with (
            serving_runner(settings("r1"), storage) as (r1, _),
            serving_runner(settings("r2"), storage) as (r2, _),
            serving_gateway(catalog_address=cat_address) as gw,
        ):
            http = gw.http
            # The model runs on one of the runners (placed by the catalog, loaded just in time).
            reply = await http.post("/v1/chat/completions", json=chat("hi", 3))
            assert reply.status_code == 200, reply.text
            hosting = {"r1": r1, "r2": r2}[next(iter(await running_on(http)))]
            other = r2 if hosting is r1 else r1

            # A long answer is streaming there when the runner is told to shut down.
            stream = hosting.generate(
                MODEL,
                GenerateRequest(
                    messages=[{"role": "user", "content": "a long story"}],
                    prompt=None,
                    sampling=Sampling(temperature=0.0, max_tokens=400),
                ),
            )
            await anext(stream)
            drain = asyncio.create_task(hosting.drain())
            await asyncio.sleep(0.05)
            assert hosting.draining and not drain.done()  # waiting for the stream in flight

            # New requests go to the other runner (loaded there just in time), and the draining
            # runner refuses any that reach it.
            reply = await http.post("/v1/chat/completions", json=chat("hey", 3))
            assert reply.status_code == 200, reply.text
            assert MODEL in other.loaded
            with pytest.raises(Unavailable) as refused:
                await anext(
                    hosting.generate(
                        MODEL,
                        GenerateRequest(
                            messages=[{"role": "user", "content": "x"}],
                            prompt=None,
                            sampling=Sampling(),
                        ),
                    )
                )
            assert refused.value.code == "runner_draining"

            # The stream that was running ends normally, and then the drain is over.
            deltas = [d async for d in stream]
            assert deltas[-1].finish_reason == "length"
            await asyncio.wait_for(drain, 5)

            placed = await catalog.placement.place(MODEL)
            assert placed.runner.name == other.settings.name and placed.loaded
            assert any(r.name == hosting.settings.name and r.draining for r in catalog.live_runners())
