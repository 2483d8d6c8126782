"""Ollama's API through the official `ollama` Python client, unmodified, against the real gateway, catalog
and runner (llama.cpp with a tiny GGUF written by the tests), and for pulls a real downloader with a
loopback fake of the Hugging Face Hub: list, show, pull with progress, chat and generate (streamed and
not), options, formats, tools, load/unload, embeddings, ps, copy, delete, API keys, and a 400 naming every
field or option that would not be honoured."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest

from gateway.protocol import ollama as protocol
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.envsettings import Secret
from services.common.storage import StorageSettings, make_storage
from services.downloader.settings import DownloaderSettings
from services.runner.settings import RunnerSettings
from tests.fakes.hub import FakeHub
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import (
    CHAT_TEMPLATE,
    TINY_CHAT,
    Stack,
    serving_catalog,
    serving_downloader,
    serving_gateway,
    serving_runner,
    serving_stack,
    write_tiny_chat_model,
)

pytest.importorskip("llama_cpp")

MODEL = TINY_CHAT
HELLO = [{"role": "user", "content": "the cat"}]


@pytest.fixture
def client(stack: Stack) -> ollama.AsyncClient:
    return ollama.AsyncClient(host="http://gw", transport=stack.transport)


async def refused(call: object, *needles: str, status: int = 400) -> str:
    with pytest.raises(ollama.ResponseError) as err:
        await call  # type: ignore[misc]
    assert err.value.status_code == status, err.value.error
    for needle in needles:
        assert needle in err.value.error
    return err.value.error


# --- probes, list, show -----------------------------------------------------------------------------------


async def test_probes_answer_as_ollama_does(stack: Stack) -> None:
    root = await stack.http.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert (await stack.http.head("/")).status_code == 200
    version = await stack.http.get("/api/version")
    assert version.json() == {"version": protocol.OLLAMA_VERSION}
    assert (await stack.http.head("/api/version")).status_code == 200


async def test_list_names_models_with_latest_and_show_describes_one(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert [m.model for m in listed.models] == [f"{MODEL}:latest"]
    entry = listed.models[0]
    assert entry.size and entry.size > 10_000 and entry.details and entry.details.format == "gguf"
    assert entry.modified_at is not None and entry.digest and len(entry.digest) == 64
    for name in (MODEL, f"{MODEL}:latest"):
        shown = await client.show(name)
        assert shown.parameters and "num_ctx" in shown.parameters and "4096" in shown.parameters
        assert shown.capabilities == ["completion"] and shown.modified_at is not None  # no tools
        assert shown.modelfile and "PARAMETER temperature" in shown.modelfile


async def test_an_unknown_model_is_a_404_in_ollamas_words(client: ollama.AsyncClient) -> None:
    for call in (
        client.chat(model="nobody/nothing", messages=HELLO),
        client.generate(model="nobody/nothing", prompt="x"),
        client.show("nobody/nothing"),
        client.delete("nobody/nothing"),
        client.embed(model="nobody/nothing", input="x"),
    ):
        await refused(call, "model 'nobody/nothing' not found", status=404)
    await refused(client.show("hf.co/acme/none-GGUF"), "not found: pull it first", status=404)


# --- chat and generate ------------------------------------------------------------------------------------


async def test_chat_streams_ndjson_ending_with_done_and_metrics(client: ollama.AsyncClient) -> None:
    parts = [part async for part in await client.chat(model=MODEL, messages=HELLO, stream=True)]
    assert len(parts) >= 2 and all(not p.done for p in parts[:-1]) and parts[-1].done
    last = parts[-1]
    assert last.done_reason in ("stop", "length") and last.eval_count and last.prompt_eval_count
    assert last.total_duration and last.total_duration >= (last.eval_duration or 0)
    text = "".join(p.message.content or "" for p in parts)
    assert text and all(p.message.role == "assistant" for p in parts)
    # Not streamed: the same greedy answer in one object.
    whole = await client.chat(model=f"{MODEL}:latest", messages=HELLO)
    assert whole.done and whole.message.content == text and whole.eval_count == last.eval_count


async def test_options_map_onto_sampling(client: ollama.AsyncClient) -> None:
    short = await client.chat(model=MODEL, messages=HELLO, options={"num_predict": 3})
    assert short.eval_count == 3 and short.done_reason == "length"
    stopped = await client.generate(model=MODEL, prompt="the cat", options={"num_predict": 40})
    first = (stopped.response or "")[2:4]
    if first:  # a stop string taken from the answer cuts it there
        cut = await client.generate(
            model=MODEL, prompt="the cat", options={"num_predict": 40, "stop": [first]}
        )
        assert first not in (cut.response or "") and cut.done_reason == "stop"
    sampled = [
        await client.generate(
            model=MODEL,
            prompt="the cat",
            options={
                "temperature": 1.5,
                "top_k": 50,
                "top_p": 0.9,
                "min_p": 0.01,
                "seed": 7,
                "num_predict": 8,
            },
        )
        for _ in range(2)
    ]
    assert sampled[0].response == sampled[1].response  # the seed is honoured
    # Neutral values and options Ollama itself ignores change nothing and are accepted.
    same = await client.generate(
        model=MODEL, prompt="the cat", options={"num_predict": 40, "mirostat": 0, "numa": True, "tfs_z": 1.0}
    )
    assert same.response == stopped.response


async def test_generate_raw_system_and_formats(client: ollama.AsyncClient) -> None:
    plain = await client.generate(model=MODEL, prompt="the cat", raw=True, options={"num_predict": 5})
    assert plain.done and plain.eval_count == 5
    with_system = await client.generate(model=MODEL, prompt="the cat", system="be brief")
    assert with_system.done and with_system.prompt_eval_count > plain.prompt_eval_count  # type: ignore[operator]
    schema = {
        "type": "object",
        "properties": {"kind": {"enum": ["cat", "dog"]}},
        "required": ["kind"],
        "additionalProperties": False,
    }
    answer = await client.generate(model=MODEL, prompt="a pet", format=schema, options={"num_predict": 200})
    assert answer.done_reason == "stop", answer.response
    assert json.loads(answer.response or "")["kind"] in ("cat", "dog")
    chat = await client.chat(model=MODEL, messages=HELLO, format="json", options={"num_predict": 300})
    content = chat.message.content or ""
    if chat.done_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.lstrip().startswith("{")
    parts = [p async for p in await client.generate(model=MODEL, prompt="the cat", stream=True)]
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    assert (
        "".join(p.response or "" for p in parts)
        == (await client.generate(model=MODEL, prompt="the cat")).response
    )


async def test_logprobs_come_per_token(client: ollama.AsyncClient) -> None:
    answer = await client.chat(model=MODEL, messages=HELLO, logprobs=True, top_logprobs=2)
    assert answer.logprobs and len(answer.logprobs) == answer.eval_count
    assert "".join(lp.token for lp in answer.logprobs) == answer.message.content
    assert all(lp.top_logprobs and len(lp.top_logprobs) == 2 for lp in answer.logprobs)


async def test_tools_and_a_tool_result_go_to_the_model(client: ollama.AsyncClient) -> None:
    def get_weather(city: str) -> str:
        """Get the weather.

        Args:
          city: The city
        """
        return "sunny"

    history = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    answer = await client.chat(
        model=MODEL, messages=history, tools=[get_weather], options={"num_predict": 64}
    )
    assert answer.done
    for call in answer.message.tool_calls or []:  # a tiny random model may or may not call
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)


async def test_what_cannot_be_honoured_is_a_400_naming_it(client: ollama.AsyncClient, stack: Stack) -> None:
    for options, name in (
        ({"mirostat": 2}, "options.mirostat"),
        ({"num_gpu": 1}, "options.num_gpu"),
        ({"typical_p": 0.5}, "options.typical_p"),
        ({"repeat_last_n": 10}, "options.repeat_last_n"),
        ({"invented": 1}, "options.invented"),
    ):
        await refused(client.chat(model=MODEL, messages=HELLO, options=options), name)
    await refused(client.chat(model=MODEL, messages=HELLO, think=False), "think")
    await refused(client.generate(model=MODEL, prompt="x", suffix="y"), "suffix")
    await refused(client.generate(model=MODEL, prompt="x", template="{{ .Prompt }}"), "template")
    await refused(client.generate(model=MODEL, prompt="x", raw=True, system="s"), "system")
    image = "iVBORw0KGgo="
    await refused(
        client.chat(model=MODEL, messages=[{"role": "user", "content": "x", "images": [image]}]),
        "cannot see images",
    )
    await refused(client.generate(model=MODEL, prompt="x", images=[image]), "cannot see images")
    await refused(client.embed(model=MODEL, input="x", options={"temperature": 1}), "options.temperature")
    resp = await stack.http.post("/api/chat", json={"model": MODEL, "messages": HELLO, "invented": True})
    assert resp.status_code == 400 and "invented" in resp.json()["error"]
    resp = await stack.http.post(
        "/api/chat", json={"model": MODEL, "messages": HELLO, "options": {"seed": "x"}}
    )
    assert resp.status_code == 400 and set(resp.json()) == {"error"}


async def test_a_request_without_prompt_loads_and_keep_alive_0_unloads(
    client: ollama.AsyncClient, stack: Stack
) -> None:
    loaded = await client.generate(model=MODEL, prompt="", keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    running = (await client.ps()).models
    assert [m.model for m in running] == [f"{MODEL}:latest"] and running[0].size and running[0].expires_at
    unloaded = await client.chat(model=MODEL, messages=[], keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    assert (await client.ps()).models == []


async def test_num_ctx_reloads_the_model_with_that_context(client: ollama.AsyncClient, stack: Stack) -> None:
    await client.chat(model=MODEL, messages=HELLO, options={"num_ctx": 1024, "num_predict": 2})
    tokens = await stack.http.post("/v1/tokenize", json={"model": MODEL, "prompt": "x"})
    assert tokens.json()["max_model_len"] == 1024


async def test_embed_normalises_and_cuts_dimensions(client: ollama.AsyncClient) -> None:
    answer = await client.embed(model=MODEL, input=["the cat", "a dog"])
    assert len(answer.embeddings) == 2 and answer.prompt_eval_count
    for vector in answer.embeddings:
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)
    short = await client.embed(model=MODEL, input="the cat", dimensions=4)
    assert len(short.embeddings[0]) == 4
    assert math.isclose(math.sqrt(sum(v * v for v in short.embeddings[0])), 1.0, rel_tol=1e-4)
    old = await client.embeddings(model=MODEL, prompt="the cat")
    assert len(old.embedding) == len(answer.embeddings[0])
    assert (await client.embed(model=MODEL, input="")).embeddings == []


async def test_a_local_model_copies_within_its_folder_and_deletes(client: ollama.AsyncClient) -> None:
    await refused(client.copy(MODEL, "other/mine"), "source's folder")
    assert (await client.copy(MODEL, "tiny/mine:latest")).status == "success"
    names = sorted(m.model for m in (await client.list()).models)
    assert names == [f"{MODEL}:latest", "tiny/mine:latest"]
    shown = await client.show("tiny/mine")
    assert shown.details is not None and shown.details.format == "gguf"
    # The copy runs from the same file; deleting it keeps the file the original still uses.
    assert (await client.generate(model="tiny/mine", prompt="the cat", options={"num_predict": 2})).done
    assert (await client.delete("tiny/mine")).status == "success"
    assert (await client.generate(model=MODEL, prompt="the cat", options={"num_predict": 2})).done
    assert (await client.delete(f"{MODEL}:latest")).status == "success"
    assert (await client.list()).models == []


async def test_api_keys_are_read_from_the_bearer_header(tmp_path: Path) -> None:
    root = tmp_path / "jan"
    write_tiny_chat_model(root)
    async with serving_stack(root, api_keys=Secret("k1")) as stack:
        anonymous = ollama.AsyncClient(host="http://gw", transport=stack.transport)
        await refused(anonymous.list(), "missing API key", status=401)
        wrong = ollama.AsyncClient(
            host="http://gw", transport=stack.transport, headers={"Authorization": "Bearer x"}
        )
        await refused(wrong.list(), "invalid API key", status=401)
        keyed = ollama.AsyncClient(
            host="http://gw", transport=stack.transport, headers={"Authorization": "Bearer k1"}
        )
        assert [m.model for m in (await keyed.list()).models] == [f"{MODEL}:latest"]
        answer = await keyed.generate(model=MODEL, prompt="the cat", options={"num_predict": 2})
        assert answer.eval_count == 2


# --- pull (a real downloader and a fake Hugging Face Hub) -------------------------------------------------


@dataclass
class PullEnv:
    client: ollama.AsyncClient
    hub: FakeHub
    http: httpx.AsyncClient


def stub_resolver(host: str, port: int) -> list[str]:
    if host != "127.0.0.1":
        raise OSError(f"unknown host {host}")  # nothing leaves loopback
    return ["127.0.0.1"]


@pytest.fixture
async def pull_env(tmp_path: Path, hub: FakeHub) -> AsyncIterator[PullEnv]:
    tiny = write_tiny_gguf(tmp_path / "src" / "tiny.gguf", chat_template=CHAT_TEMPLATE).read_bytes()
    other = write_tiny_gguf(tmp_path / "src" / "other.gguf", chat_template=CHAT_TEMPLATE, seed=1).read_bytes()
    root = tmp_path / "jan"
    hub.add_repo("acme/tiny-GGUF", {"tiny.Q4_K_M.gguf": tiny, "tiny.Q8_0.gguf": other, "README.md": b"#"})
    storage = make_storage(StorageSettings(), root)
    catalog = Catalog(
        CatalogSettings(root=root, port=0, seed_models_dir=None, allow_private_networks=True),
        storage=storage,
    )
    async with serving_catalog(catalog) as cat_address:
        dl = DownloaderSettings(
            root=root,
            port=0,
            catalog_address=cat_address,
            allow_private_networks=True,
            hf_endpoint=hub.url,
            hf_token=hub.token,
            reserve_bytes=0,
            progress_interval_s=0.01,
        )
        runner = RunnerSettings(root=root, name="r1", port=0, catalog_address=cat_address, threads=1)
        async with (
            serving_downloader(dl, storage, stub_resolver) as (_, dl_address),
            serving_runner(runner, storage),
            serving_gateway(catalog_address=cat_address, downloader_address=dl_address) as gw,
        ):
            yield PullEnv(ollama.AsyncClient(host="http://gw", transport=gw.transport), hub, gw.http)


async def test_pull_a_hugging_face_quant_with_progress_then_chat_copy_and_delete(pull_env: PullEnv) -> None:
    client, name = pull_env.client, "hf.co/acme/tiny-GGUF:Q4_K_M"
    progress = [p async for p in await client.pull(name, stream=True)]
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    sha = pull_env.hub.sha256_of("acme/tiny-GGUF", "tiny.Q4_K_M.gguf")
    layers = [p for p in progress if p.digest]
    assert layers and all(p.digest == f"sha256:{sha}" and p.status == f"pulling {sha[:12]}" for p in layers)
    assert (
        layers[-1].completed
        == layers[-1].total
        == len(pull_env.hub.bytes_of("acme/tiny-GGUF", "tiny.Q4_K_M.gguf"))
    )
    listed = [m.model for m in (await client.list()).models]
    assert listed == ["tiny-GGUF/tiny.Q4_K_M:latest"]
    # Pulled again: nothing to fetch; the default tag is Q4_K_M.
    again = await client.pull("hf.co/acme/tiny-GGUF")
    assert again.status == "success"
    answer = await client.chat(model=name, messages=HELLO, options={"num_predict": 3})
    assert answer.eval_count == 3 and answer.model == name
    await refused(client.pull("hf.co/acme/tiny-GGUF:IQ2_XS"), "has no IQ2_XS", "Q4_K_M, Q8_0", status=404)
    await refused(client.pull("hf.co/acme/missing-GGUF"), status=404)
    await refused(client.pull("nobody/nothing"), "model 'nobody/nothing' not found", status=404)
    # A copy is a second object over the same files: present at once, the same digest.
    assert (await client.copy(name, "tiny-GGUF/mine")).status == "success"
    models = {m.model: m for m in (await client.list()).models}
    assert models["tiny-GGUF/mine:latest"].digest == models["tiny-GGUF/tiny.Q4_K_M:latest"].digest
    copied = await client.generate(model="tiny-GGUF/mine", prompt="the cat", options={"num_predict": 2})
    assert copied.eval_count == 2
    assert (await client.delete("tiny-GGUF/mine")).status == "success"
    assert [m.model for m in (await client.list()).models] == listed


async def test_pull_without_stream_answers_success_once(pull_env: PullEnv) -> None:
    answer = await pull_env.client.pull("hf.co/acme/tiny-GGUF:q8_0")
    assert answer.status == "success"
    assert [m.details.quantization_level for m in (await pull_env.client.list()).models] == ["Q8_0"]  # type: ignore[union-attr]


async def test_json_the_services_cannot_store_is_a_400_not_a_500(stack: Stack) -> None:
    # Found by the fuzzing: an integer beyond 64 bits in a schema was a 500 (orjson refuses it).
    resp = await stack.http.post(
        "/api/chat", json={"model": MODEL, "messages": HELLO, "format": {"x": [446120837355739021312]}}
    )
    assert resp.status_code == 400 and "cannot store" in resp.json()["error"], resp.text
    resp = await stack.http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": HELLO,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"maximum": 2**70}},
            },
        },
    )
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request", resp.text
