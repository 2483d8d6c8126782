"""OpenAI's Responses API (`POST /v1/responses`): its request and response shapes, the pure translation of
a request to the runner's GenerateRequest, and `ResponseBuilder`, which turns the runner's messages into
the Responses API's output items and streaming events (the same items whether streamed or not).

Stateless: nothing is stored, so whatever refers to a stored response, conversation or prompt template
is refused. Nothing is silently ignored: every field is honoured, accepted as a label that changes
nothing (`metadata`, `user`, `safety_identifier`, `prompt_cache_key`), or refused with a 400 whose `param`
names it, as docs/api.md lists.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.protocol.answer import Usage
from gateway.protocol.common import ImageRef, Piece, StrictBoolsModel, Unsupported, refuse_images, set_content
from gateway.protocol.openai import MAX_TOP_LOGPROBS, chat_logprobs, image_detail, response_format_constraint
from jan.runner.v1 import runner_service_pb2 as runner_pb

LOGPROBS_INCLUDE = "message.output_text.logprobs"

# Fields of OpenAI's request that cannot be honoured here when set (to anything but null or false).
_REFUSED_WHEN_SET = {
    "store": "responses are not stored here: leave store out or send store: false",
    "previous_response_id": "responses are not stored here: send the whole conversation in `input`",
    "conversation": "conversations are not stored here: send the whole conversation in `input`",
    "background": "background responses are not supported: nothing is stored to poll",
    "prompt": "prompt templates are not supported: send `instructions` and `input`",
    "context_management": "context management (compaction) is not supported",
    "moderation": "moderation is not supported",
    "prompt_cache_retention": "prompt cache retention cannot be chosen: the prefix cache is the runner's",
    "prompt_cache_options": "prompt cache options cannot be chosen: the prefix cache is the runner's",
    "verbosity": "verbosity is not supported",
}
# Runner errors name the field as chat completions call it; the Responses API calls it otherwise.
_PARAM_NAMES = {"response_format": "text.format", "messages": "input"}


# --- requests ---------------------------------------------------------------------------------------------


class ResponsesIn(StrictBoolsModel):
    """The body of `POST /v1/responses`; unknown fields are refused by name (`refused_fields`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The model id, '<folder>/<file>'.")
    input: str | list[dict[str, Any]] = Field(
        description="A user message as text, or items: messages, function_call, function_call_output."
    )
    instructions: str | None = Field(default=None, description="A system message put first.")
    stream: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    text: dict[str, Any] | None = Field(default=None, description="`format`: text, json_object, json_schema.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Function tools only.")
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(
        default=None, ge=0, description="Limits built-in tool calls; none are served here, so none are made."
    )
    reasoning: dict[str, Any] | None = Field(default=None, description="Only null settings: see docs/api.md.")
    include: list[str] | None = Field(default=None, description=f"Only {LOGPROBS_INCLUDE!r}.")
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    # Labels for the provider: accepted, with no effect on the answer (docs/api.md).
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = Field(
        default=None, description="Accepted; the prefix cache works without it."
    )

    @property
    def with_logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or [])

    @property
    def obfuscate(self) -> bool:
        return (self.stream_options or {}).get("include_obfuscation") is True


def refused_fields(body: ResponsesIn) -> None:
    """Raises Unsupported for the first field of the request that would not be honoured."""
    for name, value in (body.model_extra or {}).items():
        if name not in _REFUSED_WHEN_SET:
            raise Unsupported(name, f"unrecognized request argument supplied: {name}")
        if value is not None and value is not False:
            raise Unsupported(name, _REFUSED_WHEN_SET[name])
    for name, value in (body.stream_options or {}).items():
        if name != "include_obfuscation" or not isinstance(value, bool):
            raise Unsupported(f"stream_options.{name}", "only stream_options.include_obfuscation (a boolean)")
    if body.service_tier not in (None, "auto", "default"):
        raise Unsupported("service_tier", "only service_tier 'auto' or 'default' is served here")
    if body.truncation == "auto":
        raise Unsupported(
            "truncation", "only truncation 'disabled': an input longer than the context is an error"
        )
    for i, name in enumerate(body.include or []):
        if name != LOGPROBS_INCLUDE:
            raise Unsupported(f"include.{i}", f"include {name!r} is not supported: only {LOGPROBS_INCLUDE!r}")
    if body.top_logprobs and not body.with_logprobs:
        raise Unsupported("top_logprobs", f"top_logprobs needs include: [{LOGPROBS_INCLUDE!r}]")
    for name, value in (body.reasoning or {}).items():
        if value is not None:
            raise Unsupported(
                f"reasoning.{name}",
                "reasoning settings are not supported: a thinking model thinks as its template says, "
                "and its thinking comes back whole as a `reasoning` item",
            )


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Unsupported(where, f"{where} must be a string")
    return value


