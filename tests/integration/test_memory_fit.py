"""Memory fit: a runner's EstimateModels (the estimate a load decides by, from GGUF headers or declared
sizes, against its budget and what it has loaded) behind its real gRPC server and a real catalog, and
GET /v1/models/fit through the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from grpc import aio

from jan.runner.v1 import runner_service_pb2 as pb
from jan.runner.v1 import runner_service_pb2_grpc as pb_grpc
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.storage import StorageSettings, make_storage
from services.runner.engines.base import LoadSpec
from services.runner.engines.llamacpp import LlamaCppEngine
from services.runner.fit import fit
from services.runner.settings import RunnerSettings
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import (
    serving_catalog,
    serving_gateway,
    serving_runner,
    serving_stack,
    write_tiny_chat_model,
)

pytest.importorskip("llama_cpp")

PARAMS = {"ctx_len": 256, "n_parallel": 1, "temperature": 0}
TB = 10**12


@dataclass
class Env:
    stub: pb_grpc.RunnerServiceStub
    catalog: Catalog
    root: Path


def tiny(root: Path, model_id: str, parameters: dict | None = None) -> Path:
    folder, name = model_id.split("/")
    (root / "models" / folder).mkdir(parents=True, exist_ok=True)
    path = root / "models" / folder / f"{name}.gguf"
    write_tiny_gguf(path)
    (root / "models" / folder / f"{name}.json").write_bytes(
        orjson.dumps({"parameters": PARAMS if parameters is None else parameters})
    )
    return path


def declared(root: Path, model_id: str, metadata: dict) -> None:
    """A model not downloaded: a file URL that is never fetched, and what the object declares."""
    folder, name = model_id.split("/")
    (root / "models" / folder).mkdir(parents=True, exist_ok=True)
    obj = {"source_url": f"https://example.invalid/{name}.gguf", "parameters": PARAMS, "metadata": metadata}
    (root / "models" / folder / f"{name}.json").write_bytes(orjson.dumps(obj))


def header_estimate(path: Path, parameters: dict = PARAMS) -> int:
    spec = LoadSpec(model_id="x/y", files=[path], mmproj=None, parameters=parameters, metadata={})
    return LlamaCppEngine.estimate_memory(spec)


@asynccontextmanager
async def runner_env(root: Path, budget: int) -> AsyncIterator[Env]:
    catalog = Catalog(CatalogSettings(root=root, port=0, seed_models_dir=None))
    async with serving_catalog(catalog) as cat_address:
        settings = RunnerSettings(
            root=root, name="r1", port=0, catalog_address=cat_address, threads=1, memory_budget_bytes=budget
        )
        async with (
            serving_runner(settings, make_storage(StorageSettings(), root), heartbeat=False) as (_, address),
            aio.insecure_channel(address) as channel,
        ):
            yield Env(pb_grpc.RunnerServiceStub(channel), catalog, root)


async def estimates(
    env: Env, *model_ids: str
) -> tuple[pb.EstimateModelsResponse, dict[str, pb.ModelEstimate]]:
    reply = await env.stub.EstimateModels(pb.EstimateModelsRequest(model_ids=list(model_ids)))
    return reply, {e.model_id: e for e in reply.estimates}


def test_the_fit_rule() -> None:
    assert fit(10, 100, 0) == "fits"
    assert fit(10, 100, 90) == "fits"  # exactly the free part
    assert fit(10, 100, 91) == "tight"
    assert fit(100, 100, 50) == "tight"
    assert fit(101, 100, 0) == "wont_fit"


async def test_header_size_remote_and_unknown_estimates(tmp_path: Path) -> None:
    root = tmp_path / "jan"
    gguf = tiny(root, "tiny/a")
    declared(root, "big/huge", {"size": 10 * TB})
    declared(root, "small/declared", {"binaries": [{"url": "https://example.invalid/s.gguf", "size": 1000}]})
    declared(root, "nosize/x", {})
    remote = {"source_url": "https://api.example.invalid/v1/models/gpt", "metadata": {"engine": "api"}}
    (root / "models" / "remote").mkdir(parents=True)
    (root / "models" / "remote" / "gpt.json").write_bytes(orjson.dumps(remote))
    async with runner_env(root, 4 * 1024**3) as env:
        reply, by_id = await estimates(env)
        assert (
            reply.runner == "r1" and reply.memory_budget_bytes == 4 * 1024**3 and reply.memory_used_bytes == 0
        )
        assert set(by_id) == {"tiny/a", "big/huge", "small/declared", "nosize/x", "remote/gpt"}

        a = by_id["tiny/a"]
        assert (a.basis, a.fit, a.memory_bytes) == (
            pb.MEMORY_BASIS_HEADER,
            pb.FIT_FITS,
            header_estimate(gguf),
        )

        huge = by_id["big/huge"]
        assert (huge.basis, huge.fit) == (pb.MEMORY_BASIS_SIZE, pb.FIT_WONT_FIT)
        assert huge.memory_bytes > 10 * TB and not huge.error

        small = by_id["small/declared"]
        assert (small.basis, small.fit) == (pb.MEMORY_BASIS_SIZE, pb.FIT_FITS)
        # The declared bytes stand for the weights, with a 7B-class KV cache (256 KiB a token).
        assert small.memory_bytes - 1000 > 256 * 256 * 1024

        unknown = by_id["nosize/x"]
        assert unknown.fit == pb.FIT_UNSPECIFIED and unknown.memory_bytes == 0
        assert "declares no size" in unknown.error

        gpt = by_id["remote/gpt"]
        assert (gpt.basis, gpt.fit, gpt.memory_bytes) == (pb.MEMORY_BASIS_REMOTE, pb.FIT_FITS, 0)

        # Asked by id: those only, and an id the catalog lacks says so.
        _, some = await estimates(env, "tiny/a", "no/such")
        assert set(some) == {"tiny/a", "no/such"}
        assert some["no/such"].fit == pb.FIT_UNSPECIFIED and "not in the catalog" in some["no/such"].error


async def test_a_changed_file_is_read_anew(tmp_path: Path) -> None:
    """Header facts are cached per file while it is unchanged, never past a change."""
    root = tmp_path / "jan"
    gguf = tiny(root, "tiny/a")
    async with runner_env(root, 4 * 1024**3) as env:
        _, first = await estimates(env)
        _, again = await estimates(env)
        assert first["tiny/a"] == again["tiny/a"] and first["tiny/a"].basis == pb.MEMORY_BASIS_HEADER
        gguf.write_bytes(b"not a gguf file" * 1000)
        _, changed = await estimates(env)
        assert changed["tiny/a"].basis == pb.MEMORY_BASIS_SIZE  # the header is unreadable now
        assert changed["tiny/a"].memory_bytes == 15000 + 256 * 256 * 1024 + (96 << 20)


async def test_fits_tight_and_wont_fit_against_what_is_loaded(tmp_path: Path) -> None:
    root = tmp_path / "jan"
    need = header_estimate(tiny(root, "tiny/a"))
    tiny(root, "tiny/b")
    declared(root, "big/huge", {"size": 2 * need})
    async with runner_env(root, need * 3 // 2) as env:
        _, before = await estimates(env)
        assert before["tiny/a"].fit == before["tiny/b"].fit == pb.FIT_FITS
        assert before["big/huge"].fit == pb.FIT_WONT_FIT

        loaded = (await env.stub.LoadModel(pb.LoadModelRequest(model_id="tiny/a"))).model
        assert loaded.memory_bytes == before["tiny/a"].memory_bytes  # the load decided by this estimate
        reply, after = await estimates(env)
        assert reply.memory_used_bytes == need
        assert after["tiny/a"].fit == pb.FIT_FITS and after["tiny/a"].loaded
        # b fits the budget, not beside a: a start would unload a first.
        assert after["tiny/b"].fit == pb.FIT_TIGHT and not after["tiny/b"].loaded
        assert after["big/huge"].fit == pb.FIT_WONT_FIT
        await env.stub.LoadModel(pb.LoadModelRequest(model_id="tiny/b"))
        _, swapped = await estimates(env)
        assert swapped["tiny/a"].fit == pb.FIT_TIGHT and swapped["tiny/b"].loaded


async def test_slots_as_a_load_would_choose_them(tmp_path: Path) -> None:
    """Without n_parallel the runner halves its default slots until the KV caches fit the budget: the
    estimate counts the slots the load will have."""
    root = tmp_path / "jan"
    gguf = tiny(root, "tiny/auto", {"ctx_len": 256})
    one, four = (
        header_estimate(gguf, {"ctx_len": 256, "n_parallel": 1}),
        header_estimate(gguf, {"ctx_len": 256, "n_parallel": 4}),
    )
    assert four > one
    async with runner_env(root, four - 1) as env:  # 4 slots do not fit, 2 do
        _, by_id = await estimates(env)
        two = header_estimate(gguf, {"ctx_len": 256, "n_parallel": 2})
        assert by_id["tiny/auto"].memory_bytes == two and by_id["tiny/auto"].fit == pb.FIT_FITS
        loaded = (await env.stub.LoadModel(pb.LoadModelRequest(model_id="tiny/auto"))).model
        assert loaded.memory_bytes == two and orjson.loads(loaded.parameters_json)["n_parallel"] == 2


async def test_gateway_route(tmp_path: Path) -> None:
    write_tiny_chat_model(tmp_path)
    declared(tmp_path, "big/huge", {"size": 10 * TB})
    async with serving_stack(tmp_path) as stack:
        listed = (await stack.http.get("/v1/models")).json()
        assert all("fit" not in m for m in listed["data"])  # the list itself does not change

        resp = await stack.http.get("/v1/models/fit")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "list" and body["reason"] is None
        by_id = {d["id"]: d for d in body["data"]}
        chat = by_id["tiny/chat"]
        assert chat["fit"] == "fits" and chat["basis"] == "header" and chat["runner"] == "r1"
        budget = stack.runner.settings.memory_budget_bytes
        assert chat["budget_bytes"] == chat["free_bytes"] == budget and 0 < chat["estimate_bytes"] < budget
        huge = by_id["big/huge"]
        assert huge["fit"] == "wont_fit" and huge["basis"] == "size" and huge["estimate_bytes"] > 10 * TB

        await stack.http.post("/v1/models/tiny/chat/start", json={})
        one = (await stack.http.get("/v1/models/fit", params={"id": "tiny/chat"})).json()["data"]
        assert [(d["id"], d["fit"], d["loaded"]) for d in one] == [("tiny/chat", "fits", True)]
        assert one[0]["free_bytes"] == budget - one[0]["estimate_bytes"]

        schema = (await stack.http.get("/openapi.json")).json()
        assert list(schema["paths"]["/v1/models/fit"]) == ["get"]
        posted = await stack.http.post("/v1/models/fit", json={})  # not read as a model id
        assert posted.status_code == 405 and posted.headers["allow"] == "GET"


async def test_gateway_route_without_a_runner(tmp_path: Path) -> None:
    write_tiny_chat_model(tmp_path)
    catalog = Catalog(CatalogSettings(root=tmp_path, port=0, seed_models_dir=None))
    async with serving_catalog(catalog) as cat_address:
        async with serving_gateway(timeout=5, catalog_address=cat_address) as gw:
            resp = await gw.http.get("/v1/models/fit")
            assert resp.status_code == 200
            assert resp.json()["data"] == [] and "no runner" in resp.json()["reason"]
