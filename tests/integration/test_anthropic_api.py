"""Anthropic's Messages API through the official `anthropic` SDK, unmodified, against the real gateway,
catalog and runner (llama.cpp with a tiny GGUF written by the tests): messages, both ways of streaming,
a tool_use round trip, count_tokens, structured output, API keys, and a 400 naming every field that would
not be honoured. The stream's events of thinking and of an error are checked on fakes of the runner's
messages (the tiny model does not think, and does not fail)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from gateway.errors import APIError
from gateway.protocol.anthropic import MessageStream
from gateway.routes.anthropic import message_events
from jan.runner.v1 import runner_service_pb2 as runner_pb
from services.common.envsettings import Secret
from tests.harness import (
    TINY_CHAT,
    TOOLS_CTX,
    WEATHER_PARAMETERS,
    Stack,
    serving_stack,
    write_tiny_chat_model,
)

pytest.importorskip("llama_cpp")

MODEL = TINY_CHAT
HELLO: list[Any] = [{"role": "user", "content": "the cat"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": WEATHER_PARAMETERS,
}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
# One call: a model of random weights may otherwise call until max_tokens.
FORCED: Any = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


@asynccontextmanager
async def client_of(stack: Stack, api_key: str = "unused") -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK over the gateway's ASGI app (the SDK sends with httpx2, which has its own transport)."""
    transport = httpx2.ASGITransport(app=stack.gateway.app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as http:
        yield anthropic.AsyncAnthropic(base_url="http://gw", api_key=api_key, http_client=http, max_retries=0)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with client_of(stack) as client:
        yield client


async def test_a_message_with_its_usage_and_the_prefix_cache(client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.count_tokens(model=MODEL, messages=HELLO)
    first = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO)
    assert first.type == "message" and first.role == "assistant" and first.model == MODEL
    assert first.id.startswith("msg_") and first.stop_sequence is None
    assert [b.type for b in first.content] == ["text"] and first.content[0].text  # type: ignore[union-attr]
    assert first.stop_reason in ("end_turn", "max_tokens")
    usage = first.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == counted.input_tokens
    assert 0 < usage.output_tokens <= 12 and usage.cache_creation_input_tokens == 0
    again = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO)
    assert again.content == first.content  # greedy
    assert again.usage.cache_read_input_tokens == counted.input_tokens - 1  # all but the last token
    assert again.usage.input_tokens == 1
    cut = await client.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3


async def test_system_and_sampling_reach_the_model(client: anthropic.AsyncAnthropic) -> None:
    plain = await client.messages.count_tokens(model=MODEL, messages=HELLO)
    as_text = await client.messages.count_tokens(model=MODEL, system="be brief", messages=HELLO)
    as_blocks = await client.messages.count_tokens(
        model=MODEL, system=[{"type": "text", "text": "be brief"}], messages=HELLO
    )
    assert as_text.input_tokens == as_blocks.input_tokens > plain.input_tokens
    answer = await client.messages.create(model=MODEL, max_tokens=12, system="be brief", messages=HELLO)
    usage = answer.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == as_text.input_tokens
    greedy = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO)
    sampled = [
        await client.messages.create(
            model=MODEL,
            max_tokens=12,
            messages=HELLO,
            extra_body={"temperature": 1.0, "top_p": 1.0, "top_k": 0},
        )
        for _ in range(3)
    ]
    assert any(s.content != greedy.content for s in sampled)  # temperature reached the sampler
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(
            model=MODEL, max_tokens=12, messages=HELLO, extra_body={"temperature": 1.5}
        )
    assert bad.value.body["error"]["message"].startswith("temperature")  # type: ignore[index]


