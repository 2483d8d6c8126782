"""Anthropic's Messages dialect (`/v1/messages`, `/v1/messages/count_tokens`): the request and response
shapes, and pure translations to the runner's GenerateRequest / TokenizeRequest and of its answer back
into a Message or the stream of named events Anthropic's SDKs read.

Nothing is silently ignored: a field is honoured or refused with a 400 whose message starts with the
field's path (`messages.0.content.1.type: ...`), since Anthropic's error shape has no `param`. Accepted
without effect, as docs/api.md says: `metadata.user_id` (a label), `cache_control` (the prefix cache
works without it), `service_tier` (one tier here) and thinking blocks of earlier assistant turns (which
Anthropic drops from the context too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import APIError
from gateway.protocol.answer import Gathered, Usage
from gateway.protocol.common import ImageRef, Piece, StrictBoolsModel, Unsupported, refuse_images, set_content
from jan.runner.v1 import runner_service_pb2 as runner_pb

M = TypeVar("M", bound=BaseModel)

# Blocks of one message's text are joined by a blank line (Anthropic keeps them apart; a chat template
# takes one string).
BLOCK_JOIN = "\n\n"
# What a tool result with `is_error: true` starts with: the runner's messages have no such flag, so the
# model reads it in the text, as Claude reads it in its own prompt.
TOOL_ERROR_PREFIX = "Error: "


def refuse(param: str, why: str) -> Unsupported:
    """A 400 naming `param` in its message (Anthropic's error body carries no `param`)."""
    return Unsupported(param, f"{param}: {why}")


# --- requests ---------------------------------------------------------------------------------------------


class CacheControlIn(BaseModel):
    """A prompt-cache breakpoint: accepted, the runner's prefix cache reuses every prompt's start anyway."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str
    cache_control: CacheControlIn | None = None
    citations: list[dict[str, Any]] | None = Field(default=None, description="Only null or empty.")


class ToolUseBlockIn(BaseModel):
    """An assistant's call of a tool (as this gateway returned it)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControlIn | None = None
    caller: dict[str, Any] | None = Field(default=None, description='Only {"type": "direct"}.')


class ToolResultBlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[dict[str, Any]] = Field(default="", description="Text, or text blocks.")
    is_error: bool = False
    cache_control: CacheControlIn | None = None


class ThinkingBlockIn(BaseModel):
    """Thinking of an earlier assistant turn: accepted and not shown to the model (as Anthropic does)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["redacted_thinking"]
    data: str


class Base64SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["base64"]
    media_type: str
    data: str


class UrlSourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["url"]
    url: str


class ImageBlockIn(BaseModel):
    """An image in a user message: its `source` is base64 data or a URL (a stored file is refused)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image"]
    source: dict[str, Any]
    cache_control: CacheControlIn | None = None


class BlockIn(BaseModel):
    """A content block: its `type` says which shape it has (text, image, tool_use, tool_result, thinking,
    redacted_thinking); any other type is refused by name."""

    model_config = ConfigDict(extra="allow")

    type: str


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"]
    content: str | list[BlockIn]


class ToolIn(BaseModel):
    """A client tool ({name, description, input_schema}); server tools (a dated `type`) are refused."""

    model_config = ConfigDict(extra="allow")

    type: str | None = None
    name: str | None = None


class CustomToolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControlIn | None = None
    strict: bool | None = Field(default=None, description="Calls follow the schema here either way.")
    defer_loading: bool | None = Field(default=None, description="Only false.")
    allowed_callers: list[str] | None = Field(default=None, description='Only ["direct"].')
    eager_input_streaming: bool | None = Field(default=None, description="Only false.")
    input_examples: list[dict[str, Any]] | None = Field(default=None, description="Only empty.")

    def refusal(self) -> tuple[str, str] | None:
        """The field that cannot be honoured, and why."""
        if self.defer_loading:
            return "defer_loading", "deferred tools (tool search) are not supported"
        if self.allowed_callers not in (None, ["direct"]):
            return "allowed_callers", "only direct calls are supported"
        if self.eager_input_streaming:
            return "eager_input_streaming", "not supported: arguments stream as the runner checks them"
        if self.input_examples:
            return "input_examples", "input examples are not supported"
        return None


class ToolChoiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class JsonFormatIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: JsonFormatIn | None = Field(default=None, description="The answer's text follows this schema.")
    effort: str | None = Field(default=None, description="Refused: a model thinks as its template says.")


class MetadataIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, max_length=256, description="A label: changes nothing.")


