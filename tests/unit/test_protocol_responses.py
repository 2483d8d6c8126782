"""OpenAI's Responses API as pure functions (gateway/protocol/responses.py): a request's fields to the
runner's GenerateRequest and TokenizeRequest (what needs stored state, or would not be honoured, refused
by name), and ResponseBuilder's items, events, statuses and usage from the runner's messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.protocol.common import ImageRef, Unsupported
from gateway.protocol.responses import (
    LOGPROBS_INCLUDE,
    InputTokensIn,
    ResponseBuilder,
    ResponsesIn,
    generate_request,
    param_name,
    tokenize_request,
)
from jan.runner.v1 import runner_service_pb2 as runner_pb

MODEL = "tiny/chat"
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}


def request_with_images(**fields: Any) -> tuple[runner_pb.GenerateRequest, list[ImageRef]]:
    return generate_request(ResponsesIn.model_validate({"model": MODEL, "input": "hi", **fields}))


def request(**fields: Any) -> runner_pb.GenerateRequest:
    return request_with_images(**fields)[0]


def refused(**fields: Any) -> str:
    with pytest.raises(Unsupported) as err:
        request(**fields)
    return err.value.param


def last(finish: int, prompt: int = 5, completion: int = 3, **fields: Any) -> runner_pb.GenerateResponse:
    usage = runner_pb.Usage(prompt_tokens=prompt, completion_tokens=completion)
    return runner_pb.GenerateResponse(finish_reason=finish, usage=usage, **fields)  # type: ignore[arg-type]


def test_instructions_and_input_text_become_chat_messages_with_the_sampling() -> None:
    out = request(instructions="Be brief.", max_output_tokens=7, temperature=0.5, top_p=0.75)
    assert [(m.role, m.content) for m in out.chat.messages] == [("system", "Be brief."), ("user", "hi")]
    assert (out.sampling.max_tokens, out.sampling.temperature, out.sampling.top_p) == (7, 0.5, 0.75)
    assert not out.sampling.HasField("top_k") and out.n == 1
    assert out.reasoning == runner_pb.REASONING_MODE_SEPARATE


def test_input_items_calls_and_their_outputs() -> None:
    out = request(
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather "},
                    {"type": "input_text", "text": "in Oslo?"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    messages = out.chat.messages
    assert [(m.role, m.content) for m in messages] == [
        ("system", "Use tools."),
        ("user", "Weather in Oslo?"),
        ("assistant", ""),
        ("tool", "sunny"),
    ]
    assert [(c.id, c.name) for c in messages[2].tool_calls] == [("c1", "get_weather")]
    assert (messages[3].tool_call_id, messages[3].name) == ("c1", "get_weather")
    assert [(t.name, json.loads(t.parameters_json)) for t in out.tools] == [
        ("get_weather", {"type": "object"})
    ]
    assert (out.tool_choice.mode, out.tool_choice.name) == (
        runner_pb.TOOL_CHOICE_MODE_FUNCTION,
        "get_weather",
    )
    assert out.HasField("parallel_tool_calls") and not out.parallel_tool_calls


def test_text_format_and_logprobs() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = request(text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert json.loads(out.constraint.json_schema) == schema
    assert request(text={"format": {"type": "json_object"}}).constraint == runner_pb.Constraint(
        json_object=True
    )
    assert not request(text={"format": {"type": "text"}}).HasField("constraint")
    logprobs = request(include=[LOGPROBS_INCLUDE], top_logprobs=3)
    assert logprobs.logprobs and logprobs.top_logprobs == 3
    # Labels for the provider, and settings left at what is served anyway, change nothing.
    same = request(
        metadata={"k": "v"}, user="u", store=False, truncation="disabled", reasoning={"effort": None}
    )
    assert same == request()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"stream_options": {"include_usage": True}}, "stream_options.include_usage"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["file_search_call.results"]}, "include.0"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"input": []}, "input"),
        ({"input": [{"role": "critic", "content": "x"}]}, "input.0.role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
            "input.0.content.0",
        ),
        ({"input": [{"role": "user", "content": "x", "extra": 1}]}, "input.0.extra"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]}, "input.0.call_id"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [{**WEATHER, "defer_loading": True}]}, "tools.0.defer_loading"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"text": {"format": {"type": "json_schema", "schema": {}, "extra": 1}}}, "text.format.extra"),
    ],
)
def test_a_field_that_would_not_be_honoured_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    assert refused(**fields) == param


def test_an_input_token_count_renders_the_prompt_as_a_response_would() -> None:
    fields = {"instructions": "Be brief.", "input": "hi", "tools": [WEATHER], "tool_choice": "required"}
    count = tokenize_request(InputTokensIn.model_validate({"model": MODEL, **fields}))
    generation = request(**fields)
    assert count.chat == generation.chat and list(count.tools) == list(generation.tools)
    assert count.tool_choice == generation.tool_choice and count.model_id == MODEL
    with pytest.raises(Unsupported) as err:
        tokenize_request(InputTokensIn.model_validate({"model": MODEL, "previous_response_id": "resp_1"}))
    assert err.value.param == "previous_response_id"


def test_a_runner_param_is_named_as_the_responses_api_names_it() -> None:
    assert param_name("response_format") == "text.format"
    assert param_name("tools") == "tools" and param_name(None) is None


def test_a_cut_answer_is_incomplete_with_its_usage() -> None:
    builder = ResponseBuilder(ResponsesIn(model=MODEL, input="x"), "resp_1", 1)
    builder.feed(runner_pb.GenerateResponse(text="Once"))
    events = builder.feed(last(runner_pb.FINISH_REASON_LENGTH, prompt=4, completion=16, text=" upon"))
    response = builder.response()
    assert events[-1][0] == "response.incomplete" and response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert (
        response["output"][0]["content"][0]["text"] == "Once upon"
        and response["output"][0]["status"] == "incomplete"
    )
    assert response["usage"] == {
        "input_tokens": 4,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 16,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 20,
    }


def test_an_empty_answer_is_still_a_message_and_a_failure_is_reported() -> None:
    builder = ResponseBuilder(ResponsesIn(model=MODEL, input="x"), "resp_1", 1)
    builder.feed(last(runner_pb.FINISH_REASON_STOP, completion=0))
    (item,) = builder.response()["output"]
    assert item["type"] == "message" and item["content"][0]["text"] == "" and builder.status == "completed"
    failing = ResponseBuilder(ResponsesIn(model=MODEL, input="x"), "resp_2", 1)
    opened = failing.feed(runner_pb.GenerateResponse(text="Hel"))
    events = failing.fail("the runner went away")
    assert [name for name, _ in events] == ["error", "response.failed"]
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {
        "code": "server_error",
        "message": "the runner went away",
    }
    assert failed["output"][0]["status"] == "incomplete" and failed["usage"] is None
    # The events are numbered on from those of the message so far.
    assert [e[1]["sequence_number"] for e in [*opened, *events]] == list(range(len(opened) + 2))


def test_the_response_echoes_the_requests_settings() -> None:
    body = ResponsesIn.model_validate(
        {"model": MODEL, "input": "x", "tools": [WEATHER], "temperature": 0.5, "metadata": {"k": "v"}}
    )
    echoed = ResponseBuilder(body, "resp_1", 1).response()
    assert (echoed["temperature"], echoed["metadata"], echoed["store"], echoed["tool_choice"]) == (
        0.5,
        {"k": "v"},
        False,
        "auto",
    )
    assert echoed["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": None,
            "parameters": {"type": "object"},
            "strict": True,
        }
    ]
    assert (
        echoed["text"] == {"format": {"type": "text"}}
        and echoed["status"] == "in_progress"
        and echoed["usage"] is None
    )


def test_items_follow_the_order_the_runner_answers_in() -> None:
    body = ResponsesIn(model="m", input="x", stream=True)
    builder = ResponseBuilder(body, "resp_1", 1)
    call = runner_pb.ToolCallDelta(index=0, id="call_1", name="f", arguments='{"a":')
    events = builder.start()
    for reply in (
        runner_pb.GenerateResponse(reasoning="hm"),
        runner_pb.GenerateResponse(text="Let me see."),
        runner_pb.GenerateResponse(tool_calls=[call]),
        runner_pb.GenerateResponse(tool_calls=[runner_pb.ToolCallDelta(index=0, arguments=" 1}")]),
        runner_pb.GenerateResponse(
            finish_reason=runner_pb.FINISH_REASON_TOOL_CALLS,
            usage=runner_pb.Usage(prompt_tokens=5, completion_tokens=9),
        ),
    ):
        events += builder.feed(reply)
    response = builder.response()
    assert [i["type"] for i in response["output"]] == ["reasoning", "message", "function_call"]
    assert response["output"][2]["arguments"] == '{"a": 1}' and response["status"] == "completed"
    assert response["usage"]["total_tokens"] == 14
    added = [p["output_index"] for n, p in events if n == "response.output_item.added"]
    closed = [p["output_index"] for n, p in events if n == "response.output_item.done"]
    assert added == closed == [0, 1, 2]
    assert events[-1][0] == "response.completed" and events[-1][1]["response"] == response | {
        "completed_at": events[-1][1]["response"]["completed_at"]
    }


# --- images -----------------------------------------------------------------------------------------------

PNG_URL = "data:image/png;base64,iVBORw0KGgo="


def test_input_image_parts_go_to_the_runner_in_order_and_wait_for_their_bytes() -> None:
    out, images = request_with_images(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "compare "},
                    {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                    {"type": "input_text", "text": "with"},
                    {"type": "input_image", "image_url": "https://images.example/b.png", "file_id": None},
                ],
            }
        ],
        instructions="Be brief.",
    )
    system, user = out.chat.messages
    assert system.content == "Be brief." and user.content == ""
    assert [p.WhichOneof("part") for p in user.parts] == ["text", "image", "text", "image"]
    assert [p.text for p in user.parts if p.WhichOneof("part") == "text"] == ["compare ", "with"]
    assert images == [
        ImageRef(param="input.0.content.1.image_url", url=PNG_URL),
        ImageRef(param="input.0.content.3.image_url", url="https://images.example/b.png"),
    ]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {"role": "user", "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}]},
            "input.0.content.0.file_id",
        ),
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": PNG_URL, "detail": "high"}]},
            "input.0.content.0.detail",
        ),
        (
            {"role": "user", "content": [{"type": "input_image", "detail": "auto"}]},
            "input.0.content.0.image_url",
        ),
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": PNG_URL, "zoom": 2}]},
            "input.0.content.0.zoom",
        ),
        (
            {"role": "assistant", "content": [{"type": "input_image", "image_url": PNG_URL}]},
            "input.0.content.0",
        ),
    ],
)
def test_an_image_that_cannot_be_honoured_is_refused_by_its_path(item: dict[str, Any], param: str) -> None:
    assert refused(input=[item]) == param


def test_a_tool_output_with_an_image_is_refused_by_its_path() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"}
    output = [{"type": "input_image", "image_url": PNG_URL}]
    param = refused(input=[call, {"type": "function_call_output", "call_id": "c1", "output": output}])
    assert param == "input.1.output.content.0"


def test_an_input_token_count_refuses_images_and_runner_errors_name_the_input() -> None:
    image = {"type": "input_image", "image_url": PNG_URL}
    with pytest.raises(Unsupported) as err:
        tokenize_request(
            InputTokensIn.model_validate({"model": MODEL, "input": [{"role": "user", "content": [image]}]})
        )
    assert err.value.param == "input.0.content.0.image_url"
    # The runner names `messages` (e.g. a model that cannot see images): the Responses API calls it input.
    assert param_name("messages") == "input"
