"""The `api` engine against real loopback remotes: llama-cpp-python's own OpenAI-compatible server (bearer
key) and a fake Azure OpenAI resource (its URL shapes, `api-key` header, failures injected, OpenAI's wire
shapes for choices, tool calls, log-probs and reasoning, and the request bodies it received)."""

from __future__ import annotations

import dataclasses
import json
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
from services.runner.engines.base import (
    Constraint,
    Delta,
    GenerateRequest,
    LoadSpec,
    Sampling,
    Tool,
    ToolChoice,
    refuse_unsupported,
)
from services.runner.settings import RunnerSettings
from tests.fakes.azure import WORDS, FakeAzure
from tests.fakes.llama_server import llama_server
from tests.fakes.tiny_gguf import SPACE, TOKENS, write_tiny_gguf

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


SAMPLING = {f.name for f in dataclasses.fields(Sampling)}


def request(messages: list[dict[str, Any]] | None, prompt: str | None, **fields: Any) -> GenerateRequest:
    """A request whose sampling fields in `fields` count as given (as the servicer marks them); the other
    fields are GenerateRequest's."""
    sampling = {k: v for k, v in fields.items() if k in SAMPLING}
    rest = {k: v for k, v in fields.items() if k not in SAMPLING}
    return GenerateRequest(
        messages=messages, prompt=prompt, sampling=Sampling(**sampling, given=frozenset(sampling)), **rest
    )


def chat(text: str = "Say hello", **fields: Any) -> GenerateRequest:
    return request([{"role": "user", "content": text}], None, **fields)


def completion(prompt: str, **fields: Any) -> GenerateRequest:
    return request(None, prompt, **fields)


def by_choice(deltas: list[Delta]) -> dict[int, list[Delta]]:
    out: dict[int, list[Delta]] = {}
    for d in deltas:
        out.setdefault(d.index, []).append(d)
    return out


WEATHER = Tool(
    name="get_weather",
    description="The weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
    },
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
        text = "".join(d.text for d in await collect(e, completion("the", max_tokens=8, temperature=0)))
        assert len(text) > 4
        stop = text[3:5]
        deltas = await collect(e, completion("the", max_tokens=8, temperature=0, stop=(stop,)))
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


async def test_openai_sampling_fields_reach_the_remote(openai_base: str, tmp_path: Path) -> None:
    # top_k=1 leaves only the likeliest token: even at temperature 1.5 the text is the greedy one, which
    # shows that top_k reached the remote (once it was silently dropped).
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": KEY}, settings(tmp_path))
    await e.load()
    try:

        async def text(**sampling: Any) -> str:
            return "".join(d.text for d in await collect(e, chat("the quick", max_tokens=8, **sampling)))

        greedy = await text(temperature=0)
        assert await text(temperature=1.5, seed=5, top_k=1) == greedy
        assert await text(temperature=1.5, seed=5) != greedy  # the remote's own top_k (40) samples
    finally:
        await e.unload()


async def test_openai_json_object_and_schema(openai_base: str, tmp_path: Path) -> None:
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": KEY}, settings(tmp_path))
    await e.load()
    try:
        plain = "".join(d.text for d in await collect(e, chat(max_tokens=12, temperature=0)))
        constrained = chat(max_tokens=12, temperature=0, constraint=Constraint(kind="json_object"))
        text = "".join(d.text for d in await collect(e, constrained))
        assert text.lstrip().startswith("{") and not plain.lstrip().startswith("{")  # the remote's grammar
        # llama_cpp.server knows only {"type": "json_object"}: OpenAI's json_schema fails there, loudly.
        schema = Constraint(kind="json_schema", schema={"type": "object"})
        with pytest.raises(JanError) as info:
            await collect(e, chat(max_tokens=12, constraint=schema))
        assert "json_object" in info.value.message
    finally:
        await e.unload()