class PromptIn(StrictBoolsModel):
    """What both routes read: the conversation, its tools and the shape of the answer."""

    model_config = ConfigDict(extra="allow")  # other fields are refused by name (unsupported_fields)

    model: str = Field(description="The model id, '<folder>/<file>'.")
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlockIn] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    output_config: OutputConfigIn | None = None
    cache_control: CacheControlIn | None = None
    speed: Literal["standard"] | None = None


class MessagesIn(PromptIn):
    max_tokens: int = Field(ge=1, le=1_048_576, description="Required, as Anthropic requires it.")
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    metadata: MetadataIn | None = None
    service_tier: Literal["auto", "standard_only"] | None = Field(
        default=None, description="Both are the one tier here."
    )


class CountTokensIn(PromptIn):
    pass


# Fields Anthropic defines that are not honoured here, with why; anything else unknown is refused too.
_REFUSED = {
    "thinking": "thinking cannot be switched on, off or given a budget here: a model thinks as its chat "
    "template says, and its thinking comes back as thinking blocks",
    "container": "containers (code execution) are not supported",
    "mcp_servers": "MCP servers are not supported",
    "context_management": "context management is not supported",
    "diagnostics": "diagnostics are not supported",
    "inference_geo": "inference_geo cannot be honoured: the model runs where this gateway's runner is",
    "user_profile_id": "user profiles are not supported",
    "workspace_id": "workspaces are not supported",
    "output_format": "send output_config.format",
}


def unsupported_fields(body: PromptIn) -> None:
    """Raises Unsupported for the first top-level field that would not be honoured."""
    for name in body.model_extra or {}:
        raise refuse(name, _REFUSED.get(name, "unknown field"))