def _json_text(value: Any, where: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        raise Unsupported(where, f"{where} is not a usable JSON value: {exc}") from None


def _only(item: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise Unsupported(f"{where}.{unknown[0]}", f"unknown field {unknown[0]!r} in {where}")


def _image(part: dict[str, Any], role: str, at: str) -> ImageRef:
    """An `input_image` part ({type, image_url, detail}) of a user message; a stored file is refused."""
    if role != "user":
        raise Unsupported(at, f"only user messages may carry images, not {role} messages")
    _only(part, {"type", "image_url", "detail", "file_id"}, at)
    if part.get("file_id") is not None:
        raise Unsupported(f"{at}.file_id", "files are not stored here: send the image as image_url")
    image_detail(part.get("detail"), f"{at}.detail")
    return ImageRef(param=f"{at}.image_url", url=_string(part.get("image_url"), f"{at}.image_url"))


def _content(content: Any, role: str, where: str) -> list[Piece]:
    """A message's content in order: a string, or text parts and (in user messages) image parts; other
    parts are refused by place."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise Unsupported(f"{where}.content", "content must be a string or a list of parts")
    pieces: list[Piece] = []
    for j, part in enumerate(content):
        at = f"{where}.content.{j}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text" and isinstance(part, dict):
            _only(part, {"type", "text"}, at)
            pieces.append(_string(part.get("text"), f"{at}.text"))
        elif kind == "output_text" and isinstance(part, dict):
            _only(part, {"type", "text", "annotations", "logprobs"}, at)
            pieces.append(_string(part.get("text"), f"{at}.text"))
        elif kind == "refusal" and role == "assistant" and isinstance(part, dict):
            _only(part, {"type", "refusal"}, at)
            pieces.append(_string(part.get("refusal"), f"{at}.refusal"))
        elif kind == "input_image" and isinstance(part, dict):
            pieces.append(_image(part, role, at))
        else:
            raise Unsupported(
                at,
                f"content parts of type {kind!r} are not supported by this model: only text and input_image",
            )
    return pieces


def _message(item: dict[str, Any], where: str, images: list[ImageRef]) -> runner_pb.ChatMessage:
    _only(item, {"type", "role", "content", "id", "status"}, where)
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise Unsupported(f"{where}.role", f"role {role!r} is not one of user, system, developer, assistant")
    message = runner_pb.ChatMessage(role="system" if role == "developer" else role)
    return set_content(message, _content(item.get("content"), role, where), images)


def _function_call(item: dict[str, Any], where: str) -> runner_pb.ToolCall:
    _only(item, {"type", "call_id", "name", "arguments", "id", "status"}, where)
    return runner_pb.ToolCall(
        id=_string(item.get("call_id"), f"{where}.call_id"),
        name=_string(item.get("name"), f"{where}.name"),
        arguments=_string(item.get("arguments"), f"{where}.arguments"),
    )


def _call_output(
    item: dict[str, Any], where: str, names: dict[str, str], images: list[ImageRef]
) -> runner_pb.ChatMessage:
    _only(item, {"type", "call_id", "output", "id", "status"}, where)
    call_id = _string(item.get("call_id"), f"{where}.call_id")
    if call_id not in names:
        raise Unsupported(f"{where}.call_id", f"no function_call item before it has call_id {call_id!r}")
    output = item.get("output")
    pieces = [output] if isinstance(output, str) else _content(output, "tool", f"{where}.output")
    message = runner_pb.ChatMessage(role="tool", tool_call_id=call_id, name=names[call_id])
    return set_content(message, pieces, images)


def chat_messages(body: ResponsesIn) -> tuple[list[runner_pb.ChatMessage], list[ImageRef]]:
    """`instructions` and `input` as chat messages, and the images their image parts wait for:
    function_call items join the assistant message before them (or open one), function_call_output items
    are tool messages; reasoning items of earlier turns are accepted and not rendered (chat templates drop
    past thinking)."""
    messages = [runner_pb.ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    images: list[ImageRef] = []
    if isinstance(body.input, str):
        return [*messages, runner_pb.ChatMessage(role="user", content=body.input)], images
    names: dict[str, str] = {}  # call_id -> function name, for the tool messages that answer it
    for i, item in enumerate(body.input):
        where, kind = f"input.{i}", item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where, images))
        elif kind == "function_call":
            call = _function_call(item, where)
            names[call.id] = call.name
            if not messages or messages[-1].role != "assistant":
                messages.append(runner_pb.ChatMessage(role="assistant"))
            messages[-1].tool_calls.append(call)
        elif kind == "function_call_output":
            messages.append(_call_output(item, where, names, images))
        elif kind == "reasoning":
            _only(item, {"type", "id", "summary", "content", "encrypted_content", "status"}, where)
        elif kind == "item_reference":
            raise Unsupported(f"{where}.type", "items are not stored here: send the item itself")
        else:
            raise Unsupported(
                f"{where}.type",
                f"input items of type {kind!r} are not supported: only message, function_call, "
                "function_call_output and reasoning",
            )
    if not messages:
        raise Unsupported("input", "input has no message")
    return messages, images


def _tools(tools: list[dict[str, Any]] | None) -> list[runner_pb.Tool]:
    out = []
    for i, tool in enumerate(tools or []):
        where = f"tools.{i}"
        if tool.get("type") != "function":
            raise Unsupported(
                f"{where}.type", f"tools of type {tool.get('type')!r} are not supported: only function"
            )
        _only(
            tool,
            {"type", "name", "description", "parameters", "strict", "defer_loading", "allowed_callers"},
            where,
        )
        if tool.get("defer_loading") not in (None, False):
            raise Unsupported(
                f"{where}.defer_loading", "deferred tool loading (tool search) is not supported"
            )
        if tool.get("allowed_callers") not in (None, ["direct"]):
            raise Unsupported(f"{where}.allowed_callers", "only direct calls by the model are supported")
        if tool.get("strict") not in (None, True, False):
            raise Unsupported(f"{where}.strict", "strict must be a boolean")
        description = tool.get("description")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise Unsupported(f"{where}.parameters", "parameters must be a JSON schema object")
        out.append(
            runner_pb.Tool(
                name=_string(tool.get("name"), f"{where}.name"),
                description="" if description is None else _string(description, f"{where}.description"),
                parameters_json="" if parameters is None else _json_text(parameters, f"{where}.parameters"),
            )
        )
    return out


_CHOICE_MODES = {
    "auto": runner_pb.TOOL_CHOICE_MODE_AUTO,
    "none": runner_pb.TOOL_CHOICE_MODE_NONE,
    "required": runner_pb.TOOL_CHOICE_MODE_REQUIRED,
}


def _tool_choice(choice: str | dict[str, Any] | None, tools: list[runner_pb.Tool]) -> runner_pb.ToolChoice:
    if choice is None:
        return runner_pb.ToolChoice()
    if isinstance(choice, str):
        if choice not in _CHOICE_MODES:
            raise Unsupported("tool_choice", f"tool_choice {choice!r} is not one of auto, none, required")
        return runner_pb.ToolChoice(mode=_CHOICE_MODES[choice])
    name = choice.get("name")
    if choice.get("type") != "function" or set(choice) != {"type", "name"} or not isinstance(name, str):
        raise Unsupported("tool_choice", "tool_choice must be auto, none, required or {type: function, name}")
    if name not in {t.name for t in tools}:
        raise Unsupported("tool_choice", f"tool_choice names {name!r}, which is not among the tools")
    return runner_pb.ToolChoice(mode=runner_pb.TOOL_CHOICE_MODE_FUNCTION, name=name)


def _constraint(text: dict[str, Any] | None) -> runner_pb.Constraint | None:
    """`text.format` as a Constraint (None for plain text)."""
    _only(text or {}, {"format", "verbosity"}, "text")
    if (text or {}).get("verbosity") is not None:
        raise Unsupported("text.verbosity", "verbosity is not supported")
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise Unsupported(
            "text.format.type", f"text.format {kind!r} is not one of text, json_object, json_schema"
        )
    if fmt["type"] != "json_schema":
        _only(fmt, {"type"}, "text.format")
        return response_format_constraint(fmt)
    _only(fmt, {"type", "name", "schema", "strict", "description"}, "text.format")
    schema = fmt.get("schema", {})
    if not isinstance(schema, dict):
        raise Unsupported("text.format.schema", "text.format.schema must be a JSON schema object")
    _json_text(schema, "text.format.schema")
    return response_format_constraint({"type": "json_schema", "json_schema": {"schema": schema}})


def generate_request(body: ResponsesIn) -> tuple[runner_pb.GenerateRequest, list[ImageRef]]:
    """The runner's request for a response, and the images its image parts wait for (read by
    gateway/images.py); Unsupported for what cannot be honoured."""
    refused_fields(body)
    tools = _tools(body.tools)
    messages, images = chat_messages(body)
    request = runner_pb.GenerateRequest(
        model_id=body.model,
        chat=runner_pb.ChatMessages(messages=messages),
        tools=tools,
        logprobs=body.with_logprobs,
        top_logprobs=body.top_logprobs or 0,
        n=1,
        reasoning=runner_pb.REASONING_MODE_SEPARATE,
    )
    for name in ("temperature", "top_p"):
        if getattr(body, name) is not None:
            setattr(request.sampling, name, getattr(body, name))
    if body.max_output_tokens is not None:
        request.sampling.max_tokens = body.max_output_tokens
    constraint = _constraint(body.text)
    if constraint is not None:
        request.constraint.CopyFrom(constraint)
    if body.tool_choice is not None:
        request.tool_choice.CopyFrom(_tool_choice(body.tool_choice, tools))
    if body.parallel_tool_calls is not None:
        request.parallel_tool_calls = body.parallel_tool_calls
    return request, images


class InputTokensIn(StrictBoolsModel):
    """The body of `POST /v1/responses/input_tokens`: what a response's prompt is made of. The fields that
    need stored state (`conversation`, `previous_response_id`) are refused as on `POST /v1/responses`."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The model id, '<folder>/<file>'.")
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None