async def test_a_stop_sequence_cuts_the_answer(client: anthropic.AsyncAnthropic) -> None:
    full = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO)
    text = full.content[0].text  # type: ignore[union-attr]
    stop = text[len(text) // 2 :][:2]
    stops = ["never in the text", stop]
    cut = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO, stop_sequences=stops)
    assert cut.content[0].text == text[: text.index(stop)]  # type: ignore[union-attr]
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    async with client.messages.stream(
        model=MODEL, max_tokens=12, messages=HELLO, stop_sequences=stops
    ) as stream:
        deltas = [e.delta async for e in stream if e.type == "message_delta"]
        final = await stream.get_final_message()
    assert [(d.stop_reason, d.stop_sequence) for d in deltas] == [("stop_sequence", stop)]
    assert final.content[0].text == cut.content[0].text and final.stop_sequence == stop  # type: ignore[union-attr]
    # A stop sequence that the answer never reaches is not reported.
    missed = await client.messages.create(
        model=MODEL, max_tokens=12, messages=HELLO, stop_sequences=["never in the text"]
    )
    assert missed.content == full.content and missed.stop_sequence is None
    assert missed.stop_reason == full.stop_reason != "stop_sequence"


async def test_the_stream_helper_and_raw_events(client: anthropic.AsyncAnthropic) -> None:
    whole = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO)
    async with client.messages.stream(model=MODEL, max_tokens=12, messages=HELLO) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason and final.id.startswith("msg_")
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == (
        whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0)
    )

    events = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO, stream=True)
    kinds = [event.type async for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert set(kinds[2:-3]) == {"content_block_delta"}


async def test_a_tool_use_round_trip(client: anthropic.AsyncAnthropic) -> None:
    question: Any = {"role": "user", "content": "the weather in Oslo"}
    called = await client.messages.create(
        model=MODEL, max_tokens=200, messages=[question], tools=[WEATHER, TIME], tool_choice=FORCED
    )
    assert called.stop_reason == "tool_use"
    uses = [b for b in called.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    assert uses[0].input["city"] in ("Paris", "Oslo", "Lima") and 1 <= uses[0].input["days"] <= 7  # type: ignore[index,operator]
    result: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": '{"celsius": 4}'}],
    }
    history = [question, called.to_param(), result]
    answer = await client.messages.create(model=MODEL, max_tokens=12, messages=history, tools=[WEATHER])
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # The loop reached the prompt: the call and its result are rendered, so counted.
    counted = await client.messages.count_tokens(model=MODEL, messages=history)
    shorter = await client.messages.count_tokens(model=MODEL, messages=[question])
    assert counted.input_tokens > shorter.input_tokens
    failed: Any = {"role": "user", "content": [{**result["content"][0], "is_error": True}]}
    errored = await client.messages.count_tokens(model=MODEL, messages=[question, called.to_param(), failed])
    assert errored.input_tokens > counted.input_tokens  # the error is told to the model

    async with client.messages.stream(
        model=MODEL, max_tokens=200, messages=[question], tools=[WEATHER], tool_choice=FORCED
    ) as stream:
        deltas = [
            e.delta.partial_json
            async for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        final = await stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(streamed) == 1 and deltas
    assert streamed[0].input == json.loads("".join(deltas)) and streamed[0].id


async def test_tool_choice_any_auto_and_none(client: anthropic.AsyncAnthropic) -> None:
    question: Any = [{"role": "user", "content": "the weather"}]
    anyone = await client.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=question,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert anyone.stop_reason == "tool_use"
    assert [b.type for b in anyone.content] == ["tool_use"]  # nothing before a forced call
    auto = await client.messages.create(
        model=MODEL, max_tokens=200, messages=question, tools=[WEATHER], tool_choice={"type": "auto"}
    )
    uses = [b for b in auto.content if b.type == "tool_use"]
    assert (auto.stop_reason == "tool_use") == bool(uses)
    plain = await client.messages.create(model=MODEL, max_tokens=12, messages=question)
    none = await client.messages.create(
        model=MODEL, max_tokens=12, messages=question, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert none.content == plain.content  # the tools were not offered
    counted = await client.messages.count_tokens(
        model=MODEL, messages=question, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert (
        counted.input_tokens
        == (await client.messages.count_tokens(model=MODEL, messages=question)).input_tokens
    )


async def test_output_config_format_constrains_the_text(client: anthropic.AsyncAnthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    answer = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        messages=HELLO,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert json.loads(answer.content[0].text) in ({"ok": True}, {"ok": False})  # type: ignore[union-attr]


async def test_labels_and_cache_hints_are_accepted(client: anthropic.AsyncAnthropic) -> None:
    ephemeral: Any = {"type": "ephemeral"}
    plain = await client.messages.create(model=MODEL, max_tokens=12, messages=HELLO, system="s")
    labelled = await client.messages.create(
        model=MODEL,
        max_tokens=12,
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "the cat", "cache_control": ephemeral}]}
        ],
        metadata={"user_id": "u-1"},
        service_tier="standard_only",
        cache_control=ephemeral,
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert labelled.content == plain.content  # they change nothing


async def test_earlier_thinking_is_accepted_and_not_shown(client: anthropic.AsyncAnthropic) -> None:
    turns: Any = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "the cat"},
    ]
    blocks = [{"type": "thinking", "thinking": "hm", "signature": ""}, {"type": "text", "text": "hello"}]
    thought = {"role": "assistant", "content": blocks}
    a = await client.messages.count_tokens(model=MODEL, messages=turns)
    b = await client.messages.count_tokens(model=MODEL, messages=[turns[0], thought, turns[2]])
    assert a.input_tokens == b.input_tokens


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"container": "c"}, "container"),
    ({"mcp_servers": []}, "mcp_servers"),
    ({"inference_geo": "us"}, "inference_geo"),
    ({"speed": "fast"}, "speed"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"metadata": {"user_id": "u", "team": "t"}}, "metadata.team"),
    ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ({"stop_sequences": ["ok", ""]}, "stop_sequences.1"),
    ({"temperature": True}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]}
            ]
        },
        "messages.0.content.1.source.type",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        "messages.0.content.0.type",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "citations": [{"x": 1}]}]}]},
        "messages.0.content.0.citations",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope"}]}]},
        "messages.0.content.0.tool_use_id",
    ),
    ({"messages": [*HELLO, {"role": "assistant", "content": "The answer is"}]}, "messages.1.role"),
    ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages.0.name"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
    (
        {"tools": [{"name": "f", "input_schema": {"type": "object"}, "defer_loading": True}]},
        "tools.0.defer_loading",
    ),
    ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "launch"}}, "tool_choice.name"),
    ({"tool_choice": {"type": "any"}}, "tool_choice.type"),
    # Refused by the runner, named as Anthropic's request names them.
    (
        {
            "output_config": {
                "format": {"type": "json_schema", "schema": {"type": "integer", "multipleOf": 3}}
            }
        },
        "output_config.format.schema",
    ),
    (
        {
            "tools": [
                {"name": "f", "input_schema": {"type": "object", "properties": {"n": {"multipleOf": 3}}}}
            ],
            "tool_choice": {"type": "any"},
        },
        "tools",
    ),
    ({"tools": [WEATHER], "tool_choice": {"type": "none", "disable_parallel_tool_use": True}}, "tool_choice"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED, ids=[p for _, p in REFUSED])