def _parse(model: type[M], data: dict[str, Any], where: str) -> M:
    """`data` as `model`, or a 400 naming the first wrong field under `where`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join([where, *(str(p) for p in first["loc"])])
        raise refuse(path, first["msg"]) from None


def _texts(blocks: Sequence[dict[str, Any]], where: str) -> str:
    """The text of text blocks (anything else refused)."""
    parts = []
    for i, block in enumerate(blocks):
        if block.get("type") != "text":
            raise refuse(
                f"{where}.{i}.type", f"blocks of type {block.get('type')!r} are not supported: only text"
            )
        parts.append(_text_block(block, f"{where}.{i}").text)
    return BLOCK_JOIN.join(parts)


def _text_block(data: dict[str, Any], where: str) -> TextBlockIn:
    block = _parse(TextBlockIn, data, where)
    if block.citations:
        raise refuse(f"{where}.citations", "citations are not supported")
    return block


def system_text(system: str | list[TextBlockIn] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return _texts([b.model_dump(exclude_none=True) for b in system], "system")


class _Chat:
    """The runner's messages of a conversation, built in order: consecutive user turns and consecutive
    assistant turns merge into one (as Anthropic combines them), tool results become tool messages. Each
    message's content is kept as pieces (text, images) until `messages()` sets it."""

    def __init__(self) -> None:
        self.turns: list[tuple[runner_pb.ChatMessage, list[Piece]]] = []
        self.calls: dict[str, str] = {}  # tool_use id -> the tool's name

    def append(self, message: runner_pb.ChatMessage, pieces: list[Piece]) -> None:
        self.turns.append((message, pieces))

    def add(self, message: runner_pb.ChatMessage, pieces: list[Piece]) -> None:
        last = self.turns[-1] if self.turns else None
        if last is not None and last[0].role == message.role and message.role in ("user", "assistant"):
            last[0].tool_calls.extend(message.tool_calls)
            self.turns[-1] = (last[0], _joined(last[1], pieces))
        else:
            self.append(message, pieces)

    def messages(self) -> tuple[list[runner_pb.ChatMessage], list[ImageRef]]:
        """The messages with their content set, and the images their image parts wait for, in order."""
        images: list[ImageRef] = []
        return [set_content(message, pieces, images) for message, pieces in self.turns], images

    def user(self, blocks: list[BlockIn], where: str) -> None:
        pieces: list[Piece] = []
        for j, block in enumerate(blocks):
            data, at = block.model_dump(), f"{where}.content.{j}"
            if block.type == "text":
                pieces = _joined(pieces, [_text_block(data, at).text], always=True)
            elif block.type == "image":
                pieces.append(_image(_parse(ImageBlockIn, data, at), at))
            elif block.type == "tool_result":
                if pieces:
                    self.add(runner_pb.ChatMessage(role="user"), pieces)
                    pieces = []
                self.append(*self._tool_result(_parse(ToolResultBlockIn, data, at), at))
            else:
                raise refuse(f"{at}.type", _block_refusal(block.type, "user"))
        if pieces or not blocks:
            self.add(runner_pb.ChatMessage(role="user"), pieces or [""])

    def _tool_result(
        self, result: ToolResultBlockIn, where: str
    ) -> tuple[runner_pb.ChatMessage, list[Piece]]:
        name = self.calls.get(result.tool_use_id)
        if name is None:
            raise refuse(f"{where}.tool_use_id", "no earlier tool_use block has this id")
        if isinstance(result.content, str):
            text = result.content
        else:
            text = _texts(result.content, f"{where}.content")
        if result.is_error:
            text = TOOL_ERROR_PREFIX + text
        return runner_pb.ChatMessage(role="tool", tool_call_id=result.tool_use_id, name=name), [text]

    def assistant(self, blocks: list[BlockIn], where: str) -> None:
        out = runner_pb.ChatMessage(role="assistant")
        texts = []
        for j, block in enumerate(blocks):
            data, at = block.model_dump(), f"{where}.content.{j}"
            if block.type == "text":
                texts.append(_text_block(data, at).text)
            elif block.type == "tool_use":
                call = _parse(ToolUseBlockIn, data, at)
                if call.caller not in (None, {"type": "direct"}):
                    raise refuse(f"{at}.caller", "only direct calls are supported")
                self.calls[call.id] = call.name
                arguments = orjson.dumps(call.input).decode()
                out.tool_calls.append(runner_pb.ToolCall(id=call.id, name=call.name, arguments=arguments))
            elif block.type == "thinking":
                _parse(ThinkingBlockIn, data, at)  # earlier thinking is not shown to the model
            elif block.type == "redacted_thinking":
                _parse(RedactedThinkingBlockIn, data, at)
            else:
                raise refuse(f"{at}.type", _block_refusal(block.type, "assistant"))
        self.add(out, [BLOCK_JOIN.join(texts)])


def _joined(first: list[Piece], then: list[Piece], *, always: bool = False) -> list[Piece]:
    """`first` followed by `then`, the text where they meet joined by a blank line: between the blocks
    of one message (`always`), or between two turns' texts when both have some."""
    if first and then and isinstance(first[-1], str) and isinstance(then[0], str):
        a, b = first[-1], then[0]
        return [*first[:-1], BLOCK_JOIN.join((a, b) if always else [t for t in (a, b) if t]), *then[1:]]
    return [*first, *then]


def _image(block: ImageBlockIn, where: str) -> ImageRef:
    """An image block's source as a reference gateway/images.py reads; a stored file is refused."""
    source = block.source
    at = f"{where}.source"
    kind = source.get("type")
    if kind == "base64":
        given = _parse(Base64SourceIn, source, at)
        return ImageRef(param=f"{at}.data", base64=given.data, media_type=given.media_type)
    if kind == "url":
        return ImageRef(param=f"{at}.url", url=_parse(UrlSourceIn, source, at).url)
    if kind == "file":
        raise refuse(
            f"{at}.type", "file sources are not supported: files are not stored here (send base64 or url)"
        )
    raise refuse(f"{at}.type", f"image sources of type {kind!r} are not supported: only base64 and url")


def _block_refusal(kind: str, role: str) -> str:
    allowed = "text, image, tool_result" if role == "user" else "text, tool_use, thinking, redacted_thinking"
    return f"content blocks of type {kind!r} are not supported in {role} messages: only {allowed}"


