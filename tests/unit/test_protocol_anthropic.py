"""Anthropic's Messages dialect as pure functions (gateway/protocol/anthropic.py): message bodies to the
runner's GenerateRequest and TokenizeRequest (a refusal's message starts with the field's path, as
Anthropic's error has no `param`), and the runner's answers back to a Message, stop reasons, usage and
the stream's named events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import APIError
from gateway.protocol import anthropic as protocol
from gateway.protocol.answer import Gathered
from gateway.protocol.common import ImageRef, Unsupported
from jan.runner.v1 import runner_service_pb2 as runner_pb

MODEL = "tiny/chat"
HELLO = [{"role": "user", "content": "hi"}]
WEATHER = {"name": "get_weather", "description": "The weather.", "input_schema": {"type": "object"}}


def body(**fields: Any) -> protocol.MessagesIn:
    return protocol.MessagesIn.model_validate({"model": MODEL, "max_tokens": 16, "messages": HELLO, **fields})


def generate_with_images(**fields: Any) -> tuple[runner_pb.GenerateRequest, list[ImageRef]]:
    return protocol.generate_request(body(**fields))


def generate(**fields: Any) -> runner_pb.GenerateRequest:
    return generate_with_images(**fields)[0]


def refused(**fields: Any) -> Unsupported:
    with pytest.raises(Unsupported) as err:
        generate(**fields)
    assert str(err.value).startswith(f"{err.value.param}: ")  # the message names the field first
    return err.value


def reply(**fields: Any) -> runner_pb.GenerateResponse:
    return runner_pb.GenerateResponse(**fields)


def last(
    finish: int, prompt: int = 10, completion: int = 4, cached: int = 0, **fields: Any
) -> runner_pb.GenerateResponse:
    usage = runner_pb.Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
    return reply(finish_reason=finish, usage=usage, **fields)  # type: ignore[arg-type]


def test_a_message_body_maps_onto_the_runners_request() -> None:
    request = generate(
        system=[{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}],
        temperature=0.5,
        top_k=3,
        stop_sequences=["END"],
        metadata={"user_id": "u1"},
        service_tier="auto",
    )
    assert request.model_id == MODEL and request.n == 1
    assert [(m.role, m.content) for m in request.chat.messages] == [
        ("system", "Be\n\nbrief."),
        ("user", "hi"),
    ]
    s = request.sampling
    assert (s.max_tokens, s.temperature, s.top_k, list(s.stop)) == (16, 0.5, 3, ["END"])
    assert request.reasoning == runner_pb.REASONING_MODE_SEPARATE  # thinking comes back as blocks


def test_turns_merge_and_tool_results_become_tool_messages() -> None:
    request = generate(
        messages=[
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hidden", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "tu_1", "content": "down", "is_error": True},
                    {"type": "text", "text": "and now?"},
                ],
            },
        ]
    )
    messages = request.chat.messages
    assert [(m.role, m.content) for m in messages] == [
        ("user", "first\n\nsecond"),
        ("assistant", "Let me look."),  # earlier thinking is not shown to the model
        ("tool", "Error: down"),
        ("user", "and now?"),
    ]
    call = messages[1].tool_calls[0]
    assert (call.id, call.name, json.loads(call.arguments)) == ("tu_1", "get_weather", {"city": "Oslo"})
    assert (messages[2].tool_call_id, messages[2].name) == ("tu_1", "get_weather")


def test_tools_the_tool_choice_and_the_output_format() -> None:
    request = generate(
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
    )
    assert [(t.name, t.description, json.loads(t.parameters_json)) for t in request.tools] == [
        ("get_weather", "The weather.", {"type": "object"})
    ]
    assert (request.tool_choice.mode, request.tool_choice.name) == (
        runner_pb.TOOL_CHOICE_MODE_FUNCTION,
        "get_weather",
    )
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    assert json.loads(request.constraint.json_schema) == {"type": "object"}
    assert (
        generate(tools=[WEATHER], tool_choice={"type": "any"}).tool_choice.mode
        == runner_pb.TOOL_CHOICE_MODE_REQUIRED
    )
    assert not generate(tools=[WEATHER]).HasField("tool_choice")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"mcp_servers": []}, "mcp_servers"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"stop_sequences": ["ok", ""]}, "stop_sequences.1"),
        ({"system": [{"type": "text", "text": "x", "citations": [{}]}]}, "system.0.citations"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": [{}]}]}]},
            "messages.0.content.0.citations",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope"}]}]},
            "messages.0.content.0.tool_use_id",
        ),
        ({"messages": [*HELLO, {"role": "assistant", "content": "Sure"}]}, "messages.1.role"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{**WEATHER, "defer_loading": True}]}, "tools.0.defer_loading"),
        ({"tools": [{**WEATHER, "input_schema": {"type": "string"}}]}, "tools.0.input_schema.type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice.name"),
        ({"tool_choice": {"type": "any"}}, "tool_choice.type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "auto", "name": "get_weather"}}, "tool_choice.name"),
        ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ],
)
def test_a_field_that_would_not_be_honoured_is_refused_by_its_path(
    fields: dict[str, Any], param: str
) -> None:
    assert refused(**fields).param == param


def test_a_token_count_renders_the_prompt_as_a_generation_would() -> None:
    fields = {
        "model": MODEL,
        "messages": HELLO,
        "system": "Be brief.",
        "tools": [WEATHER],
        "tool_choice": {"type": "auto"},
    }
    count = protocol.tokenize_request(protocol.CountTokensIn.model_validate(fields))
    generation = generate(**{k: v for k, v in fields.items() if k != "model"})
    assert count.chat == generation.chat and list(count.tools) == list(generation.tools)
    assert count.tool_choice == generation.tool_choice
    assert protocol.tokens_count(runner_pb.TokenizeResponse(tokens=[1, 2, 3])) == {"input_tokens": 3}


@pytest.mark.parametrize(
    ("finish", "output_tokens", "stop_sequence", "reason"),
    [
        (runner_pb.FINISH_REASON_STOP, 3, "", "end_turn"),
        (runner_pb.FINISH_REASON_STOP, 3, "END", "stop_sequence"),
        (runner_pb.FINISH_REASON_TOOL_CALLS, 3, "", "tool_use"),
        (runner_pb.FINISH_REASON_LENGTH, 16, "", "max_tokens"),
        (runner_pb.FINISH_REASON_LENGTH, 5, "", "model_context_window_exceeded"),
    ],
)
def test_stop_reasons(finish: int, output_tokens: int, stop_sequence: str, reason: str) -> None:
    assert protocol.stop_reason(finish, output_tokens, 16, stop_sequence) == reason  # type: ignore[arg-type]


def test_a_gathered_answer_becomes_a_message_with_usage() -> None:
    gathered = Gathered()
    for r in (
        reply(reasoning="hm"),
        reply(text="Sure."),
        reply(
            tool_calls=[
                runner_pb.ToolCallDelta(index=0, id="tu_1", name="get_weather", arguments='{"city":"Oslo"}')
            ]
        ),
        last(runner_pb.FINISH_REASON_TOOL_CALLS, prompt=10, completion=7, cached=4),
    ):
        gathered.add(r)
    out = protocol.message("msg_1", MODEL, gathered, max_tokens=16)
    assert out["content"] == [
        {"type": "thinking", "thinking": "hm", "signature": ""},
        {"type": "text", "text": "Sure.", "citations": None},
        {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert (out["stop_reason"], out["stop_sequence"], out["role"], out["type"]) == (
        "tool_use",
        None,
        "assistant",
        "message",
    )
    # Input tokens are those computed: the cached ones are counted apart.
    assert out["usage"] == {
        "input_tokens": 6,
        "output_tokens": 7,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "service_tier": "standard",
    }


def test_a_stop_sequence_is_named_and_a_call_cut_by_max_tokens_is_left_out() -> None:
    stopped = Gathered()
    stopped.add(last(runner_pb.FINISH_REASON_STOP, text="Done", stop_sequence="END"))
    out = protocol.message("m", MODEL, stopped, 16)
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")
    cut = Gathered()
    cut.add(reply(tool_calls=[runner_pb.ToolCallDelta(index=0, id="tu", name="f", arguments='{"a": ')]))
    cut.add(last(runner_pb.FINISH_REASON_LENGTH, completion=16))
    out = protocol.message("m", MODEL, cut, 16)
    assert out["content"] == [] and out["stop_reason"] == "max_tokens"
    broken = Gathered()
    broken.add(reply(tool_calls=[runner_pb.ToolCallDelta(index=0, id="tu", name="f", arguments="[1]")]))
    broken.add(last(runner_pb.FINISH_REASON_TOOL_CALLS))
    with pytest.raises(APIError) as bad:
        protocol.message("m", MODEL, broken, 16)
    assert bad.value.status == 502


def test_runner_refusals_are_renamed_as_anthropic_names_the_field() -> None:
    renamed = protocol.in_our_terms(
        APIError(400, "not supported", code="unsupported_parameter", param="response_format")
    )
    assert renamed.param == "output_config.format.schema"
    assert renamed.message == "output_config.format.schema: not supported"
    unchanged = APIError(503, "busy", code="queue_full", param="tools")
    assert protocol.in_our_terms(unchanged) is unchanged


def test_the_stream_opens_one_block_per_kind_and_ends_with_the_usage() -> None:
    stream = protocol.MessageStream("msg_1", MODEL, max_tokens=16)
    (start,) = stream.start()
    assert start[0] == "message_start" and start[1]["message"]["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
    }
    events = [
        *stream.add(reply(text="Hel")),
        *stream.add(reply(text="lo")),
        *stream.add(last(runner_pb.FINISH_REASON_STOP, prompt=5, completion=2, stop_sequence="")),
    ]
    assert [name for name, _ in events] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [e[1]["delta"]["text"] for e in events if e[0] == "content_block_delta"] == ["Hel", "lo"]
    assert events[4][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[4][1]["usage"]["output_tokens"] == 2 and stream.finished


# --- images -----------------------------------------------------------------------------------------------


def base64_image(data: str = "iVBORw0KGgo=", media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def url_image(url: str = "https://images.example/cat.jpg") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "url", "url": url}, "cache_control": {"type": "ephemeral"}}


def parts(message: runner_pb.ChatMessage) -> list[str]:
    return [p.text if p.WhichOneof("part") == "text" else "<image>" for p in message.parts]


def test_image_blocks_go_to_the_runner_in_order_and_consecutive_turns_still_merge() -> None:
    text = {"type": "text", "text": "a"}
    request, images = generate_with_images(
        system="Look.",
        messages=[
            {"role": "user", "content": [text, {"type": "text", "text": "b"}, base64_image(), text]},
            {"role": "user", "content": [url_image(), {"type": "text", "text": "c"}]},
            {"role": "assistant", "content": "Two."},
            {"role": "user", "content": "and?"},
        ],
    )
    system, user, answer, last = request.chat.messages
    assert (system.content, answer.content, last.content) == ("Look.", "Two.", "and?")
    # Text blocks of a message are joined by a blank line, as without images; the two user turns merge.
    assert user.content == "" and parts(user) == ["a\n\nb", "<image>", "a", "<image>", "c"]
    assert images == [
        ImageRef(param="messages.0.content.2.source.data", base64="iVBORw0KGgo=", media_type="image/png"),
        ImageRef(param="messages.1.content.0.source.url", url="https://images.example/cat.jpg"),
    ]


def test_turns_without_images_merge_as_before() -> None:
    request, images = generate_with_images(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
        ]
    )
    assert images == [] and [m.content for m in request.chat.messages] == ["a\n\nb"]


@pytest.mark.parametrize(
    ("block", "param"),
    [
        (
            {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
            "messages.0.content.0.source.type",
        ),
        ({"type": "image", "source": {"type": "text", "data": "x"}}, "messages.0.content.0.source.type"),
        ({"type": "image", "source": {"type": "url"}}, "messages.0.content.0.source.url"),
        (
            {"type": "image", "source": {"type": "base64", "data": "x", "media_type": "image/png", "x": 1}},
            "messages.0.content.0.source.x",
        ),
        ({**url_image(), "title": "cat"}, "messages.0.content.0.title"),
    ],
)
def test_an_image_block_that_cannot_be_honoured_is_refused_by_its_path(
    block: dict[str, Any], param: str
) -> None:
    assert refused(messages=[{"role": "user", "content": [block]}]).param == param


def test_images_are_refused_where_anthropic_has_none_and_in_a_token_count() -> None:
    assistant = [*HELLO, {"role": "assistant", "content": [url_image()]}, *HELLO]
    assert refused(messages=assistant).param == "messages.1.content.0.type"
    call = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [url_image()]}
    with_result = [*HELLO, {"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]
    assert refused(messages=with_result, tools=[WEATHER]).param == "messages.2.content.0.content.0.type"
    count = protocol.CountTokensIn.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": [base64_image()]}]}
    )
    with pytest.raises(Unsupported) as err:
        protocol.tokenize_request(count)
    assert err.value.param == "messages.0.content.0.source.data"
    assert str(err.value).startswith("messages.0.content.0.source.data: counting the tokens of an image")
