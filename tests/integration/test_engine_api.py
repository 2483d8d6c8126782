"""The `api` engine against real loopback remotes: llama-cpp-python's own OpenAI-compatible server (bearer
key) and a fake Azure OpenAI resource (its URL shapes, `api-key` header, failures injected)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    JanError,
    ResourceExhausted,
    Unavailable,
)
from services.runner.engines.api import ApiEngine, parse_target
from services.runner.engines.base import Delta, GenerateRequest, LoadSpec, Sampling
from services.runner.settings import RunnerSettings
from tests.fakes.azure import WORDS, FakeAzure
from tests.fakes.llama_server import llama_server
from tests.fakes.tiny_gguf import write_tiny_gguf

pytest.importorskip("sse_starlette", reason="llama-cpp-python's server needs sse-starlette")
KEY = "sk-test-key-0123456789"


@pytest.fixture(scope="module")
def openai_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    with llama_server(model, api_key=KEY) as base:
        yield base


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeAzure]:
    with FakeAzure(slow_s=3) as fake:
        yield fake


def settings(tmp_path: Path, **kw: Any) -> RunnerSettings:
    return RunnerSettings(root=tmp_path, allow_private_networks=True, **kw)


def engine(source_url: str, parameters: dict[str, Any], s: RunnerSettings) -> ApiEngine:
    spec = LoadSpec(
        model_id="remote/m",
        files=[],
        mmproj=None,
        parameters=parameters,
        metadata={"engine": "api"},
        source_url=source_url,
    )
    return ApiEngine(spec, s)


async def collect(e: ApiEngine, request: GenerateRequest) -> list[Delta]:
    return [d async for d in e.generate(request)]


def chat(text: str = "Say hello", **sampling: Any) -> GenerateRequest:
    return GenerateRequest(
        messages=[{"role": "user", "content": text}], prompt=None, sampling=Sampling(**sampling)
    )


def test_targets() -> None:
    t = parse_target("https://api.openai.com/v1/models/gpt-4o-mini", {})
    assert (t.kind, t.base, t.model) == ("openai", "https://api.openai.com/v1", "gpt-4o-mini")
    assert t.url("chat/completions") == "https://api.openai.com/v1/chat/completions"
    assert t.headers("k")["Authorization"] == "Bearer k"
    t = parse_target("https://api.together.xyz/v1/models/meta-llama/Llama-3-8b", {})
    assert t.model == "meta-llama/Llama-3-8b"
    t = parse_target(
        "https://res.openai.azure.com/openai/deployments/gpt4/chat/completions?api-version=2024-06-01", {}
    )
    assert (t.kind, t.base, t.model, t.api_version) == (
        "azure",
        "https://res.openai.azure.com",
        "gpt4",
        "2024-06-01",
    )
    t = parse_target("https://res.openai.azure.com", {"DEPLOYMENT-NAME": "d1", "api-version": "2023-05-15"})
    assert (
        t.url("embeddings")
        == "https://res.openai.azure.com/openai/deployments/d1/embeddings?api-version=2023-05-15"
    )
    assert t.headers("k")["api-key"] == "k" and "Authorization" not in t.headers("k")
    with pytest.raises(InvalidArgument):
        parse_target("https://api.openai.com/v1", {})
    with pytest.raises(InvalidArgument):
        parse_target("triton://x:1/m", {})


# --- OpenAI-compatible (llama-cpp-python's server) -------------------------------------------------------


async def test_openai_chat_streams_deltas_with_usage(openai_base: str, tmp_path: Path) -> None:
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": KEY}, settings(tmp_path))
    await e.load()
    try:
        deltas = await collect(e, chat(max_tokens=6, temperature=0, seed=1))
        assert len(deltas) >= 3  # streamed piece by piece, not one block
        assert deltas[-1].finish_reason == "length"
        assert deltas[-1].completion_tokens == 6
        assert all(d.finish_reason is None for d in deltas[:-1])
        text = "".join(d.text for d in deltas)
        assert text.strip()
        again = "".join(d.text for d in await collect(e, chat(max_tokens=6, temperature=0, seed=1)))
        assert again == text  # greedy: the remote really generated it, deterministically
    finally:
        await e.unload()


async def test_openai_completion_and_local_stop(openai_base: str, tmp_path: Path) -> None:
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": KEY}, settings(tmp_path))
    await e.load()
    try:
        plain = GenerateRequest(messages=None, prompt="the", sampling=Sampling(max_tokens=8, temperature=0))
        text = "".join(d.text for d in await collect(e, plain))
        assert len(text) > 4
        stop = text[3:5]
        stopped = GenerateRequest(
            messages=None, prompt="the", sampling=Sampling(max_tokens=8, temperature=0, stop=(stop,))
        )
        deltas = await collect(e, stopped)
        assert "".join(d.text for d in deltas) == text[: text.find(stop)]
        assert deltas[-1].finish_reason == "stop"
    finally:
        await e.unload()


async def test_openai_wrong_key_fails_the_start_without_echoing_it(openai_base: str, tmp_path: Path) -> None:
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": "sk-wrong-secret-999"}, settings(tmp_path))
    with pytest.raises(FailedPrecondition) as info:
        await e.load()
    await e.unload()
    assert info.value.code == "remote_auth_failed"
    assert "sk-wrong" not in info.value.message and "999" not in info.value.message


async def test_key_references(openai_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HOME_SECRET", KEY)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "openai").write_text(KEY + "\n")
    s = settings(tmp_path, secret_dirs=[secrets])
    for ref in ("env:OPENAI_API_KEY", f"file:{secrets / 'openai'}"):
        e = engine(f"{openai_base}/models/tiny", {"API-KEY": ref}, s)
        await e.load()
        try:
            assert (await collect(e, chat(max_tokens=2)))[-1].completion_tokens == 2
            assert e.effective_parameters["API-KEY"] == "****"
        finally:
            await e.unload()
    outside = tmp_path / "elsewhere"
    outside.write_text(KEY)
    for ref in ("env:HOME_SECRET", f"file:{outside}", f"file:{secrets}/../elsewhere", "env:OPENAI_MISSING"):
        e = engine(f"{openai_base}/models/tiny", {"API-KEY": ref}, s)
        with pytest.raises(FailedPrecondition) as info:
            await e.load()
        assert info.value.code == "invalid_api_key_reference", ref


async def test_private_address_refused_unless_allowed(openai_base: str, tmp_path: Path) -> None:
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": KEY}, RunnerSettings(root=tmp_path))
    with pytest.raises(InvalidArgument) as info:
        await e.load()
    assert info.value.code == "unsafe_source_url"


async def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    e = engine(f"http://127.0.0.1:{port}/v1/models/x", {"API-KEY": KEY}, settings(tmp_path))
    with pytest.raises(Unavailable) as info:
        await e.load()
    await e.unload()
    assert info.value.code == "remote_unreachable"


# --- Azure OpenAI ----------------------------------------------------------------------------------------


def azure_params(deployment: str = "gpt-4o-mini", key: str = "azure-test-key") -> dict[str, Any]:
    return {"API-KEY": key, "DEPLOYMENT-NAME": deployment, "api-version": "2024-10-21"}


async def test_azure_chat_completion_and_embeddings(azure: FakeAzure, tmp_path: Path) -> None:
    e = engine(f"{azure.url}/openai/deployments/gpt-4o-mini", azure_params(), settings(tmp_path))
    await e.load()
    try:
        deltas = await collect(e, chat("one two three", max_tokens=5))
        assert "".join(d.text for d in deltas) == " ".join(WORDS[:5])
        assert [d.text for d in deltas[:5]] == ["alpha", " beta", " gamma", " delta", " epsilon"]
        last = deltas[-1]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 3, 5)
        assert azure.requests[-1] == (
            "/openai/deployments/gpt-4o-mini/chat/completions",
            "2024-10-21",
            "gpt-4o-mini",
        )
        plain = GenerateRequest(messages=None, prompt="a b", sampling=Sampling(max_tokens=2))
        assert "".join(d.text for d in await collect(e, plain)) == "alpha beta"
        assert azure.requests[-1][0] == "/openai/deployments/gpt-4o-mini/completions"
        vectors, tokens = await e.embed(["hello world", "x"])
        assert vectors == [[11.0, 1.0, 0.5], [1.0, 1.0, 0.5]] and tokens == 3
    finally:
        await e.unload()


@pytest.mark.parametrize(
    ("deployment", "key", "error", "code"),
    [
        ("gpt-4o-mini", "wrong-azure-key", FailedPrecondition, "remote_auth_failed"),
        ("no-such-deployment", "azure-test-key", FailedPrecondition, "remote_model_not_found"),
        ("throttled", "azure-test-key", ResourceExhausted, "remote_rate_limited"),
        ("broken", "azure-test-key", Unavailable, "remote_unavailable"),
        ("cut", "azure-test-key", Unavailable, "remote_unavailable"),
        ("slow", "azure-test-key", Unavailable, "remote_timeout"),
    ],
)
async def test_azure_errors(
    azure: FakeAzure, tmp_path: Path, deployment: str, key: str, error: type[JanError], code: str
) -> None:
    s = settings(tmp_path, api_read_timeout_s=0.5)
    e = engine(azure.url, azure_params(deployment, key), s)
    await e.load()
    try:
        with pytest.raises(error) as info:
            await collect(e, chat(max_tokens=5))
        assert info.value.code == code
        assert key not in info.value.message
        if deployment == "throttled":
            assert "retry after 7 s" in info.value.message
    finally:
        await e.unload()


# --- pure pieces: key masking, object names, stop strings ---------------------------------------------------


def test_gateway_masks_credentials() -> None:
    import orjson

    from gateway.protocol.models import parameters_fragment

    def shown(params: dict[str, Any]) -> Any:
        return orjson.loads(orjson.dumps(parameters_fragment(orjson.dumps(params).decode())))

    assert shown({"API-KEY": KEY, "DEPLOYMENT-NAME": "d", "max_tokens": 3}) == {
        "API-KEY": "****",
        "DEPLOYMENT-NAME": "d",
        "max_tokens": 3,
    }
    assert shown({"api_key": "env:OPENAI_API_KEY", "client_secret": {"x": 1}}) == {
        "api_key": "env:OPENAI_API_KEY",
        "client_secret": "****",
    }
    plain = {"max_tokens": 5, "token_limit": 9, "temperature": 0.2}
    assert shown(plain) == plain


def test_remote_object_names() -> None:
    from services.catalog.importers import azure_objects, openai_objects, remote_model_name

    assert remote_model_name("https://api.openai.com/v1/models/gpt-3.5-turbo", "api", {}) == "gpt-3.5-turbo"
    assert remote_model_name("https://x.ai/v1/models/meta-llama/Llama-3", "api", {}) == "meta-llama_Llama-3"
    assert remote_model_name("https://r.openai.azure.com", "api", {"DEPLOYMENT-NAME": "gpt4"}) == "gpt4"
    assert remote_model_name("triton://t.svc:8001/ensemble/1", "tensorrt", {}) == "ensemble"
    for url, engine_name in (("triton://t.svc/ensemble", "tensorrt"), ("/tmp/x.gguf", "api")):
        with pytest.raises(InvalidArgument):
            remote_model_name(url, engine_name, {})
    (o,) = openai_objects("https://api.openai.com/v1/", "env:OPENAI_API_KEY", ["gpt-4o"])
    assert (o.stem, o.source_url, o.parameters) == (
        "gpt-4o",
        "https://api.openai.com/v1/models/gpt-4o",
        {"API-KEY": "env:OPENAI_API_KEY"},
    )
    (a,) = azure_objects("https://r.openai.azure.com/", "k", ["gpt4"], "")
    assert parse_target(a.source_url, a.parameters).url("chat/completions") == (
        "https://r.openai.azure.com/openai/deployments/gpt4/chat/completions?api-version=2024-10-21"
    )


def test_stop_filter_holds_back_a_possible_stop() -> None:
    from services.runner.engines.prompt import StopFilter

    f = StopFilter(["<|end|>"])
    assert f.feed("Hello <") == "Hello "
    assert f.feed("|en") == ""
    assert f.feed("d|> more") == ""
    assert f.stopped and f.flush() == ""  # "Hello " was all the text before the stop
    g = StopFilter(["<|end|>"])
    assert g.feed("a <") == "a " and g.feed("b") == "<b" and not g.stopped
