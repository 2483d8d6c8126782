"""OpenAI tool calling for engines that generate text: how the tools reach the prompt, which grammar forces
a call, and how the generated text turns back into content and tool calls.

Three families of models have a format of their own, written by their chat template and parsed here
(`hermes`: `<tool_call>{"name", "arguments"}</tool_call>`, as Qwen 2.5/3 and Hermes 2 Pro; `llama3`: a bare
`{"name", "parameters"}` object, as Llama 3.1-3.3; `mistral`: `[TOOL_CALLS][{"name", "arguments"}]`). Every
other model gets llama-server's generic format: the tools are described in a system message and the answer
is JSON constrained to `{"tool_calls": [...]}` or `{"response": "..."}`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from services.common.chat_template import takes_tools
from services.common.errors import InvalidArgument
from services.runner.engines.base import GenerateRequest, Tool, ToolCallDelta, ToolChoice
from services.runner.engines.prompt import partial_stop

ToolFormat = Literal["generic", "hermes", "llama3", "mistral"]
# What the parser returns: content text, or a piece of a tool call.
ToolEvent = str | ToolCallDelta

# OpenAI's rule for function names.
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# llama-cpp-python's named formats that drop system messages (format_gemma, format_mistral_instruct):
# the generic format's instructions must then go into the first user message.
NAMED_FORMATS_WITHOUT_SYSTEM = frozenset({"gemma", "mistral-instruct"})

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"
_WS = " \t\r\n"
# A tool that takes no arguments (OpenAI: "omitting parameters defines a function with an empty list").
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


# --- formats and validation ---------------------------------------------------------------------------------


def detect_format(chat_template: str | None) -> ToolFormat:
    """The tool format of the Jinja chat template the prompt is rendered with (None for named formats and
    the model object's prompt fields). The checks follow llama-server's choice of handler; a template that
    does not take `tools` gets the generic format even if it can write calls, since the model would never
    see the tools' definitions."""
    if not takes_tools(chat_template):
        return "generic"
    assert chat_template is not None
    if HERMES_OPEN in chat_template:
        return "hermes"
    if "<|start_header_id|>" in chat_template and "ipython" in chat_template:
        return "llama3"
    if MISTRAL_CALLS in chat_template:
        return "mistral"
    return "generic"


def validate_tools(tools: Sequence[Tool], tool_choice: ToolChoice) -> None:
    """Raises InvalidArgument for a bad tool definition (param "tools") and for a tool_choice the tools
    cannot satisfy (param "tool_choice"; code "unknown_tool" when it names a function not among them)."""
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not TOOL_NAME.fullmatch(tool.name):
            raise InvalidArgument(
                f"tools[{i}].function.name must be 1 to 64 letters, digits, underscores or dashes, "
                f"got {tool.name!r}",
                param="tools",
            )
        if tool.name in names:
            raise InvalidArgument(f"tools[{i}]: the function {tool.name!r} is defined twice", param="tools")
        names.add(tool.name)
        params = tool.parameters
        if not isinstance(params, dict) or (params and params.get("type") != "object"):
            raise InvalidArgument(
                f'tools[{i}].function.parameters must be a JSON schema of "type": "object"', param="tools"
            )
    if tool_choice.mode in ("required", "function") and not tools:
        raise InvalidArgument(f"tool_choice {tool_choice.mode!r} needs tools", param="tool_choice")
    if tool_choice.mode == "function" and tool_choice.name not in names:
        raise InvalidArgument(
            f"tool_choice names the function {tool_choice.name!r}, which is not among the tools",
            code="unknown_tool",
            param="tool_choice",
        )


def tools_for_template(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The tools as a chat template's `tools` variable expects them (OpenAI's request shape)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                "parameters": t.parameters or _NO_PARAMETERS,
            },
        }
        for t in tools
    ]


# --- messages -----------------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    """A message's content as text: OpenAI also allows a list of text parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _arguments_value(arguments: Any) -> Any:
    """OpenAI sends arguments as JSON text; templates and the generic format want the object."""
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return arguments  # what the client sent, rather than nothing


