"""OpenAI's dialect as pure functions (gateway/protocol/openai.py): chat and completion bodies to the
runner's GenerateRequest, every field that would not be honoured refused by name, and the runner's
messages back to completions, chunks, finish reasons and usage."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from gateway.protocol import openai as protocol
from gateway.protocol.answer import Gathered
from gateway.protocol.common import ImageRef, Unsupported
from jan.runner.v1 import runner_service_pb2 as runner_pb

MODEL = "tiny/chat"
HELLO = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def chat_with_images(**fields: Any) -> tuple[runner_pb.GenerateRequest, list[ImageRef]]:
    return protocol.chat_request(
        protocol.ChatCompletionIn.model_validate({"model": MODEL, "messages": HELLO, **fields})
    )


def chat(**fields: Any) -> runner_pb.GenerateRequest:
    return chat_with_images(**fields)[0]


def refused_chat(**fields: Any) -> str:
    with pytest.raises(Unsupported) as refused:
        chat(**fields)
    return refused.value.param


def completion(**fields: Any) -> runner_pb.GenerateRequest:
    body = protocol.CompletionIn.model_validate({"model": MODEL, "prompt": "once", **fields})
    return protocol.completion_request(body)


def reply(**fields: Any) -> runner_pb.GenerateResponse:
    return runner_pb.GenerateResponse(**fields)


def last(
    finish: int, prompt: int = 5, completion: int = 2, cached: int = 0, **fields: Any
) -> runner_pb.GenerateResponse:
    usage = runner_pb.Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
    return reply(finish_reason=finish, usage=usage, **fields)  # type: ignore[arg-type]


def test_a_chat_body_maps_onto_the_runners_request() -> None:
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        ],
        temperature=0.5,
        top_k=7,
        max_completion_tokens=9,
        max_tokens=100,
        stop="END",
        seed=3,
        n=2,
        logit_bias={"15": -100},
        keep_alive="5m",
        reasoning_format="inline",
    )
    assert request.model_id == MODEL
    assert [(m.role, m.content) for m in request.chat.messages] == [
        ("system", "be brief"),
        ("user", "hi there"),
    ]
    s = request.sampling
    assert (round(s.temperature, 3), s.top_k, s.max_tokens, list(s.stop), s.seed) == (0.5, 7, 9, ["END"], 3)
    assert not s.HasField("top_p")  # unset fields stay unset: the model's parameters decide
    assert request.n == 2 and dict(request.logit_bias) == {15: -100.0}
    assert request.keep_alive_s == 300 and request.reasoning == runner_pb.REASONING_MODE_INLINE


def test_tools_tool_choice_and_an_assistants_earlier_calls() -> None:
    request = chat(
        messages=[
            *HELLO,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    assert [t.name for t in request.tools] == ["get_weather"]
    assert json.loads(request.tools[0].parameters_json) == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert (request.tool_choice.mode, request.tool_choice.name) == (
        runner_pb.TOOL_CHOICE_MODE_FUNCTION,
        "get_weather",
    )
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    call = request.chat.messages[1].tool_calls[0]
    assert (call.id, call.name, json.loads(call.arguments)) == ("c1", "get_weather", {"city": "Oslo"})
    assert request.chat.messages[2].tool_call_id == "c1"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"audio": {}}, "audio"),
        ({"functions": []}, "functions"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"stream_options": {"include_usage": True, "chunked": True}}, "stream_options.chunked"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"keep_alive": "soon"}, "keep_alive"),
        ({"tools": [{"type": "custom", "custom": {}}]}, "tools.0.type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "x": 1}}},
            "response_format.json_schema.x",
        ),
        ({"response_format": {"type": "json_object"}, "grammar": "root ::= x"}, "grammar"),
        ({"grammar": "  "}, "grammar"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages.0.content.0",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": "x", "weird": 1}]}, "messages.0.weird"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{}]}]}, "messages.0.tool_calls"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
    ],
)
def test_a_chat_field_that_would_not_be_honoured_is_refused_by_name(
    fields: dict[str, Any], param: str
) -> None:
    assert refused_chat(**fields) == param


def test_labels_for_the_provider_are_accepted_and_change_nothing() -> None:
    labelled = chat(
        user="u1", metadata={"k": "v"}, safety_identifier="s", prompt_cache_key="p", service_tier="auto"
    )
    assert labelled == chat()


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, runner_pb.Constraint(json_object=True)),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            runner_pb.Constraint(json_schema='{"type":"object"}'),
        ),
    ],
)
def test_response_format_becomes_a_constraint(
    fmt: dict[str, Any], expected: runner_pb.Constraint | None
) -> None:
    assert protocol.response_format_constraint(fmt) == expected
    assert chat(response_format=fmt).HasField("constraint") == (expected is not None)


def test_a_completion_body_maps_onto_a_plain_prompt() -> None:
    request = completion(prompt=["once upon"], max_tokens=4, logprobs=2, json_schema={"type": "object"})
    assert request.text == "once upon" and not request.HasField("chat")
    assert request.sampling.max_tokens == 4 and request.logprobs and request.top_logprobs == 2
    assert request.constraint.json_schema == '{"type":"object"}'
    assert request.reasoning == runner_pb.REASONING_MODE_INLINE  # a raw prompt's thinking is its text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "stream": True}, "echo"),
        ({"echo": True, "logprobs": 1}, "echo"),
    ],
)
def test_a_completion_field_that_would_not_be_honoured_is_refused_by_name(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(Unsupported) as refused:
        completion(**fields)
    assert refused.value.param == param


def test_embedding_and_token_requests() -> None:
    embed = protocol.embed_request(protocol.EmbeddingIn(model=MODEL, input="one"))
    assert list(embed.inputs) == ["one"] and embed.model_id == MODEL
    for body, param in (
        (protocol.EmbeddingIn(model=MODEL, input=[]), "input"),
        (protocol.EmbeddingIn(model=MODEL, input="x", dimensions=8), "dimensions"),
    ):
        with pytest.raises(Unsupported) as refused:
            protocol.embed_request(body)
        assert refused.value.param == param
    text = protocol.tokenize_request(protocol.TokenizeIn(model=MODEL, prompt="a b", add_special_tokens=False))
    assert (text.text, text.add_special, text.with_pieces) == ("a b", False, False)
    messages = protocol.tokenize_request(
        protocol.TokenizeIn.model_validate({"model": MODEL, "messages": HELLO})
    )
    assert [m.content for m in messages.chat.messages] == ["hi"]
    with pytest.raises(Unsupported):
        protocol.tokenize_request(protocol.TokenizeIn(model=MODEL))


def test_a_gathered_answer_becomes_a_chat_completion_with_usage() -> None:
    gathered = Gathered()
    call = runner_pb.ToolCallDelta(index=0, id="c1", name="get_weather", arguments='{"city":')
    for r in (
        reply(reasoning="hmm"),
        reply(text="Let me look."),
        reply(tool_calls=[call]),
        reply(tool_calls=[runner_pb.ToolCallDelta(index=0, arguments=' "Oslo"}')]),
        last(runner_pb.FINISH_REASON_TOOL_CALLS, prompt=10, completion=6, cached=4),
        last(runner_pb.FINISH_REASON_LENGTH, prompt=10, completion=3, index=1, text="Other"),
    ):
        gathered.add(r)
    out = protocol.chat_completion("chatcmpl-1", 7, MODEL, gathered, with_logprobs=False)
    first, second = out["choices"]
    assert first["message"] == {
        "role": "assistant",
        "content": "Let me look.",
        "refusal": None,
        "reasoning_content": "hmm",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    }
    assert (first["finish_reason"], second["finish_reason"]) == ("tool_calls", "length")
    assert second["message"]["content"] == "Other" and first["logprobs"] is None
    # The prompt is read once for all choices; the completions add up.
    assert out["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 9,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert (out["id"], out["object"], out["created"], out["model"]) == (
        "chatcmpl-1",
        "chat.completion",
        7,
        MODEL,
    )


def test_a_tool_only_answer_has_null_content() -> None:
    gathered = Gathered()
    gathered.add(reply(tool_calls=[runner_pb.ToolCallDelta(index=0, id="c", name="f", arguments="{}")]))
    gathered.add(last(runner_pb.FINISH_REASON_TOOL_CALLS))
    assert (
        protocol.chat_completion("c", 0, MODEL, gathered, False)["choices"][0]["message"]["content"] is None
    )


def test_stream_chunks_carry_deltas_then_the_finish_reason() -> None:
    assert protocol.chat_chunk_choice(reply(), with_logprobs=False) is None  # nothing to say
    text = protocol.chat_chunk_choice(reply(text="Hi", index=1), with_logprobs=False)
    assert text == {"index": 1, "delta": {"content": "Hi"}, "finish_reason": None, "logprobs": None}
    first = runner_pb.ToolCallDelta(index=0, id="c1", name="f", arguments="{")
    calls = protocol.chat_chunk_choice(
        reply(tool_calls=[first, runner_pb.ToolCallDelta(index=0, arguments="}")]), with_logprobs=False
    )
    assert calls is not None and calls["delta"]["tool_calls"] == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}},
        {"index": 0, "function": {"arguments": "}"}},
    ]
    end = protocol.chat_chunk_choice(last(runner_pb.FINISH_REASON_STOP), with_logprobs=False)
    assert end is not None and end["finish_reason"] == "stop" and end["delta"] == {}
    chunk = protocol.chat_chunk("c", 1, MODEL, [], usage=protocol.usage_dict(3, 2, 0))
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"]["total_tokens"] == 5


def test_logprobs_in_chat_and_in_legacy_completions() -> None:
    top = runner_pb.TopLogprob(token="b", logprob=-2.0, bytes=b"b")
    entries = [runner_pb.TokenLogprob(token="ab", logprob=-0.5, bytes=b"ab", top_logprobs=[top])]
    choice = protocol.chat_chunk_choice(reply(text="ab", logprobs=entries), with_logprobs=True)
    assert choice is not None and choice["logprobs"]["content"] == [
        {
            "token": "ab",
            "logprob": -0.5,
            "bytes": [97, 98],
            "top_logprobs": [{"token": "b", "logprob": -2.0, "bytes": [98]}],
        }
    ]
    legacy = protocol.completion_logprobs(
        [*entries, runner_pb.TokenLogprob(token="c", logprob=-1.0)], offset=3
    )
    assert legacy == {
        "tokens": ["ab", "c"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{"b": -2.0}, {}],
        "text_offset": [3, 5],
    }


def test_a_text_completion_echoes_the_prompt_and_names_the_finish() -> None:
    gathered = Gathered()
    gathered.add(reply(text=" upon"))
    gathered.add(last(runner_pb.FINISH_REASON_LENGTH, prompt=1, completion=1))
    out = protocol.text_completion("cmpl-1", 0, MODEL, gathered, with_logprobs=False, echo="once")
    assert out["choices"] == [{"index": 0, "text": "once upon", "finish_reason": "length", "logprobs": None}]
    assert out["object"] == "text_completion" and out["usage"]["total_tokens"] == 2
    assert protocol.text_chunk_choice(reply(), with_logprobs=False, offset=0) is None


def test_embeddings_as_floats_or_base64() -> None:
    reply_ = runner_pb.EmbedResponse(embeddings=[runner_pb.Embedding(values=[0.5, -1.0])], prompt_tokens=3)
    floats = protocol.embedding_list(MODEL, reply_, "float")
    assert floats["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}]
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    packed = protocol.embedding_list(MODEL, reply_, "base64")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.5, -1.0)


# --- images -----------------------------------------------------------------------------------------------

PNG_URL = "data:image/png;base64,iVBORw0KGgo="


def image_part(url: str, **image: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **image}}


def kinds(message: runner_pb.ChatMessage) -> list[str]:
    return [p.text if p.WhichOneof("part") == "text" else "<image>" for p in message.parts]


def test_image_parts_go_to_the_runner_in_order_with_the_text_and_wait_for_their_bytes() -> None:
    request, images = chat_with_images(
        messages=[
            {"role": "system", "content": "describe"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "first "},
                    image_part(PNG_URL),
                    {"type": "text", "text": "then"},
                    {"type": "text", "text": " this"},
                    image_part("https://images.example/cat.jpg", detail="auto"),
                ],
            },
            {"role": "assistant", "content": "two pictures"},
            {"role": "user", "content": [image_part("http://images.example/dog.png")]},
        ]
    )
    system, first, answer, second = request.chat.messages
    # A message without images keeps `content`; one with images has parts, in order, and no content.
    assert (system.content, list(system.parts), answer.content) == ("describe", [], "two pictures")
    assert first.content == "" and kinds(first) == ["first ", "<image>", "then this", "<image>"]
    assert kinds(second) == ["<image>"]
    # Each image part is empty until gateway/images.py reads it: the references come in the parts' order.
    assert all(not p.image.data for m in request.chat.messages for p in m.parts)
    assert images == [
        ImageRef(param="messages.1.content.1.image_url.url", url=PNG_URL),
        ImageRef(param="messages.1.content.4.image_url.url", url="https://images.example/cat.jpg"),
        ImageRef(param="messages.3.content.0.image_url.url", url="http://images.example/dog.png"),
    ]


def test_a_chat_without_images_waits_for_none() -> None:
    request, images = chat_with_images()
    assert images == [] and request.chat.messages[0].content == "hi"


@pytest.mark.parametrize(
    ("part", "role", "param"),
    [
        (image_part(PNG_URL, detail="low"), "user", "messages.0.content.0.image_url.detail"),
        (image_part(PNG_URL, detail="high"), "user", "messages.0.content.0.image_url.detail"),
        (image_part(PNG_URL), "assistant", "messages.0.content.0"),
        (image_part(PNG_URL), "system", "messages.0.content.0"),
        (image_part(PNG_URL, size="big"), "user", "messages.0.content.0.image_url.size"),
        ({"type": "image_url", "image_url": PNG_URL}, "user", "messages.0.content.0.image_url"),
        ({"type": "image_url", "image_url": {"url": 5}}, "user", "messages.0.content.0.image_url"),
        ({**image_part(PNG_URL), "cache": True}, "user", "messages.0.content.0.cache"),
    ],
)
def test_an_image_that_cannot_be_honoured_is_refused_by_its_path(
    part: dict[str, Any], role: str, param: str
) -> None:
    assert refused_chat(messages=[{"role": role, "content": [part]}]) == param


def test_a_detail_other_than_auto_says_why() -> None:
    with pytest.raises(Unsupported) as err:
        chat(messages=[{"role": "user", "content": [image_part(PNG_URL, detail="high")]}])
    assert "'high' cannot be honoured" in str(err.value) and "'auto'" in str(err.value)


def test_a_token_count_refuses_images_by_name() -> None:
    body = protocol.TokenizeIn.model_validate(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, image_part(PNG_URL)]}],
        }
    )
    with pytest.raises(Unsupported) as err:
        protocol.tokenize_request(body)
    assert err.value.param == "messages.0.content.1.image_url.url"
    assert "counting the tokens of an image is not supported" in str(err.value)