class InputTokensOut(BaseModel):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


def tokenize_request(body: InputTokensIn) -> runner_pb.TokenizeRequest:
    """The runner's count of the prompt that `POST /v1/responses` with the same fields would render (the
    tool definitions, and how they are offered, included): one translation, `generate_request`'s."""
    fields = body.model_dump(exclude_none=True, exclude=set(body.model_extra or {}))
    fields.setdefault("input", [])
    generate, images = generate_request(ResponsesIn.model_validate({**fields, **(body.model_extra or {})}))
    refuse_images(images)
    request = runner_pb.TokenizeRequest(model_id=generate.model_id, chat=generate.chat, tools=generate.tools)
    if generate.HasField("tool_choice"):
        request.tool_choice.CopyFrom(generate.tool_choice)
    if generate.HasField("parallel_tool_calls"):
        request.parallel_tool_calls = generate.parallel_tool_calls
    if generate.HasField("constraint"):
        request.constraint.CopyFrom(generate.constraint)
    return request


def param_name(param: str | None) -> str | None:
    """A runner error's `param` as the Responses API names the field."""
    return _PARAM_NAMES.get(param, param) if param else param


# --- responses --------------------------------------------------------------------------------------------


class ResponseUsageOut(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseOut(BaseModel):
    """The response object (the document's summary; `output` items are message, function_call and
    reasoning items as OpenAI defines them)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[dict[str, Any]]
    usage: ResponseUsageOut | None
    incomplete_details: dict[str, str] | None = None
    error: dict[str, str] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    text: dict[str, Any]
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str]


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def settings_echo(body: ResponsesIn) -> dict[str, Any]:
    """The request's settings as the response object repeats them (defaults where none were sent)."""
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "metadata": body.metadata or {},
        "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        "previous_response_id": None,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": body.safety_identifier,
        "service_tier": "default",
        "store": False,
        "temperature": body.temperature,
        "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto",
        "tools": [_tool_echo(t) for t in body.tools or []],
        "top_logprobs": body.top_logprobs or 0,
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
    }