async def test_openai_logprobs_and_logit_bias(openai_base: str, tmp_path: Path) -> None:
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": KEY}, settings(tmp_path))
    await e.load()
    try:
        deltas = await collect(e, chat(max_tokens=5, temperature=0, logprobs=True, top_logprobs=2))
        entries = [lp for d in deltas for lp in d.logprobs]
        assert len(entries) == deltas[-1].completion_tokens == 5
        assert "".join(lp.token for lp in entries) == "".join(d.text for d in deltas)
        for lp in entries:
            assert lp.bytes == lp.token.encode() and lp.logprob < 0  # no `bytes` from this remote
            assert len(lp.top) == 2 and lp.top[0].token == lp.token  # greedy: the likeliest was taken
        deltas = await collect(e, completion("the", max_tokens=4, temperature=0, logprobs=True))
        entries = [lp for d in deltas for lp in d.logprobs]
        assert "".join(lp.token for lp in entries) == "".join(d.text for d in deltas)
        assert len(entries) == 4 and all(lp.top == () for lp in entries)  # top_logprobs 0: none
        cat = TOKENS.index(SPACE + "cat")
        biased = await collect(e, chat(max_tokens=4, temperature=0, logit_bias={cat: 100.0}))
        assert "".join(d.text for d in biased).split() == ["cat"] * 4
    finally:
        await e.unload()


async def test_openai_tool_call_and_ignored_fields(openai_base: str, tmp_path: Path) -> None:
    e = engine(f"{openai_base}/models/tiny", {"API-KEY": KEY}, settings(tmp_path))
    await e.load()
    try:
        forced = chat(
            "Weather?",
            max_tokens=40,
            temperature=0,
            tools=(WEATHER,),
            tool_choice=ToolChoice(mode="function", name="get_weather"),
        )
        deltas = await collect(e, forced)
        calls = [c for d in deltas for c in d.tool_calls]
        # llama_cpp.server repeats the id and name in every piece: only the first piece carries them here.
        assert calls[0].id and calls[0].name == "get_weather"
        assert len(calls) > 2 and all(not c.id and not c.name and c.index == 0 for c in calls[1:])
        assert json.loads("".join(c.arguments for c in calls))["city"] in ("Paris", "Rome")
        assert deltas[-1].finish_reason == "tool_calls" and "".join(d.text for d in deltas) == ""
        # This remote ignores `n` and, unless a function is named, `tools`: an error, not a pretend answer.
        with pytest.raises(InvalidArgument) as info:
            await collect(e, chat(max_tokens=3, n=2))
        assert (info.value.param, info.value.code) == ("n", "remote_ignored_parameter")
        required = chat("Weather?", max_tokens=5, tools=(WEATHER,), tool_choice=ToolChoice(mode="required"))
        with pytest.raises(InvalidArgument) as info:
            await collect(e, required)
        assert info.value.param == "tool_choice"
    finally:
        await e.unload()


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
        assert "".join(d.text for d in await collect(e, completion("a b", max_tokens=2))) == "alpha beta"
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


async def azure_engine(tmp_path: Path, azure: FakeAzure, deployment: str = "gpt-4o-mini") -> ApiEngine:
    e = engine(f"{azure.url}/openai/deployments/{deployment}", azure_params(deployment), settings(tmp_path))
    await e.load()
    return e


async def test_azure_request_body_has_exactly_the_given_fields(azure: FakeAzure, tmp_path: Path) -> None:
    e = await azure_engine(tmp_path, azure)
    try:
        await collect(e, chat(max_tokens=2))
        body = azure.bodies[-1]
        assert set(body) == {"stream", "stream_options", "messages", "max_tokens"}  # defaults stay home
        await collect(
            e,
            chat(
                max_tokens=2,
                temperature=0.3,
                top_k=7,
                min_p=0.2,
                repeat_penalty=1.2,
                seed=9,
                stop=("a", "b", "c", "d", "e"),
            ),
        )
        body = azure.bodies[-1]
        assert {k: v for k, v in body.items() if k not in ("stream", "stream_options", "messages")} == {
            "max_tokens": 2,
            "temperature": 0.3,
            "top_k": 7,
            "min_p": 0.2,
            "repeat_penalty": 1.2,
            "repetition_penalty": 1.2,  # vLLM's name for it
            "seed": 9,
            "stop": ["a", "b", "c", "d"],  # OpenAI's limit; the fifth is applied here
        }
        await collect(e, chat(max_tokens=2, parallel_tool_calls=False, logit_bias={5: -100.0, 7: 3.5}))
        assert azure.bodies[-1]["parallel_tool_calls"] is False
        assert azure.bodies[-1]["logit_bias"] == {"5": -100.0, "7": 3.5}
    finally:
        await e.unload()