def _mistral_id(call_id: str) -> str:
    """Mistral's template refuses ids other than 9 letters or digits; the same id always maps the same way,
    so a call and its result still match."""
    if re.fullmatch(r"[a-zA-Z0-9]{9}", call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def template_messages(messages: Sequence[dict[str, Any]], fmt: ToolFormat) -> list[dict[str, Any]]:
    """Messages ready for a native format's own template: call arguments as objects (Qwen, Llama and
    Mistral write `arguments | tojson`, which would quote OpenAI's JSON string), content never None (Jinja
    prints "None"), no empty `tool_calls` key (Llama tests `'tool_calls' in message`), one call per assistant
    message for Llama 3 (its template refuses more) and 9-character call ids for Mistral."""
    out: list[dict[str, Any]] = []
    for message in messages:
        m = dict(message)
        calls = m.pop("tool_calls", None) or []
        if m.get("content") is None:
            m["content"] = ""
        if fmt == "mistral" and m.get("role") == "tool":
            m["tool_call_id"] = _mistral_id(str(m.get("tool_call_id") or ""))
        if not calls:
            out.append(m)
            continue
        prepared = []
        for call in calls:
            function = call.get("function") or {}
            call_id = str(call.get("id") or "")
            prepared.append(
                {
                    "id": _mistral_id(call_id) if fmt == "mistral" else call_id,
                    "type": "function",
                    "function": {
                        "name": function.get("name", ""),
                        "arguments": _arguments_value(function.get("arguments")),
                    },
                }
            )
        if fmt == "llama3":
            out.extend({**m, "tool_calls": [call]} for call in prepared)
        else:
            out.append({**m, "tool_calls": prepared})
    return out


def generic_instructions(tools: Sequence[Tool], tool_choice: ToolChoice, parallel_tool_calls: bool) -> str:
    """The system text that describes the tools and the JSON answer the generic format's grammar allows."""
    listed = json.dumps(tools_for_template(tools), ensure_ascii=False, indent=2)
    call = '{"name": "<tool name>", "arguments": {<arguments>}}'
    calls = f'{{"tool_calls": [{call}]}}' if not parallel_tool_calls else f'{{"tool_calls": [{call}, ...]}}'
    if tool_choice.mode == "auto":
        answer = (
            f"Respond with JSON only: to call tools, {calls}; "
            'to answer the user directly, {"response": "<your answer>"}.'
        )
    elif tool_choice.mode == "function":
        answer = f"Respond with JSON only, calling the tool {tool_choice.name!r}: {calls}."
    else:
        which = "one or more of the tools" if parallel_tool_calls else "one of the tools"
        answer = f"Respond with JSON only, calling {which}: {calls}."
    return f"You can call the following tools to satisfy the user's request:\n{listed}\n\n{answer}"


def generic_messages(
    messages: Sequence[dict[str, Any]], instructions: str = "", *, system_role: bool = True
) -> list[dict[str, Any]]:
    """Messages any template or named format can render: an assistant's calls become the JSON the generic
    format would have produced (its content is dropped: that schema cannot hold both), tool results become
    user messages `Tool result (name, id): ...` merged with the user messages next to them (so templates that
    insist on alternating roles still render), and `instructions` is merged into the first system message
    (or, with `system_role` False, the first user message)."""
    names = {
        str(call.get("id")): (call.get("function") or {}).get("name", "")
        for m in messages
        for call in (m.get("tool_calls") or [])
    }
    out: list[dict[str, Any]] = []
    merge_next = False  # the last message came from a tool: a user message after it joins it
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                {
                    "name": (c.get("function") or {}).get("name", ""),
                    "arguments": _arguments_value((c.get("function") or {}).get("arguments")),
                }
                for c in message["tool_calls"]
            ]
            out.append(
                {"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)}
            )
            merge_next = False
        elif role == "tool" or (role == "user" and merge_next):
            if role == "tool":
                call_id = str(message.get("tool_call_id") or "")
                name = message.get("name") or names.get(call_id, "")
                text = f"Tool result ({name}, {call_id}): {_text(message.get('content'))}"
            else:
                text = _text(message.get("content"))
            if out and out[-1]["role"] == "user" and (merge_next or role == "tool"):
                out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{text}"}
            else:
                out.append({"role": "user", "content": text})
            merge_next = True
        else:
            out.append({**message, "content": message.get("content") or ""})
            merge_next = False
    if instructions:
        out = _add_instructions(out, instructions, "system" if system_role else "user")
    return out


def _add_instructions(messages: list[dict[str, Any]], text: str, role: str) -> list[dict[str, Any]]:
    """As minja's add_system: merged into the first message of `role` when it opens the chat (system) or
    anywhere (user), else a new message in front."""
    for i, m in enumerate(messages):
        if m["role"] == role and (role == "user" or i == 0):
            merged = f"{m['content']}\n\n{text}" if role == "system" else f"{text}\n\n{m['content']}"
            return [*messages[:i], {**m, "content": merged}, *messages[i + 1 :]]
    return [{"role": role, "content": text}, *messages]


# --- grammar ------------------------------------------------------------------------------------------------


def call_schema(tools: Sequence[Tool], tool_choice: ToolChoice, *, key: str = "arguments") -> dict[str, Any]:
    """The JSON schema of one call `{"name": <a tool's name>, key: <its parameters>}` (only the named tool
    for a function choice). Property order is the order a JSON-schema grammar writes them, name first, so
    the parser can announce a call before its arguments."""
    chosen = [t for t in tools if tool_choice.mode != "function" or t.name == tool_choice.name]
    alternatives = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "const": t.name}, key: t.parameters or _NO_PARAMETERS},
            "required": ["name", key],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


