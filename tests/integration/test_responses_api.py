"""OpenAI's Responses API (`POST /v1/responses`) through the official openai SDK against the real gateway,
catalog and runner (llama.cpp with tiny GGUFs written by the tests): the same prompt as chat completions,
the response object and its echoed settings, streamed events in order, `responses.stream` and `parse`,
function calls and a call round trip, logprobs, reasoning items, a runner failure mid-stream, and a 400
naming every field that would not be honoured."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from gateway.errors import APIError
from gateway.protocol.common import ImageRef
from jan.runner.v1 import runner_service_pb2 as runner_pb
from services.common.envsettings import Secret
from tests.harness import (
    CHAT_TEMPLATE,
    TINY_CHAT,
    TOOLS_CTX,
    WEATHER_PARAMETERS,
    Stack,
    serving_stack,
    write_tiny_chat_model,
)

pytest.importorskip("llama_cpp")

MODEL = TINY_CHAT
THINKER = "tiny/think"
# A template that opens a thinking block at the end of the prompt: everything the model writes is thinking.
THINK_TEMPLATE = CHAT_TEMPLATE.replace("<|assistant|>", "<|assistant|><think>")


@pytest.fixture
def stack_models() -> Callable[[Path], None]:
    def write(root: Path) -> None:
        write_tiny_chat_model(root, n_ctx=TOOLS_CTX)
        write_tiny_chat_model(root, n_ctx=TOOLS_CTX, name="think", template=THINK_TEMPLATE)

    return write


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}
TIME = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {}},
    "strict": None,
}
FLAG = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


class Pet(BaseModel):
    name: str = Field(max_length=6)
    kind: Literal["cat", "dog"]
    age: int = Field(ge=1, le=20)
    toys: list[Annotated[str, Field(max_length=5)]] = Field(max_length=2)


class Flag(BaseModel):
    ok: bool


async def _chat_text(stack: Stack, messages: list[dict[str, Any]], **extra: Any) -> tuple[str, Any]:
    answer = await stack.sdk.chat.completions.create(model=MODEL, messages=messages, **extra)  # type: ignore[arg-type]
    return answer.choices[0].message.content or "", answer


async def test_a_string_input_is_the_chat_prompt_and_the_response_object_is_complete(stack: Stack) -> None:
    response = await stack.sdk.responses.create(
        model=MODEL, input="the cat", instructions="be brief", max_output_tokens=6
    )
    text, chat = await _chat_text(
        stack,
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}],
        max_tokens=6,
    )
    assert response.output_text == text and text
    assert response.id.startswith("resp_") and response.object == "response" and response.created_at > 0
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.status == "incomplete"
    [part] = message.content
    assert part.type == "output_text" and part.annotations == [] and part.text == text
    usage = response.usage
    assert usage is not None and usage.output_tokens == 6 and usage.input_tokens == chat.usage.prompt_tokens
    assert usage.total_tokens == usage.input_tokens + 6 and usage.output_tokens_details.reasoning_tokens == 0
    assert usage.input_tokens_details.cached_tokens >= 0
    # The settings the SDK expects back.
    assert response.instructions == "be brief" and response.max_output_tokens == 6
    assert response.tools == [] and response.tool_choice == "auto" and response.parallel_tool_calls is True
    assert (
        response.text is not None and response.text.format is not None and response.text.format.type == "text"
    )
    assert response.metadata == {} and response.truncation == "disabled"


async def test_message_items_with_parts_and_roles_render_as_chat_messages(stack: Stack) -> None:
    items: list[Any] = [
        {"role": "developer", "content": "answer shortly"},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "the "}, {"type": "input_text", "text": "cat"}],
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "a dog", "annotations": []}]},
        {"role": "user", "content": "and?"},
    ]
    response = await stack.sdk.responses.create(model=MODEL, input=items, temperature=0, top_p=1)
    text, _ = await _chat_text(
        stack,
        [
            {"role": "system", "content": "answer shortly"},
            {"role": "user", "content": "the cat"},
            {"role": "assistant", "content": "a dog"},
            {"role": "user", "content": "and?"},
        ],
    )
    assert response.output_text == text and response.temperature == 0 and response.top_p == 1
    # The response's own output goes back in as input (the stateless loop).
    again = await stack.sdk.responses.create(
        model=MODEL, input=[*items, *response.output, {"role": "user", "content": "more"}]
    )
    assert again.output_text


async def test_streamed_events_come_in_order_and_add_up_to_the_response(stack: Stack) -> None:
    plain = await stack.sdk.responses.create(model=MODEL, input="the cat")
    stream = await stack.sdk.responses.create(model=MODEL, input="the cat", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress"  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas == final.output_text == plain.output_text
    assert final.output[0].id == events[2].item.id  # type: ignore[union-attr]  # one id throughout
    assert final.usage is not None and final.usage.output_tokens == plain.usage.output_tokens  # type: ignore[union-attr]


async def test_parse_and_the_stream_helper_give_valid_objects(stack: Stack) -> None:
    parsed = await stack.sdk.responses.parse(
        model=MODEL, input="the cat", text_format=Pet, max_output_tokens=400
    )
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Pet)
    assert (
        parsed.text is not None
        and parsed.text.format is not None
        and parsed.text.format.type == "json_schema"
    )
    async with stack.sdk.responses.stream(
        model=MODEL, input="the cat", text_format=Flag, max_output_tokens=50
    ) as stream:
        snapshots = [e.snapshot async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert isinstance(final.output_parsed, Flag) and snapshots[-1] == final.output_text
    as_object = await stack.sdk.responses.create(
        model=MODEL, input="the cat", text={"format": {"type": "json_object"}}, max_output_tokens=300
    )
    if as_object.status == "completed":
        assert isinstance(json.loads(as_object.output_text), dict)
    else:
        assert as_object.output_text.lstrip().startswith("{")


async def test_a_required_function_call_and_its_round_trip(stack: Stack) -> None:
    ask = [{"role": "user", "content": "the weather in Paris"}]
    first = await stack.sdk.responses.create(
        model=MODEL,
        input=ask,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,  # a model of random weights may otherwise call until max_tokens
        max_output_tokens=200,
    )
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].call_id.startswith("call_") and calls[0].id.startswith("fc_")  # type: ignore[union-attr]
    call = calls[0]
    arguments = json.loads(call.arguments)  # type: ignore[union-attr]
    if call.name == "get_weather":  # type: ignore[union-attr]
        assert arguments["city"] in ("Paris", "Oslo", "Lima") and 1 <= arguments["days"] <= 7
    else:
        assert call.name == "get_time" and arguments == {}  # type: ignore[union-attr]
    assert [t.name for t in first.tools] == ["get_weather", "get_time"] and first.parallel_tool_calls is False  # type: ignore[union-attr]

    output = {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 4}'}  # type: ignore[union-attr]
    answer = await stack.sdk.responses.create(
        model=MODEL,
        input=[*ask, *first.output, output],
        tools=[WEATHER, TIME],
        tool_choice="none",  # type: ignore[list-item]
    )
    text, _ = await _chat_text(
        stack,
        [
            *ask,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }  # type: ignore[union-attr]
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": '{"celsius": 4}'},  # type: ignore[union-attr]
        ],
        tools=[
            {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            for t in (WEATHER, TIME)
        ],
        tool_choice="none",
    )
    assert answer.output_text == text and not [i for i in answer.output if i.type == "function_call"]


async def test_input_tokens_count_the_prompt_a_response_reads(stack: Stack) -> None:
    ask = [{"role": "user", "content": "the weather in Paris"}]
    offers: list[dict] = [
        {},
        {"instructions": "Be brief."},
        {"tools": [WEATHER, TIME]},
        {"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False},
        {"tools": [WEATHER], "text": {"format": {"type": "json_object"}}},
    ]
    counts = []
    for offer in offers:
        counted = await stack.sdk.responses.input_tokens.count(model=MODEL, input=ask, **offer)
        assert counted.object == "response.input_tokens"
        answer = await stack.sdk.responses.create(model=MODEL, input=ask, max_output_tokens=1, **offer)
        assert answer.usage is not None and counted.input_tokens == answer.usage.input_tokens, offer
        counts.append(counted.input_tokens)
    assert counts[0] < counts[1] and counts[0] < counts[2]  # instructions and tool definitions count
    refusals = (({"previous_response_id": "resp_1"}, "previous_response_id"), ({"seed": 1}, "seed"))
    for refused, param in refusals:
        with pytest.raises(openai.BadRequestError) as bad:
            await stack.sdk.responses.input_tokens.count(model=MODEL, input=ask, extra_body=refused)
        assert bad.value.body["param"] == param  # type: ignore[index]


async def test_a_named_function_streams_its_arguments(stack: Stack) -> None:
    stream = await stack.sdk.responses.create(
        model=MODEL,
        input="the weather",
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        max_output_tokens=200,
        stream=True,
    )
    events = [e async for e in stream]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.item.type for e in added] == ["function_call"]  # type: ignore[union-attr]
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(pieces) > 1 and "".join(pieces) == done.arguments and done.name == "get_weather"
    assert json.loads(done.arguments)["city"] in ("Paris", "Oslo", "Lima")
    final = events[-1]
    assert final.type == "response.completed" and final.response.output[0].arguments == done.arguments  # type: ignore[union-attr]


async def test_logprobs_of_the_output_text(stack: Stack) -> None:
    response = await stack.sdk.responses.create(
        model=MODEL, input="the cat", include=["message.output_text.logprobs"], top_logprobs=3
    )
    part = response.output[0].content[0]  # type: ignore[union-attr]
    logprobs = part.logprobs or []  # type: ignore[union-attr]
    assert len(logprobs) == response.usage.output_tokens and "".join(t.token for t in logprobs) == part.text  # type: ignore[union-attr]
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in logprobs)
    assert response.top_logprobs == 3
    stream = await stack.sdk.responses.create(
        model=MODEL, input="the cat", include=["message.output_text.logprobs"], stream=True
    )
    events = [e async for e in stream]
    streamed = [t.token for e in events if e.type == "response.output_text.delta" for t in e.logprobs]
    assert streamed == [t.token for t in logprobs]
    plain = await stack.sdk.responses.create(model=MODEL, input="the cat")
    assert plain.output[0].content[0].logprobs == [] and plain.output_text == part.text  # type: ignore[union-attr]


async def test_thinking_comes_back_as_a_reasoning_item(stack: Stack) -> None:
    response = await stack.sdk.responses.create(model=THINKER, input="the cat", max_output_tokens=8)
    [item] = response.output
    assert item.type == "reasoning" and item.id.startswith("rs_") and item.summary == []
    assert item.content and item.content[0].type == "reasoning_text" and item.content[0].text
    assert response.output_text == "" and response.status == "incomplete"
    stream = await stack.sdk.responses.create(
        model=THINKER, input="the cat", max_output_tokens=8, stream=True
    )
    events = [e async for e in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    [done] = [e for e in events if e.type == "response.reasoning_text.done"]
    assert deltas == done.text == item.content[0].text
    # Reasoning items of earlier turns are taken back as input (and not rendered).
    again = await stack.sdk.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "the cat"}, *response.output, {"role": "user", "content": "so?"}],
    )
    assert again.status in ("completed", "incomplete")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "data:,", "detail": "high"}],
                    }
                ]
            },
            "input.0.content.0.detail",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "x"},
                            {"type": "input_file", "file_id": "f"},
                        ],
                    }
                ]
            },
            "input.0.content.1",
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        ({"input": [{"role": "user", "content": "x", "phase": "final_answer"}]}, "input.0.phase"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
        (
            {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "4"}]},
            "input.0.call_id",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input.0.type"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["v"]}]}, "tools.1.type"),
        ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://x"}]}, "tools.0.type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools.0.type"),
        ({"tools": [{**WEATHER, "defer_loading": True}]}, "tools.0.defer_loading"),
        ({"tools": [{**WEATHER, "function": {}}]}, "tools.0.function"),
        ({"tool_choice": {"type": "function", "name": "launch"}, "tools": [WEATHER]}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"truncation": "auto"}, "truncation"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"include": ["reasoning.encrypted_content"]}, "include.0"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": FLAG, "extra": 1}}},
            "text.format.extra",
        ),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"stream_options": {"include_usage": True}}, "stream_options.include_usage"),
        ({"seed": 1}, "seed"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
async def test_every_field_that_would_not_be_honoured_is_400_naming_it(
    stack: Stack, extra: dict, param: str
) -> None:
    resp = await stack.http.post("/v1/responses", json={"model": MODEL, "input": "the cat", **extra})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter" and error["message"]


async def test_a_schema_keyword_the_runner_cannot_enforce_is_400_naming_text_format(stack: Stack) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}
    with pytest.raises(openai.BadRequestError) as bad:
        await stack.sdk.responses.create(
            model=MODEL, input="x", text={"format": {"type": "json_schema", "name": "x", "schema": schema}}
        )
    assert bad.value.body["param"] == "text.format" and "multipleOf" in bad.value.body["message"]  # type: ignore[index]


async def test_labels_and_null_settings_are_accepted_and_change_nothing(stack: Stack) -> None:
    plain = await stack.sdk.responses.create(model=MODEL, input="the cat")
    labelled = await stack.sdk.responses.create(
        model=MODEL,
        input="the cat",
        metadata={"k": "v"},
        user="u1",
        safety_identifier="s",
        prompt_cache_key="p",
        store=False,
        background=False,
        service_tier="auto",
        truncation="disabled",
        max_tool_calls=3,
        parallel_tool_calls=True,
        reasoning={"effort": None},
        stream_options={"include_obfuscation": False},
        extra_body={"previous_response_id": None, "conversation": None},
    )
    assert labelled.output_text == plain.output_text and labelled.metadata == {"k": "v"}
    assert labelled.user == "u1" and labelled.max_tool_calls == 3 and labelled.service_tier == "default"


async def test_obfuscation_pads_the_delta_events(stack: Stack) -> None:
    resp = await stack.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": "the cat",
            "stream": True,
            "stream_options": {"include_obfuscation": True},
        },
    )
    datas = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
    deltas = [d for d in datas if d["type"] == "response.output_text.delta"]
    assert deltas and all(isinstance(d["obfuscation"], str) and d["obfuscation"] for d in deltas)
    assert all("obfuscation" not in d for d in datas if not d["type"].endswith(".delta"))


async def test_responses_are_not_stored(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await stack.sdk.responses.retrieve("resp_123")
    assert (
        missing.value.body["code"] == "response_not_found" and "not stored" in missing.value.body["message"]
    )  # type: ignore[index]
    for method, path in (("DELETE", "/v1/responses/resp_1"), ("POST", "/v1/responses/resp_1/cancel")):
        resp = await stack.http.request(method, path)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "response_not_found"


async def test_an_unknown_model_is_a_plain_404_before_any_stream(stack: Stack) -> None:
    resp = await stack.http.post("/v1/responses", json={"model": "no/such", "input": "x", "stream": True})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


async def test_a_runner_failure_mid_stream_ends_in_response_failed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def dies_after_a_word() -> AsyncGenerator[runner_pb.GenerateResponse, None]:
        yield runner_pb.GenerateResponse(text="hello")
        raise APIError(503, "the runner is unavailable", code="runner_unavailable")

    async def generate(
        request: runner_pb.GenerateRequest, images: Sequence[ImageRef] = ()
    ) -> AsyncGenerator[runner_pb.GenerateResponse, None]:
        return dies_after_a_word()

    monkeypatch.setattr(stack.gateway.serving, "generate", generate)
    stream = await stack.sdk.responses.create(model=MODEL, input="the cat", stream=True)
    events = [e async for e in stream]
    assert [e.type for e in events[-3:]] == ["response.output_text.delta", "error", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error.code == "server_error"  # type: ignore[union-attr]
    assert "unavailable" in failed.error.message and failed.output_text == "hello"  # type: ignore[union-attr]
    with pytest.raises(openai.APIStatusError) as unavailable:
        await stack.sdk.responses.create(model=MODEL, input="the cat")
    assert unavailable.value.status_code == 503


async def test_the_api_key_is_the_sdk_bearer_token(tmp_path: Path) -> None:
    root = tmp_path / "jan"
    write_tiny_chat_model(root)
    async with serving_stack(root, api_keys=Secret("k1")) as stack:
        wrong = stack.sdk.with_options(api_key="wrong")
        with pytest.raises(openai.AuthenticationError) as denied:
            await wrong.responses.create(model=MODEL, input="the cat", max_output_tokens=2)
        assert denied.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        right = stack.sdk.with_options(api_key="k1")
        answer = await right.responses.create(model=MODEL, input="the cat", max_output_tokens=2)
        assert answer.status in ("completed", "incomplete")
        counted = await right.responses.input_tokens.count(model=MODEL, input="the cat")
        assert counted.input_tokens == answer.usage.input_tokens  # type: ignore[union-attr]
