"""The API surface apps send, through the official openai SDK against the real gateway, catalog and
runner (llama.cpp with a tiny GGUF written by the tests): structured outputs, grammars, logprobs, n,
logit_bias, token routes, cached tokens, and a 400 naming every field that would not be honoured."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.harness import TINY_CHAT, WEATHER_PARAMETERS, Stack

pytest.importorskip("llama_cpp")

MODEL = TINY_CHAT
HELLO = [{"role": "user", "content": "the cat"}]


class Pet(BaseModel):
    name: str = Field(max_length=6)
    kind: Literal["cat", "dog"]
    age: int = Field(ge=1, le=20)
    # Bounded strings: a tiny model with random weights may otherwise write one string until max_tokens.
    toys: list[Annotated[str, Field(max_length=5)]] = Field(max_length=2)


async def test_parse_returns_a_valid_pydantic_object(stack: Stack) -> None:
    for seed in range(3):
        answer = await stack.sdk.chat.completions.parse(
            model=MODEL,
            messages=HELLO,
            response_format=Pet,
            max_tokens=400,
            temperature=1.0,
            seed=seed,
            extra_body={"top_k": 0},
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        pet = choice.message.parsed
        assert isinstance(pet, Pet) and 1 <= pet.age <= 20 and len(pet.name) <= 6


async def test_json_object_is_one_json_object(stack: Stack) -> None:
    answer = await stack.sdk.chat.completions.create(
        model=MODEL, messages=HELLO, response_format={"type": "json_object"}, max_tokens=300
    )
    choice = answer.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:  # cut by max_tokens: what came so far is the start of an object
        assert (choice.message.content or "").lstrip().startswith("{")


async def test_a_grammar_constrains_the_answer_and_a_bad_one_is_400(stack: Stack) -> None:
    for temperature in (0.0, 1.5):
        answer = await stack.sdk.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            temperature=temperature,
            extra_body={"grammar": 'root ::= "yes" | "no" | "maybe"'},
        )
        assert answer.choices[0].message.content in ("yes", "no", "maybe")
        assert answer.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as bad:
        await stack.sdk.chat.completions.create(
            model=MODEL, messages=HELLO, extra_body={"grammar": "root ::= ( unclosed"}
        )
    assert bad.value.body["param"] == "grammar"  # type: ignore[index]


async def test_a_schema_keyword_that_cannot_be_enforced_is_400(stack: Stack) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}
    with pytest.raises(openai.BadRequestError) as bad:
        await stack.sdk.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert bad.value.body["param"] == "response_format"  # type: ignore[index]
    assert "multipleOf" in bad.value.body["message"]  # type: ignore[index]


async def test_logprobs_of_every_token_with_the_top_alternatives(stack: Stack) -> None:
    answer = await stack.sdk.chat.completions.create(
        model=MODEL, messages=HELLO, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
        assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest was taken
        assert bytes(entry.bytes or []) == entry.token.encode()
    plain = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO)
    assert (
        plain.choices[0].logprobs is None
        and plain.choices[0].message.content == answer.choices[0].message.content
    )

    stream = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True, stream=True)
    streamed = [
        t
        for c in [c async for c in stream]
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content]


async def test_n_choices_from_one_prompt(stack: Stack) -> None:
    answer = await stack.sdk.chat.completions.create(
        model=MODEL, messages=HELLO, n=3, temperature=1.5, seed=7, max_tokens=8, extra_body={"top_k": 0}
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    texts = [c.message.content for c in answer.choices]
    assert len(set(texts)) > 1  # each choice its own seed stream
    usage = answer.usage
    assert usage is not None and usage.completion_tokens == 24  # every choice counted
    solo = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8)
    assert usage.prompt_tokens == solo.usage.prompt_tokens  # type: ignore[union-attr]  # the prompt once

    greedy = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO, n=2, max_tokens=8)
    assert (
        greedy.choices[0].message.content
        == greedy.choices[1].message.content
        == solo.choices[0].message.content
    )

    stream = await stack.sdk.chat.completions.create(
        model=MODEL, messages=HELLO, n=2, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    by_index: dict[int, str] = {}
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert by_index == {0: solo.choices[0].message.content, 1: solo.choices[0].message.content}
    assert finishes == {0: "length", 1: "length"} and chunks[-1].usage.completion_tokens == 16  # type: ignore[union-attr]

    with pytest.raises(openai.BadRequestError) as bad:
        await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO, n=16)
    assert bad.value.body["param"] == "n"  # type: ignore[index]


async def test_logit_bias_bans_and_forces_tokens(stack: Stack) -> None:
    plain = await stack.http.post(
        "/v1/tokenize",
        json={"model": MODEL, "prompt": "the", "add_special_tokens": False, "return_token_strs": True},
    )
    the, piece = plain.json()["tokens"][0], plain.json()["token_strs"][0]
    forced = await stack.sdk.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4, logit_bias={str(the): 100}
    )
    assert forced.choices[0].message.content == piece * 4
    first = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1, logprobs=True)
    token = first.choices[0].logprobs.content[0].token  # type: ignore[index,union-attr]
    # The tokenizer puts its own space before a text (SentencePiece's dummy prefix): " no" is "no" + that.
    ids = (
        await stack.http.post(
            "/v1/tokenize",
            json={"model": MODEL, "prompt": token.removeprefix(" "), "add_special_tokens": False},
        )
    ).json()["tokens"]
    banned = await stack.sdk.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=1, logit_bias={str(ids[0]): -100}
    )
    assert banned.choices[0].message.content != token
    with pytest.raises(openai.BadRequestError) as bad:
        await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO, logit_bias={"the": 5})
    assert bad.value.body["param"] == "logit_bias"  # type: ignore[index]


async def test_tokenize_detokenize_and_cached_tokens(stack: Stack) -> None:
    chat = await stack.http.post(
        "/v1/tokenize", json={"model": MODEL, "messages": HELLO, "return_token_strs": True}
    )
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) and body["max_model_len"] == 4096
    first = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO)
    assert first.usage.prompt_tokens == body["count"]  # type: ignore[union-attr]
    again = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO)
    details = again.usage.prompt_tokens_details  # type: ignore[union-attr]
    assert details is not None and details.cached_tokens == body["count"] - 1  # all but the last token
    text = await stack.http.post("/v1/detokenize", json={"model": MODEL, "tokens": body["tokens"]})
    assert text.json()["prompt"] == "".join(body["token_strs"])
    bad = await stack.http.post("/v1/detokenize", json={"model": MODEL, "tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"store": True}, "store"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
                ]
            },
            "messages.0.content.0.image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}}],
                    }
                ]
            },
            "messages.0.content.0.image_url.detail",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages.0.content.0",
        ),
        ({"messages": [{"role": "user", "content": "x", "weird": 1}]}, "messages.0.weird"),
    ],
)
async def test_every_field_that_would_not_be_honoured_is_400_naming_it(
    stack: Stack, extra: dict, param: str
) -> None:
    body = {"model": MODEL, "messages": HELLO, **extra}
    resp = await stack.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


async def test_labels_for_the_provider_are_accepted(stack: Stack) -> None:
    answer = await stack.sdk.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        user="u1",
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        extra_body={"safety_identifier": "s", "prompt_cache_key": "p"},
    )
    assert answer.choices[0].message.content


async def test_completions_echo_logprobs_and_a_json_schema(stack: Stack) -> None:
    echoed = await stack.sdk.completions.create(model=MODEL, prompt="the cat", echo=True, max_tokens=5)
    answer = await stack.sdk.completions.create(model=MODEL, prompt="the cat", logprobs=2, max_tokens=5)
    choice = answer.choices[0]
    assert echoed.choices[0].text == "the cat" + choice.text
    lp = choice.logprobs
    assert lp is not None and len(lp.tokens or []) == 5 and all(len(t) == 2 for t in lp.top_logprobs or [])
    assert "".join(lp.tokens or []) == choice.text and (lp.text_offset or [])[0] == 0
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    constrained = await stack.sdk.completions.create(
        model=MODEL, prompt="the cat", max_tokens=50, extra_body={"json_schema": schema}
    )
    assert json.loads(constrained.choices[0].text) in ({"ok": True}, {"ok": False})
    refused = (
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"bogus": 1}, "bogus"),
        ({"echo": True, "logprobs": 1}, "echo"),  # the prompt's log-probabilities are not computed
    )
    for extra, param in refused:
        resp = await stack.http.post("/v1/completions", json={"model": MODEL, "prompt": "x", **extra})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param


async def test_embeddings_refuse_dimensions(stack: Stack) -> None:
    resp = await stack.http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 8})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "dimensions"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


async def test_a_required_tool_call_is_well_formed_and_its_arguments_validate(stack: Stack) -> None:
    for seed in range(3):
        answer = await stack.sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "the weather in Paris"}],
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,  # a model of random weights may otherwise call until max_tokens
            max_tokens=200,
            temperature=1.0,
            seed=seed,
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        calls = choice.message.tool_calls or []
        assert calls and all(c.id.startswith("call_") and c.type == "function" for c in calls)
        for call in calls:
            arguments = json.loads(call.function.arguments)
            if call.function.name == "get_weather":
                assert arguments["city"] in ("Paris", "Oslo", "Lima") and 1 <= arguments["days"] <= 7
            else:
                assert call.function.name == "get_time" and arguments == {}


async def test_a_named_tool_choice_and_parallel_calls_off(stack: Stack) -> None:
    answer = await stack.sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "the weather"}],
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=200,
    )
    calls = answer.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    with pytest.raises(openai.BadRequestError) as bad:
        await stack.sdk.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "launch_rockets"}},
        )
    assert bad.value.body["param"] == "tool_choice"  # type: ignore[index]


async def test_auto_answers_with_text_or_calls_and_none_offers_no_tools(stack: Stack) -> None:
    answer = await stack.sdk.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=200,  # type: ignore[list-item]
    )
    message = answer.choices[0].message
    assert (message.tool_calls and answer.choices[0].finish_reason == "tool_calls") or (
        message.content is not None and not message.tool_calls
    )
    plain = await stack.sdk.chat.completions.create(model=MODEL, messages=HELLO)
    none = await stack.sdk.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        tools=[WEATHER],
        tool_choice="none",  # type: ignore[list-item]
    )
    assert (
        none.choices[0].message.content == plain.choices[0].message.content
    )  # nothing rendered, nothing parsed
    assert not none.choices[0].message.tool_calls


async def test_a_tool_loop_and_streamed_call_deltas(stack: Stack) -> None:
    messages: list = [{"role": "user", "content": "the weather in Oslo"}]
    first = await stack.sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=200,  # type: ignore[list-item]
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 4}'})
    answer = await stack.sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])  # type: ignore[list-item]
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    rendered = await stack.http.post(
        "/v1/tokenize", json={"model": MODEL, "messages": messages, "return_token_strs": True}
    )
    prompt = "".join(rendered.json()["token_strs"])
    assert (
        call.id in prompt and '"celsius": 4' in prompt and "get_weather" in prompt
    )  # the loop is in the prompt

    stream = await stack.sdk.chat.completions.create(
        model=MODEL,
        messages=messages[:1],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,  # one call: a model of random weights may otherwise call until max_tokens
        max_tokens=200,
        stream=True,
    )
    pieces: dict[int, dict] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = pieces.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                if delta.id:
                    assert entry["id"] is None and delta.function and delta.function.name  # id and name first
                    entry["id"], entry["name"] = delta.id, delta.function.name
                entry["arguments"] += (delta.function.arguments if delta.function else None) or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and pieces
    for entry in pieces.values():
        assert entry["name"] == "get_weather" and json.loads(entry["arguments"])["city"] in (
            "Paris",
            "Oslo",
            "Lima",
        )