async def test_every_field_that_would_not_be_honoured_is_400_naming_it(
    client: anthropic.AsyncAnthropic, extra: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "max_tokens": 12, "messages": HELLO, **extra}
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.post("/v1/messages", cast_to=anthropic.types.Message, body=body)
    error = bad.value.body
    assert isinstance(error, dict) and error["type"] == "error", error
    assert error["error"]["type"] == "invalid_request_error"
    # Anthropic's errors have no `param`: the path opens the message.
    assert error["error"]["message"].startswith(f"{param}"), error


async def test_count_tokens_counts_the_tool_definitions_as_a_message_renders_them(
    client: anthropic.AsyncAnthropic,
) -> None:
    question: Any = [{"role": "user", "content": "the weather"}]
    plain = await client.messages.count_tokens(model=MODEL, messages=question)
    offers: list[dict[str, Any]] = [
        {"tools": [WEATHER, TIME]},
        {"tools": [WEATHER, TIME], "tool_choice": FORCED},
        {"tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
        {
            "tools": [WEATHER],
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        },
    ]
    counts = []
    for offer in offers:
        counted = await client.messages.count_tokens(model=MODEL, messages=question, **offer)
        created = await client.messages.create(model=MODEL, max_tokens=1, messages=question, **offer)
        usage = created.usage
        assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0), offer
        counts.append(counted.input_tokens)
    assert min(counts) > plain.input_tokens  # the definitions are in the prompt
    assert len(set(counts)) > 1  # and how they are offered changes it