async def test_a_stop_string_cut_here_is_reported(azure: FakeAzure, tmp_path: Path) -> None:
    e = await azure_engine(tmp_path, azure)  # the fake does not apply stop strings: they are cut here
    try:
        deltas = await collect(e, chat(max_tokens=5, stop=("zz", "ta")))
        assert "".join(d.text for d in deltas) == "alpha be"
        assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_sequence == "ta"
        assert all(d.stop_sequence == "" for d in deltas[:-1])
        deltas = await collect(e, chat(max_tokens=2, stop=("zz",)))
        assert deltas[-1].finish_reason == "length" and deltas[-1].stop_sequence == ""
    finally:
        await e.unload()


async def test_azure_structured_output(azure: FakeAzure, tmp_path: Path) -> None:
    e = await azure_engine(tmp_path, azure)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    try:
        deltas = await collect(
            e, chat(max_tokens=50, constraint=Constraint(kind="json_schema", schema=schema))
        )
        assert azure.bodies[-1]["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema, "strict": True},
        }
        assert json.loads("".join(d.text for d in deltas)) == {"city": "alpha", "days": 7}
        assert len(deltas) > 3 and deltas[-1].finish_reason == "stop"
        deltas = await collect(e, completion("a b", max_tokens=50, constraint=Constraint(kind="json_object")))
        assert azure.bodies[-1]["response_format"] == {"type": "json_object"}
        assert isinstance(json.loads("".join(d.text for d in deltas)), dict)
    finally:
        await e.unload()


async def test_azure_choices_logprobs_and_usage(azure: FakeAzure, tmp_path: Path) -> None:
    e = await azure_engine(tmp_path, azure)
    try:
        ask = chat("count with me", max_tokens=3, n=2, logprobs=True, top_logprobs=2)
        choices = by_choice(await collect(e, ask))
        assert azure.bodies[-1]["n"] == 2 and azure.bodies[-1]["top_logprobs"] == 2
        assert sorted(choices) == [0, 1]
        assert "".join(d.text for d in choices[0]) == "alpha beta gamma"
        assert "".join(d.text for d in choices[1]) == "beta gamma delta"
        finals = [c[-1] for c in choices.values()]
        assert all(f.finish_reason == "length" and f.prompt_tokens == 3 for f in finals)
        assert sum(f.completion_tokens for f in finals) == 6  # the remote's count, split over the finals
        assert [f.cached_tokens for f in finals] == [0, 0]
        for index, deltas in choices.items():
            entries = [lp for d in deltas for lp in d.logprobs]
            assert "".join(lp.token for lp in entries) == "".join(d.text for d in deltas)
            assert [lp.logprob for lp in entries] == [-round(0.1 * t + 0.01 * index, 4) for t in (1, 2, 3)]
            assert all(lp.bytes == lp.token.encode() and len(lp.top) == 2 for lp in entries)
        again = by_choice(await collect(e, ask))  # the same prompt again: read from the remote's cache
        assert [c[-1].cached_tokens for c in again.values()] == [3, 3]
        legacy = await collect(e, completion("a b", max_tokens=2, logprobs=True, top_logprobs=1))
        entries = [lp for d in legacy for lp in d.logprobs]
        assert azure.bodies[-1]["logprobs"] == 1
        assert [(lp.token, lp.logprob) for lp in entries] == [("alpha", -0.1), (" beta", -0.2)]
        # The remote sends the sampled token and one more (logprobs + 1, as OpenAI may): the best 1 stays.
        assert [[t.token for t in lp.top] for lp in entries] == [["alpha"], [" beta"]]
    finally:
        await e.unload()