def chat_messages(body: PromptIn) -> tuple[list[runner_pb.ChatMessage], list[ImageRef]]:
    """The conversation as the runner's chat messages (the system prompt first), and the images their
    image parts wait for."""
    chat = _Chat()
    system = system_text(body.system)
    if system:
        chat.append(runner_pb.ChatMessage(role="system"), [system])
    for i, m in enumerate(body.messages):
        where = f"messages.{i}"
        blocks = (
            [BlockIn.model_validate({"type": "text", "text": m.content})]
            if isinstance(m.content, str)
            else m.content
        )
        if m.role == "system":
            text = _texts([b.model_dump() for b in blocks], f"{where}.content")
            chat.append(runner_pb.ChatMessage(role="system"), [text])
        elif m.role == "user":
            chat.user(blocks, where)
        else:
            chat.assistant(blocks, where)
    if body.messages[-1].role == "assistant":
        raise refuse(
            f"messages.{len(body.messages) - 1}.role",
            "a last assistant message (prefill) is not supported: the model always starts a new turn",
        )
    return chat.messages()


def tools_of(body: PromptIn) -> tuple[list[runner_pb.Tool], runner_pb.ToolChoice | None, bool | None]:
    """The runner's tools, tool choice and parallel_tool_calls (None: unset)."""
    tools = []
    for i, tool in enumerate(body.tools or []):
        if tool.type not in (None, "custom"):
            raise refuse(
                f"tools.{i}.type", f"server tools ({tool.type!r}) are not supported: only client tools"
            )
        spec = _parse(CustomToolIn, tool.model_dump(exclude_none=True), f"tools.{i}")
        if (refused := spec.refusal()) is not None:
            raise refuse(f"tools.{i}.{refused[0]}", refused[1])
        if spec.input_schema.get("type") != "object":
            raise refuse(f"tools.{i}.input_schema.type", "the input schema must be of type 'object'")
        params = orjson.dumps(spec.input_schema).decode()
        tools.append(
            runner_pb.Tool(name=spec.name, description=spec.description or "", parameters_json=params)
        )
    choice = body.tool_choice
    if choice is None:
        return tools, None, None
    if choice.type != "tool" and choice.name is not None:
        raise refuse("tool_choice.name", "a name is given only with type 'tool'")
    if choice.type == "none" and choice.disable_parallel_tool_use is not None:
        raise refuse("tool_choice.disable_parallel_tool_use", "not with type 'none'")
    if choice.type in ("any", "tool") and not tools:
        raise refuse("tool_choice.type", f"tool_choice {choice.type!r} needs tools")
    parallel = None if choice.disable_parallel_tool_use is None else not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if choice.name not in {t.name for t in tools}:
            raise refuse("tool_choice.name", f"{choice.name!r} is not among the tools")
        return (
            tools,
            runner_pb.ToolChoice(mode=runner_pb.TOOL_CHOICE_MODE_FUNCTION, name=choice.name),
            parallel,
        )
    modes = {
        "auto": runner_pb.TOOL_CHOICE_MODE_AUTO,
        "any": runner_pb.TOOL_CHOICE_MODE_REQUIRED,
        "none": runner_pb.TOOL_CHOICE_MODE_NONE,
    }
    return tools, runner_pb.ToolChoice(mode=modes[choice.type]), parallel


def _constraint(output: OutputConfigIn | None) -> runner_pb.Constraint | None:
    if output is not None and output.effort is not None:
        raise refuse("output_config.effort", _REFUSED["thinking"])
    if output is None or output.format is None:
        return None
    return runner_pb.Constraint(json_schema=orjson.dumps(output.format.json_schema).decode())


def _sampling(body: MessagesIn) -> runner_pb.Sampling:
    s = runner_pb.Sampling(max_tokens=body.max_tokens)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(body, name)
        if value is not None:
            setattr(s, name, value)
    for i, stop in enumerate(body.stop_sequences or []):
        if not stop:
            raise refuse(f"stop_sequences.{i}", "a stop sequence must not be empty")
        s.stop.append(stop)
    return s


def generate_request(body: MessagesIn) -> tuple[runner_pb.GenerateRequest, list[ImageRef]]:
    """The runner's request for a message, and the images its image parts wait for (read by
    gateway/images.py); Unsupported for what cannot be honoured."""
    unsupported_fields(body)
    messages, images = chat_messages(body)
    request = runner_pb.GenerateRequest(
        model_id=body.model,
        chat=runner_pb.ChatMessages(messages=messages),
        sampling=_sampling(body),
        n=1,
        reasoning=runner_pb.REASONING_MODE_SEPARATE,
    )
    _offer(request, body)
    return request, images