def generic_schema(
    tools: Sequence[Tool],
    tool_choice: ToolChoice,
    parallel_tool_calls: bool,
    response_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole answer of the generic format: `{"tool_calls": [call, ...]}` (at least one; at most one
    without parallel calls), or for auto also `{"response": <text, or response_schema>}`."""
    calls: dict[str, Any] = {"type": "array", "items": call_schema(tools, tool_choice), "minItems": 1}
    if not parallel_tool_calls:
        calls["maxItems"] = 1
    tool_calls = {
        "type": "object",
        "properties": {"tool_calls": calls},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if tool_choice.mode != "auto":
        return tool_calls
    response = {
        "type": "object",
        "properties": {"response": response_schema or {"type": "string"}},
        "required": ["response"],
        "additionalProperties": False,
    }
    return {"anyOf": [tool_calls, response]}


@dataclass(frozen=True)
class ToolGrammar:
    """What the output must be: `prefix`, a JSON value of `schema`, then (if `multiple`) any number of
    `separator` + another value, then `suffix`. For the generic format the schema is the whole answer."""

    schema: dict[str, Any]
    prefix: str = ""
    separator: str = ""
    suffix: str = ""
    multiple: bool = False

    def gbnf(self, schema_gbnf: str) -> str:
        """The grammar of the whole output, given the GBNF of `schema` (root rule `root`)."""
        if not (self.prefix or self.suffix or self.multiple):
            return schema_gbnf
        rule = "tool-call"
        while re.search(rf"(?m)^\s*{re.escape(rule)}\s*::=", schema_gbnf):
            rule += "-x"
        parts = [gbnf_literal(self.prefix)] if self.prefix else []
        parts.append(rule)
        if self.multiple:
            parts.append(f"( {gbnf_literal(self.separator)} {rule} )*" if self.separator else f"{rule}*")
        if self.suffix:
            parts.append(gbnf_literal(self.suffix))
        return f"{rename_gbnf_rule(schema_gbnf, 'root', rule).rstrip()}\nroot ::= {' '.join(parts)}\n"


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def rename_gbnf_rule(grammar: str, old: str, new: str) -> str:
    """Renames a rule, its definition and every reference, leaving string literals, character classes
    and comments alone."""
    out: list[str] = []
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < n and grammar[j] != close:
                j += 2 if grammar[j] == "\\" else 1
            out.append(grammar[i : j + 1])
            i = j + 1
        elif c == "#":
            j = grammar.find("\n", i)
            j = n if j < 0 else j
            out.append(grammar[i:j])
            i = j
        elif c.isalnum() or c in "-_":
            j = i
            while j < n and (grammar[j].isalnum() or grammar[j] in "-_"):
                j += 1
            out.append(new if grammar[i:j] == old else grammar[i:j])
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def tool_grammar(
    fmt: ToolFormat,
    tools: Sequence[Tool],
    tool_choice: ToolChoice,
    parallel_tool_calls: bool,
    response_schema: dict[str, Any] | None = None,
) -> ToolGrammar | None:
    """The constraint of the output, or None when it is free (choice none; auto with a native format,
    where the model decides and the parser reads what it wrote)."""
    if tool_choice.mode == "none" or not tools:
        return None
    if fmt == "generic":
        return ToolGrammar(generic_schema(tools, tool_choice, parallel_tool_calls, response_schema))
    if tool_choice.mode == "auto":
        return None
    if fmt == "hermes":
        return ToolGrammar(
            call_schema(tools, tool_choice),
            prefix=HERMES_OPEN + "\n",
            separator=f"\n{HERMES_CLOSE}\n{HERMES_OPEN}\n",
            suffix="\n" + HERMES_CLOSE,
            multiple=parallel_tool_calls,
        )
    if fmt == "mistral":
        return ToolGrammar(
            call_schema(tools, tool_choice),
            prefix=MISTRAL_CALLS + "[",
            separator=", ",
            suffix="]",
            multiple=parallel_tool_calls,
        )
    # Llama 3.x writes one call a turn (its template refuses several; llama-server turns parallel off).
    return ToolGrammar(call_schema(tools, tool_choice, key="parameters"))


# --- the whole plan -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """How to render and constrain one chat request with tools."""

    # The format in effect (generic where the template's own cannot serve, e.g. with a response_format).
    format: ToolFormat
    # The messages to render.
    messages: list[dict[str, Any]]
    # The Jinja template's `tools` variable (None: render without tools).
    tools: list[dict[str, Any]] | None
    # More variables for the Jinja template.
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # When set, the whole constraint of the output: it replaces request.constraint (and includes its schema).
    grammar: ToolGrammar | None = None
    # Whether to read the output with ToolCallParser(format).
    parse: bool = False


def plan_tools(request: GenerateRequest, fmt: ToolFormat, *, system_role: bool = True) -> ToolPlan:
    """Validates the request's tools and decides how to render and constrain it. `fmt` is
    detect_format() of the template the prompt is rendered with; `system_role` is False for renderers that
    drop system messages (NAMED_FORMATS_WITHOUT_SYSTEM). Call it for every chat request: a conversation may
    carry earlier calls even without tools. tool_choice "none" renders no tools (a model shown its tools may
    call one anyway) and reads the output as plain content."""
    validate_tools(request.tools, request.tool_choice)
    if request.messages is None:
        if request.tools:
            raise InvalidArgument("tools need chat messages, not a prompt", param="tools")
        return ToolPlan(format=fmt, messages=[], tools=None)
    choice = request.tool_choice
    active = bool(request.tools) and choice.mode != "none"
    constraint = request.constraint
    response_schema = None
    if active and constraint is not None:
        if constraint.kind == "grammar":
            raise InvalidArgument("a grammar cannot be combined with tools", param="grammar")
        # Only the generic format can hold a structured answer next to calls (as llama-server).
        fmt = "generic"
        response_schema = constraint.schema if constraint.kind == "json_schema" else {"type": "object"}
    if fmt == "generic":
        instructions = (
            generic_instructions(request.tools, choice, request.parallel_tool_calls) if active else ""
        )
        messages = generic_messages(request.messages, instructions, system_role=system_role)
        grammar = tool_grammar(fmt, request.tools, choice, request.parallel_tool_calls, response_schema)
        return ToolPlan(format=fmt, messages=messages, tools=None, grammar=grammar, parse=active)
    return ToolPlan(
        format=fmt,
        messages=template_messages(request.messages, fmt),
        tools=tools_for_template(request.tools) if active else None,
        # As llama-server: the tools in the system message, not folded into the first user message.
        template_kwargs={"tools_in_user_message": False} if fmt == "llama3" and active else {},
        grammar=tool_grammar(fmt, request.tools, choice, request.parallel_tool_calls) if active else None,
        parse=active,
    )


# --- reading the output -------------------------------------------------------------------------------------


class _Need(Exception):
    """More text is needed to decide."""


class _NoMatch(Exception):
    """The text is not what was expected."""


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _expect(text: str, i: int, literal: str) -> int:
    """Whitespace, then `literal`: the index after it."""
    i = _skip_ws(text, i)
    got = text[i : i + len(literal)]
    if got == literal:
        return i + len(literal)
    if len(got) < len(literal) and literal.startswith(got):
        raise _Need
    raise _NoMatch


def _json_string(text: str, i: int) -> tuple[str, int]:
    """Whitespace, then a complete JSON string: its value and the index after it."""
    i = _skip_ws(text, i)
    if i >= len(text):
        raise _Need
    if text[i] != '"':
        raise _NoMatch
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == '"':
            try:
                return json.loads(text[i : j + 1]), j + 1
            except ValueError:
                raise _NoMatch from None
        else:
            j += 1
    raise _Need


def _call_header(text: str, i: int) -> tuple[str, int]:
    """`{"name": "f", "arguments": ` (or "parameters"; a leading "type" or "id" is skipped): the name and
    the index where the arguments' value starts. A call whose arguments come before its name cannot be
    streamed (_NoMatch: the caller reads it whole)."""
    i = _expect(text, i, "{")
    name: str | None = None
    while True:
        key, i = _json_string(text, i)
        i = _expect(text, i, ":")
        if key == "name" and name is None:
            name, i = _json_string(text, i)
        elif key in ("arguments", "parameters") and name is not None:
            return name, i
        elif key in ("type", "id"):
            _, i = _json_string(text, i)
        else:
            raise _NoMatch
        i = _expect(text, i, ",")


def _whole_call(text: str) -> tuple[str, str] | None:
    """A complete call object in any key order: (name, arguments JSON text), or None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    return value["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


_SCALAR = frozenset("0123456789+-.eEtrufalsn")  # numbers, true, false, null


class _JsonValue:
    """Where one JSON value ends in text arriving in pieces, without parsing it. It notices text that cannot
    be JSON (a bare word, a bracket that closes the wrong thing), so a broken call ends there instead of
    swallowing the rest of the output."""

    def __init__(self, inside: str = "") -> None:
        self.stack = list(inside)  # the closing brackets awaited
        self.in_string = self.escape = self.scalar = False
        self.done = self.broken = False

    def feed(self, text: str) -> int:
        """How many characters of `text` belong to the value; `done` or `broken` say why it stopped short."""
        for i, c in enumerate(text):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
                    if not self.stack:
                        self.done = True
                        return i + 1
                continue
            if self.scalar and not self.stack and c not in _SCALAR:
                self.done = True
                return i
            if c == '"':
                self.in_string = True
            elif c in "{[":
                self.stack.append("}" if c == "{" else "]")
            elif c in "}]":
                if not self.stack or self.stack.pop() != c:
                    self.broken = True
                    return i
                if not self.stack:
                    self.done = True
                    return i + 1
            elif c in _SCALAR:
                self.scalar = self.scalar or not self.stack
            elif not (self.stack and (c in _WS or c in ",:")):
                self.broken = True
                return i
        return len(text)


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class _JsonString:
    """Decodes a JSON string arriving in pieces (its opening quote already read): an escape split across
    pieces waits for its end; surrogate pairs of \\u escapes are joined, a lone half becomes U+FFFD."""

    def __init__(self) -> None:
        self.pending = ""  # an escape not complete yet
        self.high: int | None = None  # a high surrogate waiting for its low half
        self.done = False

    def feed(self, text: str) -> tuple[str, int]:
        """The decoded text and how many characters of `text` were read (up to the closing quote)."""
        out: list[str] = []
        for i, c in enumerate(text):
            if self.pending:
                self.pending += c
                if self.pending[1] == "u" and len(self.pending) < 6:
                    continue
                out.append(self._escape(self.pending))
                self.pending = ""
            elif c == "\\":
                self.pending = c
            elif c == '"':
                self.done = True
                out.append(self._flush())
                return "".join(out), i + 1
            else:
                out.append(self._flush() + c)
        return "".join(out), len(text)

    def _escape(self, escape: str) -> str:
        if escape[1] != "u":
            return self._flush() + _ESCAPES.get(escape[1], escape[1])
        try:
            code = int(escape[2:], 16)
        except ValueError:
            return self._flush() + escape
        if 0xDC00 <= code <= 0xDFFF and self.high is not None:
            high, self.high = self.high, None
            return chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00))
        lead = self._flush()
        if 0xD800 <= code <= 0xDBFF:
            self.high = code
            return lead
        return lead + ("\ufffd" if 0xDC00 <= code <= 0xDFFF else chr(code))

    def _flush(self) -> str:
        if self.high is None:
            return ""
        self.high = None
        return "\ufffd"


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


