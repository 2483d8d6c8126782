"""OpenAI's inference dialect: the request and response shapes of chat completions, completions,
embeddings and the token routes, and pure translations to the runner's GenerateRequest and back.

Nothing is silently ignored: every field of OpenAI's requests is either honoured or refused with a 400
whose `param` names it (`unsupported_fields`); the few fields that only label a request for the provider
(`user`, `metadata`, `safety_identifier`, `prompt_cache_key`) are accepted and change nothing, as
docs/api.md says. Fields beyond OpenAI's (`top_k`, `min_p`, `repeat_penalty`, `grammar`, `keep_alive`,
`reasoning_format`) are our extensions, as llama-server has them.
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.protocol.answer import Gathered, ToolCall, Usage
from gateway.protocol.common import (
    ImageRef,
    Piece,
    StrictBoolsModel,
    Unsupported,
    keep_alive_seconds,
    refuse_images,
    set_content,
)
from jan.runner.v1 import runner_service_pb2 as runner_pb

MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5

FINISH_NAMES = {
    runner_pb.FINISH_REASON_STOP: "stop",
    runner_pb.FINISH_REASON_LENGTH: "length",
    runner_pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


# --- requests ---------------------------------------------------------------------------------------------


class SamplingIn(StrictBoolsModel):
    """Sampling fields shared by chat and completions; unset ones come from the model's parameters."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The model id, '<folder>/<file>'.")
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=100_000, description="Extension (llama.cpp).")
    min_p: float | None = Field(default=None, ge=0, le=1, description="Extension (llama.cpp).")
    max_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repeat_penalty: float | None = Field(default=None, ge=0, le=10, description="Extension (llama.cpp).")
    n: int = Field(default=1, ge=1, le=MAX_N, description="Choices generated from the one prompt.")
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (as a string) -> bias from -100 to 100 added to its logit."
    )
    stream_options: dict[str, Any] | None = None
    keep_alive: float | str | None = Field(default=None, description="How long the model stays loaded after.")
    grammar: str | None = Field(default=None, description="Extension (llama-server): a GBNF grammar.")
    # Labels for the provider: accepted, with no effect on the answer (docs/api.md).
    user: str | None = None
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = Field(
        default=None, description="Accepted; the prefix cache works without it."
    )
    service_tier: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ToolFunctionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(default=None, description="Calls always follow the schema here.")


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # other tool types (custom, ...) are refused by name

    type: str
    function: ToolFunctionIn | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionIn(SamplingIn):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    response_format: dict[str, Any] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    reasoning_format: Literal["separate", "inline"] | None = Field(
        default=None,
        description="Extension: 'separate' (default) puts thinking text in reasoning_content, "
        "'inline' leaves it in content.",
    )
    store: bool | None = None
    modalities: list[str] | None = None


class CompletionIn(SamplingIn):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    response_format: dict[str, Any] | None = Field(
        default=None, description="Extension: json_object or json_schema, as on chat completions."
    )
    json_schema: dict[str, Any] | None = Field(
        default=None, description="Extension (llama-server): the output follows this JSON schema."
    )
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    suffix: str | None = None


