"""The three engines through the real processes, with the same openai SDK code: a tiny GGUF on llama.cpp,
an `api` model on a loopback llama-cpp-python server (imported with the `openai` importer), a `tensorrt`
model on a loopback Triton server; plus an Azure OpenAI model on a fake resource, remote errors, and
keys that never show."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cli.stack import Stack
from tests.fakes.azure import WORDS, FakeAzure
from tests.fakes.llama_server import llama_server
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.fakes.triton_server import TritonMissing, TritonServer, triton_server
from tests.harness import process_stack

pytestmark = pytest.mark.e2e
pytest.importorskip("sse_starlette", reason="llama-cpp-python's server needs sse-starlette")

KEY = "sk-e2e-secret-4242424242"
AZURE_KEY = "azure-e2e-secret-1717"
ENGINES = {"llamacpp": "tiny/tiny", "api": "remote/tiny", "tensorrt": "trt/llm"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("imports") / "tiny.gguf")


@pytest.fixture(scope="module")
def remote(tiny: Path) -> Iterator[str]:
    with llama_server(tiny, api_key=KEY) as base:
        yield base


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    try:
        with triton_server(tmp_path_factory.mktemp("triton")) as server:
            yield server
    except TritonMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeAzure]:
    with FakeAzure(key=AZURE_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny: Path, remote: str, triton: TritonServer, azure: FakeAzure
) -> Iterator[Stack]:
    env = {
        "JAN_IMPORT_ALLOWED_DIRS": str(tiny.parent),
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_ALLOW_PRIVATE_NETWORKS": "true",  # the remotes are on loopback
        "JAN_RUNNER_THREADS": "1",
        "OPENAI_API_KEY": KEY,  # the runner resolves "env:OPENAI_API_KEY"
    }
    with process_stack(tmp_path_factory.mktemp("janroot"), env) as s:
        models = [
            {"source_url": str(tiny), "id": ENGINES["llamacpp"], "parameters": {"ctx_len": 512}},
            {
                "source_url": triton.source_url(),
                "id": ENGINES["tensorrt"],
                "metadata": {"engine": "tensorrt"},
            },
            {
                "source_url": f"{remote}/models/tiny",
                "id": "keyref/tiny",
                "parameters": {"API-KEY": "env:OPENAI_API_KEY"},
                "metadata": {"engine": "api"},
            },
            {
                "source_url": azure.url,
                "id": "azure/gpt-4o-mini",
                "parameters": {
                    "API-KEY": AZURE_KEY,
                    "DEPLOYMENT-NAME": "gpt-4o-mini",
                    "api-version": "2024-10-21",
                },
                "metadata": {"engine": "api"},
            },
            {
                "source_url": azure.url,
                "id": "azure/throttled",
                "parameters": {"API-KEY": AZURE_KEY, "DEPLOYMENT-NAME": "throttled"},
                "metadata": {"engine": "api"},
            },
            {
                "source_url": f"{remote}/models/tiny",
                "id": "badkey/tiny",
                "parameters": {"API-KEY": "sk-wrong-key-000"},
                "metadata": {"engine": "api"},
            },
        ]
        for body in models:
            resp = httpx.post(f"{s.url}/v1/models", json=body)
            assert resp.status_code == 201, resp.text
        # The `openai` importer lists the remote's models and makes remote/<id> objects with the key.
        resp = httpx.post(
            f"{s.url}/v1/models/remote",
            json={"importer": "openai", "base_url": remote, "api_key": KEY, "folder": "remote"},
        )
        assert resp.status_code == 201, resp.text
        assert [m["id"] for m in resp.json()["data"]] == [ENGINES["api"]]
        yield s


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)


def state(stack: Stack, model: str) -> str:
    return str(httpx.get(f"{stack.url}/v1/models/{model}").json()["state"])


@pytest.mark.parametrize("engine", list(ENGINES))
def test_same_code_for_every_engine(stack: Stack, client: openai.OpenAI, engine: str) -> None:
    model = ENGINES[engine]
    listed = {m.id: m for m in client.models.list()}
    assert listed[model].model_extra["metadata"]["engine"] == engine  # type: ignore[index]
    assert listed[model].model_extra["state"] == "stopped"  # type: ignore[index]  # nothing to download

    resp = httpx.post(f"{stack.url}/v1/models/{model}/start", timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "running"
    running = {m["model_id"]: m for m in httpx.get(f"{stack.url}/v1/running").json()["data"]}
    assert running[model]["engine"] == engine

    messages = [{"role": "user", "content": "Say hello"}]
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert full.choices[0].message.content
    assert full.choices[0].finish_reason == "length"
    assert full.usage is not None and full.usage.completion_tokens == 6

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content  # greedy: the same answer, streamed
    # Remote engines pass every piece on as it comes; llama.cpp sends what is already waiting as one delta,
    # and the tiny model is fast enough to have all 6 tokens waiting.
    pieces = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert pieces >= (1 if engine == "llamacpp" else 3)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6

    resp = httpx.post(f"{stack.url}/v1/models/{model}/stop", timeout=60)
    assert resp.status_code == 200, resp.text
    assert state(stack, model) == "stopped"


def test_azure_and_key_reference(stack: Stack, client: openai.OpenAI, azure: FakeAzure) -> None:
    reply = client.chat.completions.create(
        model="azure/gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}], max_tokens=3
    )
    assert reply.choices[0].message.content == " ".join(WORDS[:3])
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 3)
    assert azure.requests[-1][:2] == ("/openai/deployments/gpt-4o-mini/chat/completions", "2024-10-21")
    embedded = client.embeddings.create(model="azure/gpt-4o-mini", input=["abc"])
    assert embedded.data[0].embedding == [3.0, 1.0, 0.5]
    reply = client.completions.create(model="keyref/tiny", prompt="the", max_tokens=4)
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_remote_errors(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="azure/throttled", messages=[{"role": "user", "content": "x"}])
    assert limited.value.code == "remote_rate_limited"
    resp = httpx.post(f"{stack.url}/v1/models/badkey/tiny/start", timeout=60)
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["code"] == "remote_auth_failed"
    assert "sk-wrong" not in resp.text
    resp = httpx.post(
        f"{stack.url}/v1/embeddings", json={"model": ENGINES["tensorrt"], "input": "x"}, timeout=60
    )
    assert resp.status_code == 501 and resp.json()["error"]["code"] == "embeddings_unsupported"


def test_keys_never_show(stack: Stack) -> None:
    listing = httpx.get(f"{stack.url}/v1/models").text
    one = httpx.get(f"{stack.url}/v1/models/{ENGINES['api']}").json()
    assert one["parameters"]["API-KEY"] == "****"
    assert (
        httpx.get(f"{stack.url}/v1/models/keyref/tiny").json()["parameters"]["API-KEY"]
        == "env:OPENAI_API_KEY"
    )
    running = httpx.get(f"{stack.url}/v1/running").text
    logs = "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*") if p.is_file())
    for secret in (KEY, AZURE_KEY, "sk-wrong-key-000"):
        assert secret not in listing and secret not in running and secret not in logs