# Mistral Small 3.x / Magistral write `[TOOL_CALLS]name[ARGS]{...}` (an optional `[CALL_ID]id` before [ARGS]).
_ALNUM = string.ascii_letters + string.digits
_MISTRAL_NAMED = re.compile(r"([a-zA-Z0-9_-]{1,64})(?:\[CALL_ID\][a-zA-Z0-9]*)?\[ARGS\]")


def _could_be_mistral_named(text: str) -> bool:
    """Whether more text could still make `text` a `name[ARGS]` opening."""
    rest = text.lstrip(_ALNUM + "_-")
    if not rest or "[ARGS]".startswith(rest) or "[CALL_ID]".startswith(rest):
        return len(text) - len(rest) <= 64
    if rest.startswith("[CALL_ID]"):
        tail = rest[len("[CALL_ID]") :].lstrip(_ALNUM)
        return "[ARGS]".startswith(tail)
    return False


class ToolCallParser:
    """Turns generated text, in pieces split anywhere, into content text and ToolCallDeltas of one format.

    A call is announced (index, a fresh id, the name) as soon as its name is read; the arguments' JSON text
    then follows in pieces as it is generated. Text that might still become a marker (`<tool_` of
    `<tool_call>`; an answer opening with `{`, which may be a call written without a marker) and whitespace
    are held back until decided; whitespace next to calls is dropped. The generic format's JSON answer
    yields only its decoded `response` text. Markers are read as text: the engine must print them even where
    they are special tokens (Mistral's `[TOOL_CALLS]`), except at the start of the output.

    Malformed output never raises:
    - a marker or opening that does not turn into a readable call is passed on as content, raw;
    - a call whose name comes after its arguments is read whole, once complete;
    - an announced call stays: if its arguments turn out not to be JSON, the rest of the call (up to
      `</tool_call>` for hermes, else to the end of the output) is appended to its arguments as generated,
      as OpenAI's own arguments "may not be valid JSON"; if the output ends inside the arguments
      (max_tokens) they stay incomplete. Both set `malformed`.
    """

    def __init__(self, fmt: ToolFormat, *, new_id: Callable[[], str] = _call_id) -> None:
        self.format: ToolFormat = fmt
        self._new_id = new_id
        self._ids: set[str] = set()
        self._buf = ""  # text read but not decided yet
        self._events: list[ToolEvent] = []
        self._calls = 0
        self._args: list[str] = []  # the current call's arguments so far
        self._malformed = False
        self._drop_ws = False  # whitespace after a call is not content
        self._opened = ""  # text of an opening (marker, envelope) passed on as content if no call follows
        self._then = "content"  # the state after the current call
        self._array_then = "content"  # the state after a list of calls
        self._whole = ""  # a call object being read whole
        self._value: _JsonValue | None = None
        self._string: _JsonString | None = None
        self._markers = {"hermes": (HERMES_OPEN,), "mistral": (MISTRAL_CALLS,)}.get(fmt, ())
        self._state = {"generic": "envelope", "llama3": "llama3_start"}.get(fmt, "bare_start")

    @property
    def called(self) -> bool:
        """Whether a call was announced (the choice's finish_reason is then "tool_calls")."""
        return self._calls > 0

    @property
    def malformed(self) -> bool:
        """Whether some call's arguments are not a complete JSON object (broken, or cut off)."""
        return self._malformed

    def feed(self, text: str) -> list[ToolEvent]:
        """The events decided by `text`, the next piece of the output."""
        self._buf += text
        while self._step(False):
            pass
        return self._take()

    def finish(self) -> list[ToolEvent]:
        """The end of the output: whatever was held back, decided."""
        while self._step(True):
            pass
        if self._state in ("args", "raw_args"):
            self._emit_args(self._buf)
            self._malformed = True
        else:
            self._emit_content(self._buf)
        self._buf = ""
        return self._take()

    def _step(self, final: bool) -> bool:
        """Runs the current state on the front of the text: whether it made progress."""
        handler: Callable[[bool], bool] = getattr(self, "_on_" + self._state)
        return handler(final)

    # --- events ---

    def _emit_content(self, text: str) -> None:
        if self._drop_ws:
            text = text.lstrip(_WS)
        if text:
            self._drop_ws = False
            self._events.append(text)

    def _start_call(self, name: str) -> None:
        call_id = self._new_id()
        while call_id in self._ids:
            call_id = self._new_id()
        self._ids.add(call_id)
        self._events.append(ToolCallDelta(index=self._calls, id=call_id, name=name))
        self._calls += 1
        self._args = []
        self._opened = ""

    def _emit_args(self, text: str) -> None:
        if text:
            self._args.append(text)
            self._events.append(ToolCallDelta(index=self._calls - 1, arguments=text))

    def _check_args(self) -> None:
        try:
            complete = isinstance(json.loads("".join(self._args)), dict)
        except ValueError:
            complete = False
        self._malformed = self._malformed or not complete

    def _end_call(self) -> bool:
        self._value = self._string = None
        self._drop_ws = True
        self._state = self._then
        return True

    def _take(self) -> list[ToolEvent]:
        """The events since the last call, adjacent pieces of the same kind joined."""
        out: list[ToolEvent] = []
        for event in self._events:
            last = out[-1] if out else None
            if isinstance(event, str) and isinstance(last, str):
                out[-1] = last + event
            elif (
                isinstance(event, ToolCallDelta)
                and isinstance(last, ToolCallDelta)
                and not (event.id or last.id)
                and last.index == event.index
            ):
                out[-1] = ToolCallDelta(index=event.index, arguments=last.arguments + event.arguments)
            else:
                out.append(event)
        self._events = []
        return out

    def _to_content(self) -> bool:
        self._state = "content"
        return True

    def _give_up(self) -> bool:
        """What looked like the start of a call is not one: its opening is content (not read for markers
        again), and the text after it is read as content."""
        opened, self._opened = self._opened, ""
        self._emit_content(opened)
        return self._to_content()

    def _consume_opening(self, n: int) -> None:
        self._opened += self._buf[:n]
        self._buf = self._buf[n:]

    # --- states: each reads the front of self._buf ---

    def _on_bare_start(self, final: bool) -> bool:
        """A call at the very start without its marker (a control token the engine did not print, a model
        that forgot it): a call object for hermes, a list of them for mistral; read as calls, as
        llama-server reads them. Anything else is content."""
        rest = self._buf.lstrip(_WS)
        if not rest:
            return self._to_content() if final else False
        opening = "[" if self.format == "mistral" else "{"
        if not rest.startswith(opening):
            return self._to_content()
        start = len(self._buf) - len(rest)
        try:
            _call_header(self._buf, start + len(opening) if opening == "[" else start)
        except _Need:
            return self._to_content() if final else False
        except _NoMatch:
            return self._to_content()
        if opening == "[":
            self._consume_opening(start + 1)
            self._array_then, self._state = "content", "array_item"
        else:
            self._then, self._state = "hermes_close", "item"
        return True

    def _on_content(self, final: bool) -> bool:
        buf = self._buf
        found = [(buf.find(m), m) for m in self._markers if m in buf]
        if found:
            at, marker = min(found)
            kept = buf[:at].rstrip(_WS)
            self._emit_content(kept)
            # The whitespace before a marker goes with it: dropped before a call, kept if none follows.
            self._buf, self._opened = buf[at + len(marker) :], buf[len(kept) : at] + marker
            self._state = "hermes_open" if marker == HERMES_OPEN else "mistral_open"
            return True
        if final:
            return False  # finish() passes the rest on
        end = len(buf) - partial_stop(buf, self._markers)
        while end and buf[end - 1] in _WS:
            end -= 1
        self._emit_content(buf[:end])
        self._buf = buf[end:].lstrip(_WS) if self._drop_ws else buf[end:]
        return False

    def _on_hermes_open(self, final: bool) -> bool:
        try:
            name, end = _call_header(self._buf, 0)
        except _Need:
            return self._give_up() if final else False
        except _NoMatch:
            if self._buf.lstrip(_WS).startswith("{"):
                self._state = "hermes_whole"
                return True
            return self._give_up()
        self._buf = self._buf[end:]
        self._start_call(name)
        self._then = "hermes_close"
        self._state = "args"
        return True

    def _on_hermes_whole(self, final: bool) -> bool:
        """A `<tool_call>` whose object cannot be streamed: read up to `</tool_call>`, then decide."""
        at = self._buf.find(HERMES_CLOSE)
        if at < 0 and not final:
            return False
        raw = self._buf if at < 0 else self._buf[:at]
        call = _whole_call(raw)
        if call is None:
            end = len(self._buf) if at < 0 else at + len(HERMES_CLOSE)
            self._emit_content(self._opened + self._buf[:end])
            self._buf, self._opened = self._buf[end:], ""
            return self._to_content()
        self._buf = "" if at < 0 else self._buf[at + len(HERMES_CLOSE) :]
        self._start_call(call[0])
        self._emit_args(call[1])
        self._check_args()
        self._then = "content"
        return self._end_call()

    def _on_hermes_close(self, final: bool) -> bool:
        rest = self._buf.lstrip(_WS)
        if rest.startswith(HERMES_CLOSE):
            self._buf = rest[len(HERMES_CLOSE) :]
        elif HERMES_CLOSE.startswith(rest):
            if not final:
                return False
            self._buf = ""  # the output ended inside the closing tag
        return self._to_content()

    def _on_mistral_open(self, final: bool) -> bool:
        i = _skip_ws(self._buf, 0)
        if i == len(self._buf):
            return self._give_up() if final else False
        c = self._buf[i]
        if c == "[":
            self._consume_opening(i + 1)
            self._array_then = "content"
            self._state = "array_item"
        elif c == "{":
            self._then = "content"
            self._state = "item"
        elif TOOL_NAME.match(c):
            self._consume_opening(i)
            self._state = "mistral_named"
        else:
            return self._give_up()
        return True

    def _on_mistral_named(self, final: bool) -> bool:
        match = _MISTRAL_NAMED.match(self._buf)
        if match is None:
            return self._give_up() if final or not _could_be_mistral_named(self._buf) else False
        self._buf = self._buf[match.end() :]
        self._start_call(match.group(1))
        self._then = "content"
        self._state = "args"
        return True

    def _on_llama3_start(self, final: bool) -> bool:
        rest = self._buf.lstrip(_WS)
        start = len(self._buf) - len(rest)
        if not rest or (PYTHON_TAG.startswith(rest) and rest != PYTHON_TAG):
            return self._to_content() if final else False
        if rest.startswith(PYTHON_TAG):
            start += len(PYTHON_TAG)
        elif not rest.startswith("{"):
            return self._to_content()
        try:
            name, end = _call_header(self._buf, start)
        except _Need:
            return self._to_content() if final else False
        except _NoMatch:
            return self._to_content()
        self._buf = self._buf[end:]
        self._start_call(name)
        self._then = "llama3_start"
        self._state = "args"
        return True

    def _on_envelope(self, final: bool) -> bool:
        """The generic answer: `{"tool_calls": [...]}`, `{"tool_call": {...}}` or `{"response": ...}`."""
        try:
            i = _expect(self._buf, 0, "{")
            key, i = _json_string(self._buf, i)
            i = _expect(self._buf, i, ":")
            if key == "tool_calls":
                i = _expect(self._buf, i, "[")
                self._array_then, state = "envelope_end", "array_item"
            elif key == "tool_call":
                self._then, state = "envelope_end", "item"
            elif key == "response":
                state = "response"
            else:
                raise _NoMatch
        except _Need:
            return self._to_content() if final else False
        except _NoMatch:
            return self._to_content()
        self._consume_opening(i)
        self._state = state
        return True

    def _on_response(self, final: bool) -> bool:
        if self._string is None and self._value is None:
            self._buf = self._buf.lstrip(_WS)
            if not self._buf:
                return False
            self._opened = ""
            if self._buf.startswith('"'):
                self._string, self._buf = _JsonString(), self._buf[1:]
            else:  # a structured answer (response_format with tools): its JSON text is the content
                self._value = _JsonValue()
        if self._string is not None:
            text, n = self._string.feed(self._buf)
            done = self._string.done
        else:
            assert self._value is not None
            n = self._value.feed(self._buf)
            text, done = self._buf[:n], self._value.done or self._value.broken
        self._emit_content(text)
        self._buf = self._buf[n:]
        if not done:
            return False
        self._string = self._value = None
        self._state = "envelope_end"
        return True

    def _on_envelope_end(self, final: bool) -> bool:
        rest = self._buf.lstrip(_WS)
        if not rest:
            self._buf = ""
            return False
        self._buf = rest[1:] if rest.startswith("}") else rest
        self._drop_ws = True
        return self._to_content()

    def _on_array_item(self, final: bool) -> bool:
        rest = self._buf.lstrip(_WS)
        if not rest:
            return self._give_up() if final else False
        if rest.startswith("]"):
            self._buf = rest[1:]
            self._state = self._array_then
        else:
            self._then = "array_next"
            self._state = "item"
        return True

    def _on_array_next(self, final: bool) -> bool:
        rest = self._buf.lstrip(_WS)
        self._buf = rest
        if not rest:
            return False
        if rest[0] == ",":
            self._buf, self._state = rest[1:], "array_item"
        elif rest[0] == "]":
            self._buf, self._state = rest[1:], self._array_then
        else:  # not a list of calls any more: the rest is content
            self._state = "content"
        return True

    def _on_item(self, final: bool) -> bool:
        """One call object, e.g. an element of a list of calls."""
        try:
            name, end = _call_header(self._buf, 0)
        except _Need:
            return self._give_up() if final else False
        except _NoMatch:
            rest = self._buf.lstrip(_WS)
            if not rest.startswith("{"):
                return self._give_up()
            self._consume_opening(len(self._buf) - len(rest))
            self._value, self._whole = _JsonValue(), ""
            self._state = "item_whole"
            return True
        self._buf = self._buf[end:]
        self._start_call(name)
        self._state = "args"
        return True

    def _on_item_whole(self, final: bool) -> bool:
        """A call object that cannot be streamed (name after arguments): read whole, then decided."""
        assert self._value is not None
        n = self._value.feed(self._buf)
        self._whole += self._buf[:n]
        self._buf = self._buf[n:]
        if not (self._value.done or self._value.broken or final):
            return False
        call = _whole_call(self._whole) if self._value.done else None
        if call is None:
            self._buf, self._whole, self._value = self._whole + self._buf, "", None
            return self._give_up()
        self._whole = ""
        self._start_call(call[0])
        self._emit_args(call[1])
        self._check_args()
        return self._end_call()

    def _on_args(self, final: bool) -> bool:
        if self._value is None and self._string is None:
            self._buf = self._buf.lstrip(_WS)
            if not self._buf:
                return False
            if self._buf.startswith('"'):  # arguments written as a JSON string of the JSON text
                self._string, self._buf = _JsonString(), self._buf[1:]
            else:
                self._value = _JsonValue()
        if self._string is not None:
            text, n = self._string.feed(self._buf)
            done, broken = self._string.done, False
        else:
            assert self._value is not None
            n = self._value.feed(self._buf)
            text, done, broken = self._buf[:n], self._value.done, self._value.broken
        self._emit_args(text)
        self._buf = self._buf[n:]
        if done:
            self._check_args()
            self._value = self._string = None
            self._state = "object_rest"
            return True
        if broken:
            self._malformed = True
            self._state = "raw_args"
            return True
        return False

    def _on_raw_args(self, final: bool) -> bool:
        """Arguments that are not JSON: everything up to the call's end goes to them, as generated."""
        hold = 0
        if self._then == "hermes_close":
            at = self._buf.find(HERMES_CLOSE)
            if at >= 0:
                self._emit_args(self._buf[:at].rstrip(_WS))
                self._buf = self._buf[at + len(HERMES_CLOSE) :]
                self._then = "content"
                return self._end_call()
            hold = partial_stop(self._buf, (HERMES_CLOSE,))
        end = len(self._buf) - hold
        while end and self._buf[end - 1] in _WS:
            end -= 1
        self._emit_args(self._buf[:end])
        self._buf = self._buf[end:]
        return False

    def _on_object_rest(self, final: bool) -> bool:
        """After the arguments: the call object's end, or more keys to skip."""
        rest = self._buf.lstrip(_WS)
        self._buf = rest
        if not rest:
            return self._end_call() if final else False
        if rest[0] == "}":
            self._buf = rest[1:]
        elif rest[0] == ",":
            self._buf = rest[1:]
            self._value = _JsonValue("}")
            self._state = "object_skip"
            return True
        # Anything else: the object is broken after complete arguments, so the call ends here.
        return self._end_call()

    def _on_object_skip(self, final: bool) -> bool:
        assert self._value is not None
        n = self._value.feed(self._buf)
        self._buf = self._buf[n:]
        if self._value.done or self._value.broken or final:
            return self._end_call()
        return False