class EmbeddingIn(StrictBoolsModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    keep_alive: float | str | None = None
    dimensions: int | None = None
    user: str | None = None


class TokenizeIn(StrictBoolsModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | None = Field(default=None, description="Plain text.")
    messages: list[ChatMessageIn] | None = Field(
        default=None, description="Chat messages, rendered with the model's chat template."
    )
    add_special_tokens: bool = Field(default=True, description="Plain text: add BOS when the model uses one.")
    return_token_strs: bool = False


TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


class DetokenizeIn(StrictBoolsModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    tokens: list[TokenId]


# Fields OpenAI defines that we do not honour, with why; anything else unknown is refused too.
_REFUSED = {
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "functions": "the deprecated `functions` is not supported: send `tools`",
    "function_call": "the deprecated `function_call` is not supported: send `tool_choice`",
    "reasoning_effort": "reasoning_effort is not supported: thinking models think as their template says",
    "verbosity": "verbosity is not supported",
}


def unsupported_fields(body: SamplingIn) -> None:
    """Raises Unsupported for the first field of the request that would not be honoured."""
    for name in body.model_extra or {}:
        raise Unsupported(name, _REFUSED.get(name, f"unrecognized request argument supplied: {name}"))
    extra = set((body.stream_options or {}).keys()) - {"include_usage"}
    if extra:
        raise Unsupported(
            f"stream_options.{sorted(extra)[0]}", "only stream_options.include_usage is supported"
        )
    if body.service_tier not in (None, "auto", "default"):
        raise Unsupported("service_tier", "only service_tier 'auto' or 'default' is served here")
    if isinstance(body, ChatCompletionIn):
        if body.store:
            raise Unsupported("store", "completions are not stored here (store: true)")
        if body.modalities not in (None, ["text"]):
            raise Unsupported("modalities", "only the text modality is supported")
        if body.top_logprobs and not body.logprobs:
            raise Unsupported("top_logprobs", "top_logprobs needs logprobs: true")
        if body.parallel_tool_calls is not None and not body.tools:
            raise Unsupported("parallel_tool_calls", "parallel_tool_calls is only allowed with tools")
    if isinstance(body, CompletionIn):
        if body.suffix:
            raise Unsupported("suffix", "suffix (fill-in-the-middle) is not supported")
        if body.best_of not in (None, body.n):
            raise Unsupported("best_of", "best_of is supported only equal to n")
        if body.echo and body.stream:
            raise Unsupported("echo", "echo is supported only without stream")
        if body.echo and body.logprobs is not None:
            raise Unsupported(
                "echo", "echo with logprobs would need the prompt's log-probabilities, not computed here"
            )


def _sampling(body: SamplingIn, max_tokens: int | None) -> runner_pb.Sampling:
    s = runner_pb.Sampling()
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            setattr(s, name, value)
    if body.repeat_penalty is not None:
        s.repeat_penalty = body.repeat_penalty
    if max_tokens is not None:
        s.max_tokens = max_tokens
    if body.stop:
        s.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    return s


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    out = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise Unsupported("logit_bias", f"logit_bias keys are token ids; {key!r} is not") from None
        if not 0 <= token < 2**31 or not -100 <= value <= 100:
            raise Unsupported("logit_bias", f"logit_bias {key}: {value} is out of range (-100..100)")
        out[token] = float(value)
    return out


def response_format_constraint(fmt: dict[str, Any] | None) -> runner_pb.Constraint | None:
    """`response_format` as a Constraint: None for text."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return runner_pb.Constraint(json_object=True)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise Unsupported("response_format.json_schema", "json_schema must be an object with a `schema`")
        unknown = set(spec) - {"name", "schema", "strict", "description"}
        if unknown:
            raise Unsupported(f"response_format.json_schema.{sorted(unknown)[0]}", "unknown field")
        return runner_pb.Constraint(json_schema=orjson.dumps(spec.get("schema", {})).decode())
    raise Unsupported(
        "response_format.type", f"response_format type {kind!r} is not one of text, json_object, json_schema"
    )


def _constraint(
    response_format: dict[str, Any] | None, grammar: str | None, json_schema: dict[str, Any] | None = None
) -> runner_pb.Constraint | None:
    given = [
        name
        for name, v in (
            ("response_format", response_format),
            ("grammar", grammar),
            ("json_schema", json_schema),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise Unsupported(given[1], f"{given[0]} and {given[1]} cannot be combined")
    if grammar is not None:
        if not grammar.strip():
            raise Unsupported("grammar", "grammar is empty")
        return runner_pb.Constraint(grammar=grammar)
    if json_schema is not None:
        return runner_pb.Constraint(json_schema=orjson.dumps(json_schema).decode())
    return response_format_constraint(response_format)


def _tools(body: ChatCompletionIn) -> tuple[list[runner_pb.Tool], runner_pb.ToolChoice | None]:
    tools = []
    for i, tool in enumerate(body.tools or []):
        if tool.type != "function" or tool.function is None or tool.model_extra:
            raise Unsupported(
                f"tools.{i}.type", f"tools of type {tool.type!r} are not supported: only function"
            )
        fn = tool.function
        params = orjson.dumps(fn.parameters).decode() if fn.parameters is not None else ""
        tools.append(runner_pb.Tool(name=fn.name, description=fn.description or "", parameters_json=params))
    choice = body.tool_choice
    if choice is None:
        return tools, None
    if isinstance(choice, str):
        modes = {
            "auto": runner_pb.TOOL_CHOICE_MODE_AUTO,
            "none": runner_pb.TOOL_CHOICE_MODE_NONE,
            "required": runner_pb.TOOL_CHOICE_MODE_REQUIRED,
        }
        if choice not in modes:
            raise Unsupported("tool_choice", f"tool_choice {choice!r} is not one of auto, none, required")
        return tools, runner_pb.ToolChoice(mode=modes[choice])
    name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
    if not isinstance(name, str) or not name:
        raise Unsupported(
            "tool_choice", "tool_choice must be auto, none, required or {type: function, function: {name}}"
        )
    if name not in {t.name for t in tools}:
        raise Unsupported("tool_choice", f"tool_choice names {name!r}, which is not among the tools")
    return tools, runner_pb.ToolChoice(mode=runner_pb.TOOL_CHOICE_MODE_FUNCTION, name=name)


# `detail` values that change nothing here: the model reads an image at its projector's own resolution.
IMAGE_DETAILS = (None, "auto")


def image_detail(detail: Any, where: str) -> None:
    """Only an absent or "auto" `detail` is honoured (the projector sets the resolution); the others are
    refused by name rather than ignored."""
    if detail not in IMAGE_DETAILS:
        raise Unsupported(
            where,
            f"detail {detail!r} cannot be honoured: images are read at the model's own resolution "
            "(leave detail out or send 'auto')",
        )


def _image_part(part: dict[str, Any], role: str, where: str) -> ImageRef:
    """An `image_url` content part: {type, image_url: {url, detail}}, in a user message."""
    if role != "user":
        raise Unsupported(where, f"only user messages may carry images, not {role} messages")
    unknown = sorted(set(part) - {"type", "image_url"})
    if unknown:
        raise Unsupported(f"{where}.{unknown[0]}", f"unknown field {unknown[0]!r} in an image_url part")
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise Unsupported(f"{where}.image_url", "image_url must be {url, detail}: url a data: or http(s) URL")
    unknown = sorted(set(image) - {"url", "detail"})
    if unknown:
        raise Unsupported(f"{where}.image_url.{unknown[0]}", f"unknown field {unknown[0]!r} in image_url")
    image_detail(image.get("detail"), f"{where}.image_url.detail")
    return ImageRef(param=f"{where}.image_url.url", url=image["url"])


def _pieces(m: ChatMessageIn, where: str) -> list[Piece]:
    """The message's content in order: a string, or text parts and image parts (other parts refused)."""
    if m.content is None or isinstance(m.content, str):
        return [m.content or ""]
    pieces: list[Piece] = []
    for j, part in enumerate(m.content):
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind == "refusal" and m.role == "assistant":
            pieces.append(str(part.get("refusal") or ""))
        elif kind == "image_url":
            pieces.append(_image_part(part, m.role, f"{where}.content.{j}"))
        else:
            raise Unsupported(
                f"{where}.content.{j}",
                f"content parts of type {kind!r} are not supported by this model: only text and image_url",
            )
    return pieces


def _chat_message(m: ChatMessageIn, i: int, images: list[ImageRef]) -> runner_pb.ChatMessage:
    where = f"messages.{i}"
    unknown = set(m.model_extra or {}) - {"refusal", "audio", "reasoning_content"}
    if unknown:
        raise Unsupported(f"{where}.{sorted(unknown)[0]}", "unknown message field")
    role = "system" if m.role == "developer" else m.role
    out = set_content(runner_pb.ChatMessage(role=role, name=m.name or ""), _pieces(m, where), images)
    if m.tool_calls:
        if m.role != "assistant":
            raise Unsupported(f"{where}.tool_calls", "only assistant messages carry tool_calls")
        for j, call in enumerate(m.tool_calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if call.get("type", "function") != "function" or not isinstance(fn, dict):
                raise Unsupported(
                    f"{where}.tool_calls.{j}",
                    "a tool call must be {id, type: function, function: {name, arguments}}",
                )
            arguments = fn.get("arguments", "{}")
            if not isinstance(arguments, str):
                arguments = orjson.dumps(arguments).decode()
            out.tool_calls.append(
                runner_pb.ToolCall(
                    id=str(call.get("id") or ""), name=str(fn.get("name") or ""), arguments=arguments
                )
            )
    if m.role == "tool":
        if not m.tool_call_id:
            raise Unsupported(f"{where}.tool_call_id", "a tool message needs the tool_call_id it answers")
        out.tool_call_id = m.tool_call_id
    return out


def chat_request(body: ChatCompletionIn) -> tuple[runner_pb.GenerateRequest, list[ImageRef]]:
    """The runner's request for a chat completion, and the images its image parts wait for (read by
    gateway/images.py); Unsupported for what cannot be honoured."""
    unsupported_fields(body)
    tools, choice = _tools(body)
    images: list[ImageRef] = []
    request = runner_pb.GenerateRequest(
        model_id=body.model,
        chat=runner_pb.ChatMessages(
            messages=[_chat_message(m, i, images) for i, m in enumerate(body.messages)]
        ),
        sampling=_sampling(body, body.max_completion_tokens or body.max_tokens),
        keep_alive_s=keep_alive_seconds(body.keep_alive),
        tools=tools,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        n=body.n,
        logit_bias=_logit_bias(body.logit_bias),
        reasoning=runner_pb.REASONING_MODE_INLINE
        if body.reasoning_format == "inline"
        else runner_pb.REASONING_MODE_SEPARATE,
    )
    constraint = _constraint(body.response_format, body.grammar)
    if constraint is not None:
        request.constraint.CopyFrom(constraint)
    if choice is not None:
        request.tool_choice.CopyFrom(choice)
    if body.parallel_tool_calls is not None:
        request.parallel_tool_calls = body.parallel_tool_calls
    return request, images


def completion_request(body: CompletionIn) -> runner_pb.GenerateRequest:
    unsupported_fields(body)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise Unsupported("prompt", "one prompt per request")
        prompt = prompt[0]
    request = runner_pb.GenerateRequest(
        model_id=body.model,
        text=prompt,
        sampling=_sampling(body, body.max_tokens),
        keep_alive_s=keep_alive_seconds(body.keep_alive),
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
        n=body.n,
        logit_bias=_logit_bias(body.logit_bias),
        reasoning=runner_pb.REASONING_MODE_INLINE,
    )
    constraint = _constraint(body.response_format, body.grammar, body.json_schema)
    if constraint is not None:
        request.constraint.CopyFrom(constraint)
    return request


def embed_request(body: EmbeddingIn) -> runner_pb.EmbedRequest:
    for name in body.model_extra or {}:
        raise Unsupported(name, f"unrecognized request argument supplied: {name}")
    if body.dimensions is not None:
        raise Unsupported("dimensions", "dimensions is not supported: the model's own size is returned")
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise Unsupported("input", "input must not be empty")
    return runner_pb.EmbedRequest(model_id=body.model, inputs=inputs)


def tokenize_request(body: TokenizeIn) -> runner_pb.TokenizeRequest:
    if (body.prompt is None) == (body.messages is None):
        raise Unsupported("prompt", "give either prompt or messages")
    request = runner_pb.TokenizeRequest(model_id=body.model, with_pieces=body.return_token_strs)
    if body.messages is not None:
        images: list[ImageRef] = []
        request.chat.messages.extend(_chat_message(m, i, images) for i, m in enumerate(body.messages))
        refuse_images(images)
    else:
        request.text = body.prompt or ""
        request.add_special = body.add_special_tokens
    return request


# --- responses --------------------------------------------------------------------------------------------


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class ChatChoiceOut(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoiceOut]
    usage: UsageOut


class CompletionChoiceOut(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class CompletionOut(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoiceOut]
    usage: UsageOut


class EmbeddingDataOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingDataOut]
    model: str
    usage: dict[str, int]


class TokenizeOut(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    token_strs: list[str] | None = None


class DetokenizeOut(BaseModel):
    prompt: str


def usage_dict(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _top(entries: Any) -> list[dict[str, Any]]:
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in entries]


def chat_logprobs(entries: Any) -> list[dict[str, Any]]:
    """OpenAI's `logprobs.content` items of runner TokenLogprobs."""
    return [
        {"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes), "top_logprobs": _top(e.top_logprobs)}
        for e in entries
    ]


def usage_of(usage: Usage) -> dict[str, Any]:
    return usage_dict(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def chat_completion(cid: str, created: int, model: str, gathered: Gathered, with_logprobs: bool) -> dict:
    choices = []
    for index in sorted(gathered.choices):
        c = gathered.choices[index]
        message: dict[str, Any] = {"role": "assistant", "content": c.content, "refusal": None}
        if c.reasoning:
            message["reasoning_content"] = c.thinking
        if c.calls:
            message["tool_calls"] = [tool_call(call) for call in c.tool_calls]
            message["content"] = message["content"] or None
        choices.append(
            {
                "index": index,
                "message": message,
                "finish_reason": FINISH_NAMES.get(c.finish_reason, "stop"),
                "logprobs": {"content": chat_logprobs(c.logprobs), "refusal": None}
                if with_logprobs
                else None,
            }
        )
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_of(gathered.usage),
    }


def chat_chunk(
    cid: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    chunk = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def chat_chunk_choice(reply: runner_pb.GenerateResponse, with_logprobs: bool) -> dict[str, Any] | None:
    """The streamed choice of one runner message, or None when it carries nothing."""
    delta: dict[str, Any] = {}
    if reply.text:
        delta["content"] = reply.text
    if reply.reasoning:
        delta["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        delta["tool_calls"] = [_call_delta(d) for d in reply.tool_calls]
    finish = FINISH_NAMES.get(reply.finish_reason) if reply.finish_reason else None
    if not delta and not finish and not reply.logprobs:
        return None
    choice: dict[str, Any] = {"index": reply.index, "delta": delta, "finish_reason": finish, "logprobs": None}
    if with_logprobs and reply.logprobs:
        choice["logprobs"] = {"content": chat_logprobs(reply.logprobs), "refusal": None}
    return choice


def _call_delta(d: runner_pb.ToolCallDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"index": d.index}
    if d.id:
        out["id"] = d.id
        out["type"] = "function"
        out["function"] = {"name": d.name, "arguments": d.arguments}
    else:
        out["function"] = {"arguments": d.arguments}
    return out


def completion_logprobs(entries: Any, offset: int) -> dict[str, Any]:
    """The legacy completions `logprobs` object."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for e in entries:
        tokens.append(e.token)
        token_logprobs.append(e.logprob)
        top.append({t.token: t.logprob for t in e.top_logprobs})
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def text_completion(
    cid: str, created: int, model: str, gathered: Gathered, with_logprobs: bool, echo: str
) -> dict[str, Any]:
    choices = []
    for index in sorted(gathered.choices):
        c = gathered.choices[index]
        choices.append(
            {
                "index": index,
                "text": echo + c.content,
                "finish_reason": FINISH_NAMES.get(c.finish_reason, "stop"),
                "logprobs": completion_logprobs(c.logprobs, len(echo)) if with_logprobs else None,
            }
        )
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_of(gathered.usage),
    }


def text_chunk_choice(reply: runner_pb.GenerateResponse, with_logprobs: bool, offset: int) -> dict | None:
    finish = FINISH_NAMES.get(reply.finish_reason) if reply.finish_reason else None
    if not reply.text and not finish and not reply.logprobs:
        return None
    return {
        "index": reply.index,
        "text": reply.text,
        "finish_reason": finish,
        "logprobs": completion_logprobs(reply.logprobs, offset) if with_logprobs else None,
    }


def text_chunk(cid: str, created: int, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}


def embedding_list(model: str, reply: runner_pb.EmbedResponse, encoding: str) -> dict[str, Any]:
    data = []
    for i, e in enumerate(reply.embeddings):
        values: list[float] | str = list(e.values)
        if encoding == "base64":
            values = base64.b64encode(struct.pack(f"<{len(e.values)}f", *e.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": values})
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def tokenize_dict(reply: runner_pb.TokenizeResponse, with_strs: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tokens": list(reply.tokens),
        "count": len(reply.tokens),
        "max_model_len": reply.max_model_len,
    }
    if with_strs:
        out["token_strs"] = list(reply.pieces)
    return out