def tokenize_request(body: CountTokensIn) -> runner_pb.TokenizeRequest:
    """The runner's request for the prompt's tokens, rendered as a generation renders it: the tool
    definitions included, as they are offered."""
    unsupported_fields(body)
    messages, images = chat_messages(body)
    refuse_images(images)
    request = runner_pb.TokenizeRequest(model_id=body.model, chat=runner_pb.ChatMessages(messages=messages))
    _offer(request, body)
    return request


def _offer(request: runner_pb.GenerateRequest | runner_pb.TokenizeRequest, body: PromptIn) -> None:
    """Sets the tools, how they are offered and the answer's format on either request: with tools, the
    format changes how the runner writes them into the prompt, so a count needs it too."""
    tools, choice, parallel = tools_of(body)
    request.tools.extend(tools)
    if choice is not None:
        request.tool_choice.CopyFrom(choice)
    if parallel is not None:
        request.parallel_tool_calls = parallel
    constraint = _constraint(body.output_config)
    if constraint is not None:
        request.constraint.CopyFrom(constraint)


# --- responses --------------------------------------------------------------------------------------------


class TextBlockOut(BaseModel):
    type: Literal["text"]
    text: str
    citations: None = None


class ThinkingBlockOut(BaseModel):
    type: Literal["thinking"]
    thinking: str
    signature: str = Field(description="Always empty: the thinking is not signed here.")