async def test_azure_tool_calls(azure: FakeAzure, tmp_path: Path) -> None:
    e = await azure_engine(tmp_path, azure)
    clock = Tool(name="get_time", parameters={"type": "object", "properties": {"zone": {"type": "string"}}})
    try:
        deltas = await collect(e, chat("Weather and time?", tools=(WEATHER, clock)))
        body = azure.bodies[-1]
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "parameters": WEATHER.parameters,
                },
            },
            {"type": "function", "function": {"name": "get_time", "parameters": clock.parameters}},
        ]
        assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", True)
        calls = [c for d in deltas for c in d.tool_calls]
        firsts = [c for c in calls if c.id]
        assert [(c.index, c.name) for c in firsts] == [(0, "get_weather"), (1, "get_time")]
        for k, expected in ((0, {"city": "Paris"}), (1, {"zone": "alpha"})):
            assert json.loads("".join(c.arguments for c in calls if c.index == k)) == expected
        assert deltas[-1].finish_reason == "tool_calls"

        one = chat("Weather?", tools=(WEATHER, clock), parallel_tool_calls=False)
        calls = [c for d in await collect(e, one) for c in d.tool_calls]
        assert azure.bodies[-1]["parallel_tool_calls"] is False and {c.index for c in calls} == {0}
        named = chat(
            "Time?", tools=(WEATHER, clock), tool_choice=ToolChoice(mode="function", name="get_time")
        )
        calls = [c for d in await collect(e, named) for c in d.tool_calls]
        assert azure.bodies[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
        assert calls[0].name == "get_time"
        await collect(
            e, chat("Just talk", max_tokens=2, tools=(WEATHER,), tool_choice=ToolChoice(mode="none"))
        )
        assert azure.bodies[-1]["tool_choice"] == "none"

        # The conversation goes on: the assistant's call and the tool's answer reach the remote as they are.
        history = [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
        text = "".join(
            d.text
            for d in await collect(e, request(history, None, max_tokens=2, tool_choice=ToolChoice("none")))
        )
        assert azure.bodies[-1]["messages"] == history and text == "alpha beta"
        with pytest.raises(InvalidArgument) as info:
            await collect(e, chat(tool_choice=ToolChoice(mode="function", name="nope"), tools=(WEATHER,)))
        assert info.value.param == "tool_choice"
    finally:
        await e.unload()


async def test_azure_reasoning_and_whole_answers(azure: FakeAzure, tmp_path: Path) -> None:
    e = await azure_engine(tmp_path, azure, "thinker")
    try:
        deltas = await collect(e, chat(max_tokens=5))
        assert "".join(d.reasoning for d in deltas) == "Let me think"
        assert "".join(d.text for d in deltas) == "alpha beta"
        inline = await collect(e, chat(max_tokens=5, reasoning="inline"))
        assert "".join(d.text for d in inline) == "<think>Let me think</think>alpha beta"
        assert all(not d.reasoning for d in inline)
    finally:
        await e.unload()
    e = await azure_engine(tmp_path, azure, "unstreamed")  # one JSON answer to a streaming request
    try:
        choices = by_choice(await collect(e, chat("a b", max_tokens=2, n=2, logprobs=True)))
        assert ["".join(d.text for d in c) for c in choices.values()] == ["alpha beta", "beta gamma"]
        assert [len([lp for d in c for lp in d.logprobs]) for c in choices.values()] == [2, 2]
        assert sum(c[-1].completion_tokens for c in choices.values()) == 4
        calls = [c for d in await collect(e, chat("x", tools=(WEATHER,))) for c in d.tool_calls]
        assert [(c.index, c.name, json.loads(c.arguments)) for c in calls] == [
            (0, "get_weather", {"city": "Paris"})
        ]
        assert calls[0].id.startswith("call_")
    finally:
        await e.unload()


def test_grammar_is_refused_before_the_remote(tmp_path: Path) -> None:
    e = engine("https://api.openai.com/v1/models/gpt-4o-mini", {}, settings(tmp_path))
    with pytest.raises(InvalidArgument) as info:
        refuse_unsupported(e, chat(constraint=Constraint(kind="grammar", grammar='root ::= "a"')))
    assert info.value.param == "grammar"
    honoured = chat(
        constraint=Constraint(kind="json_object"),
        tools=(WEATHER,),
        logprobs=True,
        top_logprobs=3,
        n=2,
        logit_bias={1: 1.0},
    )
    refuse_unsupported(e, honoured)  # all of these are forwarded


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
    assert f.stopped and f.matched == "<|end|>" and f.flush() == ""  # "Hello " was all before the stop
    g = StopFilter(["<|end|>"])
    assert g.feed("a <") == "a " and g.feed("b") == "<b" and not g.stopped and g.matched == ""