async def test_an_unknown_model_is_not_found(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nobody/nothing", max_tokens=5, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="nobody/nothing", messages=HELLO)


async def test_the_api_key_is_read_from_x_api_key(tmp_path: Path) -> None:
    write_tiny_chat_model(tmp_path / "jan", n_ctx=TOOLS_CTX)
    async with serving_stack(tmp_path / "jan", api_keys=Secret("k1")) as stack:
        async with client_of(stack, api_key="wrong") as wrong:
            with pytest.raises(anthropic.AuthenticationError) as denied:
                await wrong.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
            assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
            with pytest.raises(anthropic.AuthenticationError):
                await wrong.messages.count_tokens(model=MODEL, messages=HELLO)
        async with client_of(stack, api_key="k1") as right:
            answer = await right.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
            assert answer.content


# --- the stream's events, on fakes of the runner's messages ----------------------------------------------


def reply(**fields: Any) -> runner_pb.GenerateResponse:
    return runner_pb.GenerateResponse(**fields)


async def fake_answer(*replies: runner_pb.GenerateResponse, fail: bool = False) -> AsyncIterator[Any]:
    for r in replies:
        yield r
    if fail:
        raise APIError(503, "the runner went away", code="runner_unavailable")


def parse_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in data.decode().split("\n\n"):
        if chunk:
            name, payload = chunk.split("\n")
            events.append((name.removeprefix("event: "), json.loads(payload.removeprefix("data: "))))
    return events


async def test_thinking_text_and_calls_stream_as_blocks_in_order() -> None:
    stream = MessageStream("msg_1", MODEL, max_tokens=100)
    calls = [
        runner_pb.ToolCallDelta(index=0, id="call_a", name="get_time", arguments='{"a"'),
        runner_pb.ToolCallDelta(index=0, arguments=": 1}"),
    ]
    answer = fake_answer(
        reply(reasoning="Let me "),
        reply(reasoning="think."),
        reply(text="Sure."),
        reply(tool_calls=calls),
        reply(
            finish_reason=runner_pb.FINISH_REASON_TOOL_CALLS,
            usage=runner_pb.Usage(prompt_tokens=10, completion_tokens=7, cached_tokens=4),
        ),
    )
    events = parse_sse(b"".join([chunk async for chunk in message_events(answer, stream)]))  # type: ignore[arg-type]
    assert [(name, p.get("index")) for name, p in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert all(name == p["type"] for name, p in events)
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[3][1]["delta"] == {"type": "thinking_delta", "thinking": "think."}
    assert events[6][1]["delta"] == {"type": "text_delta", "text": "Sure."}
    assert events[8][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_time",
        "input": {},
    }
    assert events[10][1]["delta"] == {"type": "input_json_delta", "partial_json": ": 1}"}
    delta = events[12][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"] == {
        "input_tokens": 6,
        "output_tokens": 7,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
    }


async def test_a_failure_after_the_headers_is_an_error_event() -> None:
    stream = MessageStream("msg_1", MODEL, max_tokens=100)
    answer = fake_answer(reply(text="Hel"), fail=True)
    events = parse_sse(b"".join([chunk async for chunk in message_events(answer, stream)]))  # type: ignore[arg-type]
    assert [name for name, _ in events][-1] == "error"
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "the runner went away"},
    }
    unfinished = message_events(fake_answer(reply(text="x")), MessageStream("m", MODEL, 5))  # type: ignore[arg-type]
    assert parse_sse(b"".join([chunk async for chunk in unfinished]))[-1][0] == "error"
