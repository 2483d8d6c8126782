"""A runner with the real llama.cpp engine and a tiny GGUF written by the tests, behind its real gRPC
server, registered with a real catalog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import pytest
from grpc import aio

from jan.runner.v1 import runner_service_pb2 as pb
from jan.runner.v1 import runner_service_pb2_grpc as pb_grpc
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.storage import StorageSettings, make_storage
from services.runner.core import Runner
from services.runner.settings import RunnerSettings
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import serving_catalog, serving_runner

pytest.importorskip("llama_cpp")

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class Env:
    stub: pb_grpc.RunnerServiceStub
    runner: Runner
    catalog: Catalog
    root: Path


def model(root: Path, model_id: str, obj: dict, *, template: str | None = TEMPLATE, seed: int = 0) -> None:
    folder = root / "models" / model_id.split("/")[0]
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(folder / f"{model_id.split('/')[1]}.gguf", chat_template=template, seed=seed)
    (folder / f"{model_id.split('/')[1]}.json").write_bytes(orjson.dumps(obj))


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., AsyncIterator[Env]]:
    async def make(**runner_kw: object) -> AsyncIterator[Env]:
        root = tmp_path / "jan"
        (root / "models").mkdir(parents=True, exist_ok=True)
        catalog = Catalog(CatalogSettings(root=root, port=0, seed_models_dir=None, report_ttl_s=2))
        async with serving_catalog(catalog) as cat_address:
            values: dict[str, object] = {
                "root": root,
                "name": "r1",
                "port": 0,
                "catalog_address": cat_address,
                "threads": 1,
                "memory_budget_bytes": 512 * 1024**2,
            }
            values.update(runner_kw)
            settings = RunnerSettings(**values)  # type: ignore[arg-type]
            storage = make_storage(StorageSettings(), root)
            async with (
                serving_runner(settings, storage, heartbeat=False) as (runner, address),
                aio.insecure_channel(address) as channel,
            ):
                yield Env(pb_grpc.RunnerServiceStub(channel), runner, catalog, root)

    return make


async def collect(call: object, first: pb.GenerateResponse | None = None) -> tuple[str, pb.GenerateResponse]:
    text, last = (first.text, first) if first is not None else ("", None)
    while (reply := await call.read()) is not aio.EOF:  # type: ignore[attr-defined]
        text += reply.text
        last = reply
    assert last is not None
    return text, last


def chat(model_id: str, content: str = "the cat", **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model_id=model_id,
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=content)]),
        sampling=pb.Sampling(**sampling),  # type: ignore[arg-type]
    )


async def test_load_generate_embed_unload(make_env) -> None:
    async for env in make_env():
        model(env.root, "tiny/chat", {"parameters": {"ctx_len": 256, "temperature": 0, "max_tokens": 12}})
        await env.catalog.rescan_all()
        loaded = (await env.stub.LoadModel(pb.LoadModelRequest(model_id="tiny/chat"))).model
        assert loaded.memory_bytes > 0 and loaded.engine == "llamacpp"
        assert orjson.loads(loaded.parameters_json)["chat_format"] == "gguf chat template"
        assert (await env.catalog.get("tiny/chat")).state == 4  # running, reported at once
        text, last = await collect(env.stub.Generate(chat("tiny/chat")))
        assert last.finish_reason == pb.FINISH_REASON_LENGTH
        assert last.usage.completion_tokens == 12 and last.usage.prompt_tokens > 3
        again, _ = await collect(env.stub.Generate(chat("tiny/chat")))
        assert text == again and text.strip()  # greedy from the object's parameters: deterministic
        _, last = await collect(env.stub.Generate(chat("tiny/chat", max_tokens=3)))
        assert last.usage.completion_tokens == 3  # the request's own field wins
        _, last = await collect(
            env.stub.Generate(
                pb.GenerateRequest(model_id="tiny/chat", text="the dog", sampling=pb.Sampling(max_tokens=5))
            )
        )
        assert last.usage.completion_tokens == 5
        emb = await env.stub.Embed(pb.EmbedRequest(model_id="tiny/chat", inputs=["the cat", "a dog"]))
        assert len(emb.embeddings) == 2 and len(emb.embeddings[0].values) == 64 and emb.prompt_tokens >= 4
        listed = await env.stub.ListLoaded(pb.ListLoadedRequest())
        assert [m.model_id for m in listed.models] == ["tiny/chat"] and listed.memory_used_bytes > 0
        await env.stub.UnloadModel(pb.UnloadModelRequest(model_id="tiny/chat"))
        assert (await env.stub.ListLoaded(pb.ListLoadedRequest())).models == []
        assert (await env.catalog.get("tiny/chat")).state == 3  # stopped


async def test_stop_strings_seed_and_prompt_fields(make_env) -> None:
    async for env in make_env():
        model(
            env.root,
            "spec/fields",
            {
                "parameters": {
                    "ctx_len": 256,
                    "pre_prompt": "A chat.",
                    "user_prompt": "USER: ",
                    "ai_prompt": "ASSISTANT: ",
                }
            },
            template=None,
        )
        await env.catalog.rescan_all()
        loaded = (await env.stub.LoadModel(pb.LoadModelRequest(model_id="spec/fields"))).model
        assert orjson.loads(loaded.parameters_json)["chat_format"] == "model object prompt fields"
        a, whole = await collect(
            env.stub.Generate(chat("spec/fields", temperature=0.9, seed=7, max_tokens=20))
        )
        b, _ = await collect(env.stub.Generate(chat("spec/fields", temperature=0.9, seed=7, max_tokens=20)))
        assert a == b  # same seed, same text
        assert whole.finish_reason == pb.FINISH_REASON_LENGTH and whole.stop_sequence == ""
        words = a.split()
        assert len(words) > 3
        stop = words[2]
        never = "never in the text"
        cut, last = await collect(
            env.stub.Generate(chat("spec/fields", temperature=0.9, seed=7, stop=[never, stop]))
        )
        assert last.finish_reason == pb.FINISH_REASON_STOP and stop not in cut and a.startswith(cut)
        assert last.stop_sequence == stop  # which of the stop strings ended it
        # The model object's stop strings, when the request gives none, are reported the same way.
        overrides = orjson.dumps({"stop": [stop]}).decode()
        await env.stub.LoadModel(pb.LoadModelRequest(model_id="spec/fields", overrides_json=overrides))
        again, last = await collect(env.stub.Generate(chat("spec/fields", temperature=0.9, seed=7)))
        assert again == cut and last.stop_sequence == stop


async def test_refusals(make_env) -> None:
    async for env in make_env(memory_budget_bytes=64 * 1024**2):
        model(env.root, "big/ctx", {"parameters": {"ctx_len": 4096, "n_parallel": 64}})
        (env.root / "models" / "none").mkdir()
        (env.root / "models" / "none" / "m.json").write_bytes(b'{"source_url": "https://x.example/m.gguf"}')
        await env.catalog.rescan_all()
        with pytest.raises(aio.AioRpcError) as exc:
            await env.stub.LoadModel(pb.LoadModelRequest(model_id="big/ctx"))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "needs" in exc.value.details()
        with pytest.raises(aio.AioRpcError) as exc:
            await env.stub.LoadModel(pb.LoadModelRequest(model_id="none/m"))
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(aio.AioRpcError) as exc:
            await collect(env.stub.Generate(chat("none/m")))
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_queue_bound_and_a_new_request_never_cuts_a_stream(make_env) -> None:
    async for env in make_env(max_queue=1):
        model(env.root, "q/m", {"parameters": {"ctx_len": 512, "temperature": 0, "n_parallel": 1}})
        await env.catalog.rescan_all()
        await env.stub.LoadModel(pb.LoadModelRequest(model_id="q/m"))
        long = env.stub.Generate(chat("q/m", max_tokens=400))
        first = await long.read()  # streaming has begun
        waiting = asyncio.ensure_future(collect(env.stub.Generate(chat("q/m", max_tokens=4))))
        for _ in range(200):  # until the runner holds it in the queue
            listed = await env.stub.ListLoaded(pb.ListLoadedRequest())
            if listed.models[0].queued == 1:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(aio.AioRpcError) as exc:  # one runs, one waits: the third is refused
            await collect(env.stub.Generate(chat("q/m", max_tokens=4)))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        _, last = await collect(long, first)
        assert last.usage.completion_tokens == 400  # the running stream was not cut off
        _, last = await waiting
        assert last.usage.completion_tokens == 4


async def test_cancelled_stream_frees_the_slot_and_lru_eviction(make_env) -> None:
    async for env in make_env(memory_budget_bytes=150 * 1024**2):
        model(env.root, "a/a", {"parameters": {"ctx_len": 256}})
        model(env.root, "b/b", {"parameters": {"ctx_len": 256}}, seed=1)
        await env.catalog.rescan_all()
        await env.stub.LoadModel(pb.LoadModelRequest(model_id="a/a"))
        call = env.stub.Generate(chat("a/a", max_tokens=200))
        await call.read()
        call.cancel()  # the client went away
        _, last = await collect(env.stub.Generate(chat("a/a", max_tokens=2)))  # the slot is free again
        assert last.usage.completion_tokens == 2
        # Each tiny model counts ~100 MiB (compute buffers): loading b evicts idle a.
        await env.stub.LoadModel(pb.LoadModelRequest(model_id="b/b"))
        loaded = [m.model_id for m in (await env.stub.ListLoaded(pb.ListLoadedRequest())).models]
        assert loaded == ["b/b"]


async def test_keep_alive_unloads_an_idle_model(make_env) -> None:
    async for env in make_env():
        model(env.root, "k/k", {"parameters": {"ctx_len": 256}})
        await env.catalog.rescan_all()
        await env.stub.LoadModel(pb.LoadModelRequest(model_id="k/k", keep_alive_s=0.5))
        for _ in range(50):
            if not (await env.stub.ListLoaded(pb.ListLoadedRequest())).models:
                break
            await asyncio.sleep(0.1)
        assert not (await env.stub.ListLoaded(pb.ListLoadedRequest())).models