def usage_out(usage: Usage) -> dict[str, Any]:
    """The Responses API's usage. Thinking tokens are counted in output_tokens; the runner does not count
    them apart, so reasoning_tokens is 0 (docs/api.md)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


Event = tuple[str, dict[str, Any]]


@dataclass
class _Item:
    """An output item being produced: its kind, id, place in `output`, and what it has so far."""

    kind: Literal["message", "function_call", "reasoning"]
    id: str
    index: int
    text: str = ""  # the message's or the reasoning's text, or the call's arguments
    call_id: str = ""
    name: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "in_progress"

    def part(self, with_logprobs: bool) -> dict[str, Any]:
        if self.kind == "reasoning":
            return {"type": "reasoning_text", "text": self.text}
        logprobs = list(self.logprobs) if with_logprobs else []
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": logprobs}

    def render(self, with_logprobs: bool, opening: bool = False) -> dict[str, Any]:
        """The item as `output` holds it; `opening`: as response.output_item.added shows it."""
        base = {"id": self.id, "type": self.kind, "status": self.status}
        if self.kind == "function_call":
            arguments = "" if opening else self.text
            return {**base, "call_id": self.call_id, "name": self.name, "arguments": arguments}
        content = [] if opening else [self.part(with_logprobs)]
        if self.kind == "reasoning":
            return {**base, "summary": [], "content": content}
        return {**base, "role": "assistant", "content": content}


class ResponseBuilder:
    """The runner's messages of one answer as the Responses API's output items and events, in the order
    they arrive: thinking as a `reasoning` item, text as a `message` item, each call as a `function_call`
    item. Events are `(name, payload)` pairs; the non-streamed response is `response()` after the last
    message, the same object `response.completed` carries."""

    def __init__(self, body: ResponsesIn, response_id: str | None = None, created_at: int | None = None):
        self.body = body
        self.id = response_id or f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time()) if created_at is None else created_at
        self.items: list[_Item] = []
        self.usage = Usage()
        self.finish: runner_pb.FinishReason.ValueType = runner_pb.FINISH_REASON_UNSPECIFIED
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # the runner's call index -> its item
        self._pending_logprobs: list[dict[str, Any]] = []
        self._sequence = 0
        self._error: dict[str, str] | None = None

    @property
    def done(self) -> bool:
        return self.finish != runner_pb.FINISH_REASON_UNSPECIFIED

    @property
    def status(self) -> str:
        if self._error is not None:
            return "failed"
        if not self.done:
            return "in_progress"
        return "incomplete" if self.finish == runner_pb.FINISH_REASON_LENGTH else "completed"

    def response(self) -> dict[str, Any]:
        """The response object as it stands."""
        with_logprobs = self.body.with_logprobs
        status = self.status
        out: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": self._error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": self.body.model,
            "output": [item.render(with_logprobs) for item in self.items],
            "usage": usage_out(self.usage) if self.done else None,
            **settings_echo(self.body),
        }
        if status == "completed":
            out["completed_at"] = int(time.time())
        return out

    def _event(self, name: str, /, **payload: Any) -> Event:
        event = (name, {"type": name, "sequence_number": self._sequence, **payload})
        self._sequence += 1
        return event

    def _delta(self, name: str, item: _Item, delta: str, **more: Any) -> Event:
        if self.body.obfuscate:
            # Random padding, so that the size of an event does not tell the size of its text.
            more["obfuscation"] = secrets.token_urlsafe(16)[: 1 + secrets.randbelow(16)]
        return self._event(name, item_id=item.id, output_index=item.index, delta=delta, **more)

    def start(self) -> list[Event]:
        """response.created and response.in_progress."""
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _open_item(
        self, kind: Literal["message", "function_call", "reasoning"], **fields: Any
    ) -> list[Event]:
        events = self._close()
        prefix = {"message": "msg", "function_call": "fc", "reasoning": "rs"}[kind]
        item = _Item(kind, f"{prefix}_{uuid.uuid4().hex}", len(self.items), **fields)
        self.items.append(item)
        self._open = item
        with_logprobs = self.body.with_logprobs
        events.append(
            self._event(
                "response.output_item.added",
                output_index=item.index,
                item=item.render(with_logprobs, opening=True),
            )
        )
        if kind != "function_call":
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    part=item.part(with_logprobs),
                )
            )
        return events

    def _close(self, status: str = "completed") -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = status
        with_logprobs = self.body.with_logprobs
        at = {"item_id": item.id, "output_index": item.index}
        events = []
        if item.kind == "function_call":
            events.append(
                self._event(
                    "response.function_call_arguments.done", **at, arguments=item.text, name=item.name
                )
            )
        else:
            if item.kind == "message":
                item.logprobs.extend(self._pending_logprobs)
                self._pending_logprobs = []
                text_done = self._event(
                    "response.output_text.done",
                    **at,
                    content_index=0,
                    text=item.text,
                    logprobs=item.logprobs if with_logprobs else [],
                )
            else:
                text_done = self._event("response.reasoning_text.done", **at, content_index=0, text=item.text)
            events.append(text_done)
            events.append(
                self._event(
                    "response.content_part.done", **at, content_index=0, part=item.part(with_logprobs)
                )
            )
        events.append(
            self._event("response.output_item.done", output_index=item.index, item=item.render(with_logprobs))
        )
        return events

    def _kind_open(self, kind: str) -> bool:
        return self._open is not None and self._open.kind == kind

    def feed(self, reply: runner_pb.GenerateResponse) -> list[Event]:
        """The events of one runner message; the last one closes the response."""
        events: list[Event] = []
        self.usage.count(reply)
        if reply.reasoning:
            if not self._kind_open("reasoning"):
                events += self._open_item("reasoning")
            assert self._open is not None
            self._open.text += reply.reasoning
            events.append(
                self._delta("response.reasoning_text.delta", self._open, reply.reasoning, content_index=0)
            )
        if self.body.with_logprobs and not reply.reasoning and not reply.tool_calls:
            # Log-probabilities of the answer's text; those of thinking or of a call have no place here.
            self._pending_logprobs.extend(chat_logprobs(reply.logprobs))
        if reply.text:
            if not self._kind_open("message"):
                events += self._open_item("message")
            item = self._open
            assert item is not None
            item.text += reply.text
            logprobs, self._pending_logprobs = self._pending_logprobs, []
            item.logprobs.extend(logprobs)
            events.append(
                self._delta(
                    "response.output_text.delta", item, reply.text, content_index=0, logprobs=logprobs
                )
            )
        for d in reply.tool_calls:
            if d.id:
                events += self._open_item("function_call", call_id=d.id, name=d.name)
                assert self._open is not None
                self._calls[d.index] = self._open
            call = self._calls.get(d.index)
            if call is not None and d.arguments:
                call.text += d.arguments
                events.append(self._delta("response.function_call_arguments.delta", call, d.arguments))
        if reply.finish_reason:
            self.finish = reply.finish_reason
            events += self._finish()
        return events

    def _finish(self) -> list[Event]:
        if not self.items:  # an empty answer is still a message, so that output_text is ""
            events = self._open_item("message")
        else:
            events = []
        cut = self.finish == runner_pb.FINISH_REASON_LENGTH
        events += self._close("incomplete" if cut else "completed")
        name = "response.incomplete" if cut else "response.completed"
        events.append(self._event(name, response=self.response()))
        return events

    def fail(self, message: str) -> list[Event]:
        """After a failure mid-answer: an `error` event, then response.failed with the output so far."""
        if self._open is not None:
            self._open.status = "incomplete"
        self._error = {"code": "server_error", "message": message}
        return [
            self._event("error", code="server_error", message=message, param=None),
            self._event("response.failed", response=self.response()),
        ]