class ToolUseBlockOut(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class UsageOut(BaseModel):
    input_tokens: int = Field(description="Prompt tokens computed (not read from the cache).")
    output_tokens: int
    cache_read_input_tokens: int = Field(description="Prompt tokens read from the prefix cache.")
    cache_creation_input_tokens: int = Field(description="Always 0: the prefix cache has no separate write.")
    service_tier: Literal["standard"] = "standard"


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"]


class MessageOut(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlockOut | ThinkingBlockOut | ToolUseBlockOut]
    stop_reason: StopReason
    stop_sequence: str | None = Field(
        default=None, description="The stop sequence that ended the answer (stop_reason `stop_sequence`)."
    )
    usage: UsageOut


class CountTokensOut(BaseModel):
    input_tokens: int


class ErrorDetailOut(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetailOut


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of Anthropic's routes: their errors in Anthropic's shape."""
    return {status: {"model": ErrorOut, "description": "error"} for status in statuses}


def usage_of(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
        "service_tier": "standard",
    }


def stop_reason(
    finish: runner_pb.FinishReason.ValueType, output_tokens: int, max_tokens: int, stop_sequence: str
) -> str:
    """Anthropic's stop_reason of the runner's finish and the stop string that ended the answer, if one
    did (the runner reports the request's stop_sequences, or the model object's `stop` when it gives none)."""
    if finish == runner_pb.FINISH_REASON_TOOL_CALLS:
        return "tool_use"
    if finish == runner_pb.FINISH_REASON_LENGTH:
        # Cut before max_tokens: the context was full.
        return "max_tokens" if output_tokens >= max_tokens else "model_context_window_exceeded"
    return "stop_sequence" if stop_sequence else "end_turn"


def _ended_by(reason: str, stop_sequence: str) -> str | None:
    """The `stop_sequence` field: set only with stop_reason `stop_sequence`."""
    return stop_sequence if reason == "stop_sequence" else None


def _input(arguments: str) -> dict[str, Any] | None:
    """A call's arguments as an object, or None when they are not one (an answer cut by max_tokens)."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def message(mid: str, model: str, gathered: Gathered, max_tokens: int) -> dict[str, Any]:
    """The Message of a whole answer: its thinking, its text and its tool calls, in that order. A call
    whose arguments were cut by max_tokens is left out (it cannot be run; stop_reason says why)."""
    choice = gathered.first
    content: list[dict[str, Any]] = []
    if choice.thinking:
        content.append({"type": "thinking", "thinking": choice.thinking, "signature": ""})
    if choice.content:
        content.append({"type": "text", "text": choice.content, "citations": None})
    for call in choice.tool_calls:
        arguments = _input(call.arguments)
        if arguments is not None:
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
        elif choice.finish_reason != runner_pb.FINISH_REASON_LENGTH:
            raise APIError(
                502,
                f"the model called {call.name} with arguments that are not a JSON object",
                code="bad_call",
            )
    stop_sequence = choice.stop_sequence
    reason = stop_reason(choice.finish_reason, gathered.usage.completion_tokens, max_tokens, stop_sequence)
    return {
        **_envelope(mid, model, content, reason, _ended_by(reason, stop_sequence)),
        "usage": usage_of(gathered.usage),
    }


def _envelope(
    mid: str, model: str, content: list[dict[str, Any]], reason: str | None, stop_sequence: str | None
) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop_sequence,
    }


# The runner names the fields of its own request in errors; these are what Anthropic's request calls them.
_FIELDS = {"response_format": "output_config.format.schema", "tools": "tools", "tool_choice": "tool_choice"}


def in_our_terms(err: APIError) -> APIError:
    """A runner's refusal of a request field, named as Anthropic's request names it (at the start of the
    message: Anthropic's error body has no `param`)."""
    field = _FIELDS.get(err.param or "", err.param)
    if err.status != 400 or not field or err.message.startswith(f"{field}:"):
        return err
    return APIError(err.status, f"{field}: {err.message}", code=err.code, param=field)


def tokens_count(reply: runner_pb.TokenizeResponse) -> dict[str, Any]:
    return {"input_tokens": len(reply.tokens)}


Event = tuple[str, dict[str, Any]]


class MessageStream:
    """The named events of a streamed Message, from the runner's messages: `message_start`, then for each
    block (thinking, text, each tool call, in the order they come) `content_block_start`, its deltas and
    `content_block_stop`, then `message_delta` (stop_reason and the usage: input tokens are only known at
    the end) and `message_stop`. Pure: the route writes the events out."""

    def __init__(self, mid: str, model: str, max_tokens: int) -> None:
        self.mid = mid
        self.model = model
        self.max_tokens = max_tokens
        self.usage = Usage()
        self.finished = False
        self._open: str | None = None  # the kind of the open block: thinking, text or a tool call's index
        self._blocks = 0
        self._calls: dict[int, int] = {}  # a tool call's index -> its block's

    def start(self) -> list[Event]:
        message = _envelope(self.mid, self.model, [], None, None)
        usage = {"input_tokens": 0, "output_tokens": 0}
        return [("message_start", {"type": "message_start", "message": {**message, "usage": usage}})]

    def add(self, reply: runner_pb.GenerateResponse) -> list[Event]:
        events: list[Event] = []
        if reply.reasoning:
            events += self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events.append(self._delta({"type": "thinking_delta", "thinking": reply.reasoning}))
        if reply.text:
            events += self._block("text", {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": reply.text}))
        for d in reply.tool_calls:
            if d.id:  # a call's first piece: its id and name
                block = {"type": "tool_use", "id": d.id, "name": d.name, "input": {}}
                events += self._block(f"tool_use {d.index}", block)
                self._calls[d.index] = self._blocks
            if d.arguments:
                delta = {"type": "input_json_delta", "partial_json": d.arguments}
                events.append(self._delta(delta, self._calls.get(d.index, self._blocks)))
        self.usage.count(reply)
        if reply.finish_reason:
            events += self._finish(reply.finish_reason, reply.stop_sequence)
        return events

    def _block(self, kind: str, block: dict[str, Any]) -> list[Event]:
        if self._open == kind:
            return []
        events = self._close()
        self._open = kind
        start = {"type": "content_block_start", "index": self._blocks, "content_block": block}
        return [*events, ("content_block_start", start)]

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> Event:
        index = self._blocks if index is None else index
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        self._blocks += 1
        return [("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})]

    def _finish(self, finish: runner_pb.FinishReason.ValueType, stop_sequence: str) -> list[Event]:
        self.finished = True
        reason = stop_reason(finish, self.usage.completion_tokens, self.max_tokens, stop_sequence)
        usage = {k: v for k, v in usage_of(self.usage).items() if k != "service_tier"}
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": _ended_by(reason, stop_sequence)},
            "usage": usage,
        }
        return [*self._close(), ("message_delta", delta), ("message_stop", {"type": "message_stop"})]
