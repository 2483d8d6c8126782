"""Ollama's API dialect (`/api/...`): its request and response shapes, and pure translations between them
and the runner's messages and the catalog's model objects.

A model name is our id (`<folder>/<file>`) with an optional `:latest`, or a Hugging Face name
`hf.co/<org>/<repo>[:<QUANT>]` (the imported object of that repository and quantization). Nothing is
silently ignored: a field or option is honoured, or refused with a 400 naming it (`Unsupported`); the few
options Ollama itself no longer reads (`numa`, `low_vram`, `f16_kv`, ...) are accepted and change nothing,
as in Ollama. docs/api.md lists what maps where.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import APIError
from gateway.protocol.answer import ToolCall
from gateway.protocol.common import (
    ImageRef,
    Piece,
    StrictBoolsModel,
    Unsupported,
    keep_alive_seconds,
    parse_keep_alive,
    set_content,
)
from gateway.protocol.openai import MAX_TOP_LOGPROBS, response_format_constraint
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb

# The Ollama API version this dialect follows (clients read it from /api/version to pick features).
OLLAMA_VERSION = "0.12.6"
DEFAULT_HF_QUANT = "Q4_K_M"  # Ollama's default tag for a hf.co name
HF_PREFIXES = ("hf.co/", "huggingface.co/")
# num_predict -1 (no limit) and -2 (fill the context): as many as the context holds.
UNLIMITED_TOKENS = 1_048_576
# expires_at of a model that never unloads (keep_alive < 0) or is busy now.
FOREVER = "2318-01-01T00:00:00Z"

DONE_REASONS = {runner_pb.FINISH_REASON_LENGTH: "length"}  # stop and tool calls are both "stop" in Ollama


# --- names ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HfName:
    """`hf.co/<org>/<repo>:<QUANT>`: the model object imported from that repository, of that quant."""

    org: str
    repo: str
    quant: str

    @property
    def repo_url(self) -> str:
        return f"https://huggingface.co/{self.org}/{self.repo}"

    def __str__(self) -> str:
        return f"hf.co/{self.org}/{self.repo}:{self.quant}"


def parse_name(name: str, field: str = "model") -> str | HfName:
    """The model id an Ollama name means (`:latest` dropped), or the Hugging Face name it is."""
    name = name.strip()
    if not name:
        raise Unsupported(field, f"{field} is required")
    for prefix in HF_PREFIXES:
        if name.lower().startswith(prefix):
            path, _, tag = name[len(prefix) :].partition(":")
            parts = path.split("/")
            if len(parts) != 2 or not all(parts):
                raise Unsupported(field, f"{name!r} is not a Hugging Face name: hf.co/<org>/<repo>[:<quant>]")
            quant = DEFAULT_HF_QUANT if tag in ("", "latest") else tag.upper()
            return HfName(parts[0], parts[1], quant)
    return name.removesuffix(":latest")


def listed_name(model_id: str) -> str:
    """A model's name as Ollama lists names: with its tag."""
    return f"{model_id}:latest"


def metadata_of(m: model_pb2.Model) -> dict[str, Any]:
    value = orjson.loads(m.metadata_json or "{}")
    return value if isinstance(value, dict) else {}


def parameters_of(m: model_pb2.Model) -> dict[str, Any]:
    value = orjson.loads(m.parameters_json or "{}")
    return value if isinstance(value, dict) else {}


def quantization(m: model_pb2.Model) -> str:
    q = metadata_of(m).get("quantization")
    return q.upper() if isinstance(q, str) else ""


def from_repo(m: model_pb2.Model, ref: HfName) -> bool:
    """Whether `m` was imported from the repository `ref` names (its source_url is the repo's page)."""
    return m.source_url.rstrip("/").lower().endswith(f"/{ref.org}/{ref.repo}".lower())


def pick_hf_model(models: list[model_pb2.Model], ref: HfName, name: str) -> model_pb2.Model:
    """The object of `ref`'s quantization among the models imported from its repository."""
    imported = [m for m in models if from_repo(m, ref)]
    if not imported:
        raise APIError(404, f"model '{name}' not found: pull it first", code="model_not_found")
    for m in imported:
        if quantization(m) == ref.quant:
            return m
    quants = ", ".join(sorted({quantization(m) for m in imported if quantization(m)})) or "none"
    raise APIError(
        404,
        f"{ref.org}/{ref.repo} has no {ref.quant} quantization (it has: {quants}): "
        f"name one as hf.co/{ref.org}/{ref.repo}:<quant>",
        code="quantization_not_found",
    )


class ErrorOut(BaseModel):
    """Ollama's error: the message alone."""

    error: str


# --- requests ---------------------------------------------------------------------------------------------


class OptionsIn(StrictBoolsModel):
    """Ollama's `options`. Unknown names are kept as extras and refused by name."""

    model_config = ConfigDict(extra="allow")

    num_ctx: int | None = Field(default=None, ge=1, le=1_048_576)
    num_predict: int | None = Field(default=None, ge=-2, le=UNLIMITED_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    top_p: float | None = Field(default=None, ge=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None
    repeat_penalty: float | None = Field(default=None, ge=0, le=10)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


# Options Ollama no longer reads (it logs and ignores them): accepted here, changing nothing, as there.
IGNORED_AS_IN_OLLAMA = frozenset(
    {"numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "penalize_newline"}
)
# Options accepted only at the value that changes nothing here (what the runner does anyway).
NEUTRAL = {"mirostat": 0, "tfs_z": 1.0, "typical_p": 1.0, "repeat_last_n": 64}
# Meaningful only with mirostat, which is refused unless 0.
WITH_MIROSTAT = frozenset({"mirostat_tau", "mirostat_eta"})
REFUSED_OPTIONS = {
    "num_keep": "tokens kept on a context shift: the context is never shifted here",
    "num_batch": "the batch size is the runner's (a run parameter of the model object)",
    "num_gpu": "GPU offload is the runner's (the model object's `ngl` run parameter)",
    "main_gpu": "GPU placement is the runner's",
    "num_thread": "threads are the runner's (JAN_RUNNER_THREADS)",
    "use_mmap": "memory mapping is the runner's",
    "mirostat": "mirostat sampling is not supported (only 0)",
    "tfs_z": "tail-free sampling is not supported (only 1.0)",
    "typical_p": "locally typical sampling is not supported (only 1.0)",
    "repeat_last_n": "the repeat penalty looks at the last 64 tokens here (only 64)",
}


# Options that are the runner's sampling fields of the same name.
_SAMPLING_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass
class Options:
    """Ollama's options as the runner takes them: sampling per request, the context size per load."""

    sampling: runner_pb.Sampling
    num_ctx: int | None = None


# A generation body translated: the runner's request, the images its image parts wait for, the options.
Translated = tuple[runner_pb.GenerateRequest, list[ImageRef], Options]


def options(given: OptionsIn | None, *, sampling: bool = True) -> Options:
    """`options` translated; Unsupported names the first option that would not be honoured. Without
    `sampling` (embeddings) only num_ctx means something."""
    body = given or OptionsIn()
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED_AS_IN_OLLAMA or name in WITH_MIROSTAT or value is None:
            continue
        if name in NEUTRAL and not isinstance(value, bool) and value == NEUTRAL[name]:
            continue
        reason = REFUSED_OPTIONS.get(name, "not an option Ollama defines")
        raise Unsupported(f"options.{name}", f"options.{name}: {reason}")
    set_fields = sorted(k for k in body.model_fields_set if getattr(body, k) is not None and k != "num_ctx")
    if set_fields and not sampling:
        first = set_fields[0]
        raise Unsupported(f"options.{first}", f"options.{first}: embeddings take no sampling options")
    s = runner_pb.Sampling()
    for field in _SAMPLING_FIELDS:
        if (value := getattr(body, field)) is not None:
            setattr(s, field, value)
    if body.num_predict is not None and body.num_predict != 0:  # 0: unset, as in Ollama
        s.max_tokens = UNLIMITED_TOKENS if body.num_predict < 0 else body.num_predict
    if body.stop:
        s.stop.extend(body.stop)
    return Options(sampling=s, num_ctx=body.num_ctx)


def unloads(value: float | str | None) -> bool:
    """keep_alive 0: unload (with an empty prompt: only unload)."""
    return value is not None and keep_alive_seconds(value) == parse_keep_alive(0)


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = "function"
    function: FunctionIn


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    index: int | None = None


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallIn


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = Field(
        default=None, description="An earlier turn's thinking: not sent to the model (templates drop it)."
    )
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class GenerationIn(StrictBoolsModel):
    """What /api/chat and /api/generate share."""

    model_config = ConfigDict(extra="allow")

    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: OptionsIn | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    truncate: bool | None = None
    shift: bool | None = None


class ChatIn(GenerationIn):
    messages: list[MessageIn] = Field(default_factory=list)
    tools: list[ToolIn] | None = None


class GenerateIn(GenerationIn):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class EmbedIn(StrictBoolsModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] = ""
    truncate: bool | None = None
    options: OptionsIn | None = None
    keep_alive: float | str | None = None
    dimensions: int | None = Field(default=None, ge=1)


class EmbeddingsIn(StrictBoolsModel):
    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str = ""
    options: OptionsIn | None = None
    keep_alive: float | str | None = None


class NameIn(StrictBoolsModel):
    """/api/show and /api/delete: `model` (or the older `name`)."""

    model_config = ConfigDict(extra="allow")

    model: str = ""
    name: str = ""
    verbose: bool | None = Field(default=None, description="Accepted: there are no longer fields to add.")

    @property
    def given(self) -> str:
        return self.model or self.name


class PullIn(NameIn):
    stream: bool = True
    insecure: bool | None = None


class CopyIn(StrictBoolsModel):
    model_config = ConfigDict(extra="allow")

    source: str
    destination: str


def refuse_extras(body: BaseModel, allowed: frozenset[str] = frozenset()) -> None:
    for name, value in (body.model_extra or {}).items():
        if name not in allowed and value not in (None, "", [], {}):
            raise Unsupported(name, f"{name}: not a field this endpoint takes")


def _shared(body: GenerationIn) -> None:
    refuse_extras(body)
    if body.truncate:
        raise Unsupported("truncate", "truncate: a prompt longer than the context is refused, never cut")
    if body.shift:
        raise Unsupported("shift", "shift: the context is never shifted; an answer stops when it is full")
    if body.think is not None and body.think is not True:
        raise Unsupported(
            "think",
            "think: only true is supported; whether a model thinks is up to its chat template here "
            "(its thinking comes in `thinking`)",
        )
    if body.top_logprobs and not body.logprobs:
        raise Unsupported("top_logprobs", "top_logprobs needs logprobs: true")


def format_constraint(fmt: str | dict[str, Any] | None) -> runner_pb.Constraint | None:
    """`format`: "json" (any JSON object) or a JSON schema."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return response_format_constraint({"type": "json_object"})
    if isinstance(fmt, dict):
        return runner_pb.Constraint(json_schema=orjson.dumps(fmt).decode())
    raise Unsupported("format", f'format must be "json" or a JSON schema, not {fmt!r}')


def _tools(tools: list[ToolIn] | None) -> list[runner_pb.Tool]:
    out = []
    for i, tool in enumerate(tools or []):
        if tool.type != "function":
            raise Unsupported(
                f"tools.{i}.type", f"tools of type {tool.type!r} are not supported: only function"
            )
        fn = tool.function
        params = orjson.dumps(fn.parameters).decode() if fn.parameters is not None else ""
        out.append(runner_pb.Tool(name=fn.name, description=fn.description or "", parameters_json=params))
    return out


def _arguments(value: dict[str, Any] | str) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _images(images: list[str] | None, role: str, where: str) -> list[Piece]:
    """`images` (base64, no data: prefix) as pieces before the text, as Ollama puts them; whether the model
    can see them is the runner's to say (it knows whether the model has a vision projector)."""
    if images and role != "user":
        raise Unsupported(where, f"{where}: only user messages may carry images, not {role} messages")
    return [ImageRef(param=f"{where}.{k}", base64=image) for k, image in enumerate(images or [])]


def chat_messages(messages: list[MessageIn]) -> tuple[list[runner_pb.ChatMessage], list[ImageRef]]:
    """The runner's messages, and the images their image parts wait for. Ollama's calls carry no id: each
    gets one (`call_<message>_<call>`), and a tool result without `tool_call_id` answers the oldest
    unanswered call of its `tool_name`."""
    out: list[runner_pb.ChatMessage] = []
    images: list[ImageRef] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        refuse_extras(m)
        pieces = [*_images(m.images, m.role, f"{where}.images"), m.content]
        msg = set_content(runner_pb.ChatMessage(role=m.role), pieces, images)
        if m.tool_calls:
            if m.role != "assistant":
                raise Unsupported(f"{where}.tool_calls", "only assistant messages carry tool_calls")
            pending = []
            for j, call in enumerate(m.tool_calls):
                call_id = call.id or f"call_{i}_{j}"
                name = call.function.name
                msg.tool_calls.append(
                    runner_pb.ToolCall(id=call_id, name=name, arguments=_arguments(call.function.arguments))
                )
                pending.append((call_id, name))
        if m.role == "tool":
            call_id, name = _answered(pending, m.tool_call_id, m.tool_name, i)
            msg.tool_call_id, msg.name = call_id, name
        elif m.tool_name or m.tool_call_id:
            raise Unsupported(f"{where}.tool_name", "only tool messages carry tool_name / tool_call_id")
        out.append(msg)
    return out, images


def _answered(
    pending: list[tuple[str, str]], call_id: str | None, name: str | None, i: int
) -> tuple[str, str]:
    for k, (pid, pname) in enumerate(pending):
        if (call_id and pid == call_id) or (not call_id and (not name or pname == name)):
            del pending[k]
            return pid, name or pname
    return call_id or f"call_{i}", name or ""


def _generate_request(body: GenerationIn, model_id: str, opts: Options) -> runner_pb.GenerateRequest:
    request = runner_pb.GenerateRequest(
        model_id=model_id,
        sampling=opts.sampling,
        keep_alive_s=keep_alive_seconds(body.keep_alive),
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        reasoning=runner_pb.REASONING_MODE_SEPARATE,
    )
    constraint = format_constraint(body.format)
    if constraint is not None:
        request.constraint.CopyFrom(constraint)
    return request


def chat_request(body: ChatIn, model_id: str) -> Translated:
    """The runner's request of an /api/chat body (with messages), the images its image parts wait for
    (read by gateway/images.py), and its options (num_ctx is a load)."""
    _shared(body)
    opts = options(body.options)
    request = _generate_request(body, model_id, opts)
    messages, images = chat_messages(body.messages)
    request.chat.messages.extend(messages)
    request.tools.extend(_tools(body.tools))
    return request, images, opts


def generate_request(body: GenerateIn, model_id: str) -> Translated:
    """The runner's request of an /api/generate body with a prompt (or images): the prompt as the user's
    turn of the model's chat template (after `system`, its images first), or as plain text with `raw`."""
    _shared(body)
    if body.suffix:
        raise Unsupported("suffix", "suffix (fill-in-the-middle) is not supported")
    if body.template:
        raise Unsupported("template", "template: prompts use the model's own chat template here")
    if body.context:
        raise Unsupported("context", "context (deprecated by Ollama) is not supported: use /api/chat")
    opts = options(body.options)
    request = _generate_request(body, model_id, opts)
    images: list[ImageRef] = []
    if body.raw:
        if body.system:
            raise Unsupported("system", "raw mode does not support system")
        if body.images:
            raise Unsupported("images", "images: raw mode has no chat template to put images in")
        request.text = body.prompt or ""
        request.reasoning = runner_pb.REASONING_MODE_INLINE
    else:
        if body.system:
            request.chat.messages.append(runner_pb.ChatMessage(role="system", content=body.system))
        pieces = [*_images(body.images, "user", "images"), body.prompt or ""]
        request.chat.messages.append(set_content(runner_pb.ChatMessage(role="user"), pieces, images))
    return request, images, opts


def embed_inputs(body: EmbedIn) -> list[str]:
    refuse_extras(body)
    if body.truncate:
        raise Unsupported("truncate", "truncate: an input longer than the context is refused, never cut")
    if isinstance(body.input, str):
        return [body.input] if body.input else []  # "": load the model, as in Ollama
    return list(body.input)


# --- responses --------------------------------------------------------------------------------------------


def timestamp(unix: float) -> str:
    """RFC 3339, as Ollama writes times."""
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def digest(m: model_pb2.Model) -> str:
    """What identifies the model's weights (the same for a copy): the sha256 of its binaries' digests,
    else of their places (a local file whose digest was never computed), else of its id."""
    shas = [b.sha256 for b in m.binaries if b.sha256]
    folder = m.id.split("/", 1)[0]
    places = [b.external_path or f"{folder}/{b.name}" for b in m.binaries]
    return hashlib.sha256("\n".join(shas or places or [m.id]).encode()).hexdigest()


def size(m: model_pb2.Model) -> int:
    declared = metadata_of(m).get("size")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    return sum(b.size for b in m.binaries)


def details(m: model_pb2.Model) -> dict[str, Any]:
    """Ollama's `details`: what the catalog knows (the family and size label are in the GGUF only)."""
    return {
        "parent_model": "",
        "format": "gguf" if m.engine in ("", "llamacpp") else m.engine,
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": quantization(m),
    }


def listed_model(m: model_pb2.Model) -> dict[str, Any]:
    return {
        "name": listed_name(m.id),
        "model": listed_name(m.id),
        "modified_at": timestamp(m.created),
        "size": size(m),
        "digest": digest(m),
        "details": details(m),
    }


# Run parameters of the model object -> Ollama's names, for /api/show's `parameters`.
_SHOWN_PARAMETERS = {
    "ctx_len": "num_ctx",
    "max_tokens": "num_predict",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
}


def parameters_text(m: model_pb2.Model) -> str:
    lines = []
    for ours, theirs in _SHOWN_PARAMETERS.items():
        value = parameters_of(m).get(ours)
        values = value if isinstance(value, list) else [value] if value is not None else []
        lines += [f"{theirs:<30} {orjson.dumps(v).decode() if isinstance(v, str) else v}" for v in values]
    return "\n".join(lines)


# The catalog's capability names as Ollama spells them (the others are the same).
_OLLAMA_CAPABILITY = {"reasoning": "thinking"}


def capabilities(m: model_pb2.Model) -> list[str]:
    """What /api/show says a model can do: the catalog's `metadata.capabilities` in Ollama's words."""
    given = metadata_of(m).get("capabilities")
    names = [c for c in given if isinstance(c, str)] if isinstance(given, list) else ["completion"]
    return [_OLLAMA_CAPABILITY.get(c, c) for c in names]


def show(m: model_pb2.Model) -> dict[str, Any]:
    params = parameters_text(m)
    modelfile = f"# Jan Models object {m.id}\nFROM {m.source_url}\n" + "".join(
        f"PARAMETER {line}\n" for line in params.splitlines()
    )
    ctx = parameters_of(m).get("ctx_len")
    info: dict[str, Any] = {"general.name": m.name or m.id}
    if isinstance(ctx, int):
        info["jan.context_length"] = ctx
    return {
        "modelfile": modelfile,
        "parameters": params,
        "template": "",
        "details": details(m),
        "model_info": info,
        "capabilities": capabilities(m),
        "modified_at": timestamp(m.created),
    }


def running_model(entry: dict[str, Any], m: model_pb2.Model | None) -> dict[str, Any]:
    """One model of /api/ps from Serving.running()'s entry and its object (None: deleted meanwhile)."""
    expires = entry.get("expires_at") or 0
    # The context it runs with (num_ctx may have overridden the object's): known when the entry says.
    ctx = (entry.get("parameters") or {}).get("ctx_len")
    out: dict[str, Any] = {
        "name": listed_name(entry["model_id"]),
        "model": listed_name(entry["model_id"]),
        "size": entry.get("memory_bytes", 0),
        "digest": digest(m) if m else "",
        "details": details(m) if m else {},
        "expires_at": timestamp(expires) if expires else FOREVER,
        # The runner does not say how much of it is in GPU memory.
        "size_vram": 0,
    }
    if isinstance(ctx, int):
        out["context_length"] = ctx
    return out


def tool_call_out(call: ToolCall, index: int) -> dict[str, Any]:
    """Ollama's tool call: arguments as a JSON object, not text."""
    try:
        arguments = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        raise APIError(
            502, f"the model called {call.name} with arguments that are not JSON", code="bad_tool_call"
        ) from None
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}}


def logprobs_out(entries: Any) -> list[dict[str, Any]]:
    return [
        {
            "token": e.token,
            "logprob": e.logprob,
            "bytes": list(e.bytes),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in e.top_logprobs
            ],
        }
        for e in entries
    ]


@dataclass
class Clock:
    """The durations Ollama reports, in nanoseconds, measured at the gateway: the prompt's evaluation
    runs to the first answer (a load included), the generation from there to the end."""

    start: int
    first: int = 0

    def metrics(self, end: int, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        first = self.first or end
        return {
            "total_duration": end - self.start,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": first - self.start,
            "eval_count": completion_tokens,
            "eval_duration": end - first,
        }


def chat_chunk(model: str, content: str, thinking: str = "", **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if "tool_calls" in extra:
        message["tool_calls"] = extra.pop("tool_calls")
    return {"model": model, "created_at": now(), "message": message, "done": False, **extra}


def generate_chunk(model: str, text: str, thinking: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now(), "response": text}
    if thinking:
        out["thinking"] = thinking
    return {**out, "done": False, **extra}


def done_fields(finish: runner_pb.FinishReason.ValueType, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"done": True, "done_reason": DONE_REASONS.get(finish, "stop"), **metrics}


# --- pulls ------------------------------------------------------------------------------------------------

PULL_STARTED = {"status": "pulling manifest"}
PULL_DONE = ({"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"})


def pull_files(job: downloader_pb.Job, model: model_pb2.Model) -> list[dict[str, Any]]:
    """A line per file of the job, as Ollama reports each layer: `pulling <digest>` with bytes."""
    expected = {b.name: b.sha256 for b in model.binaries}
    lines = []
    for f in job.files:
        sha = f.sha256 or expected.get(f.name, "")
        line: dict[str, Any] = {"status": f"pulling {sha[:12] if sha else f.name}"}
        if sha:
            line["digest"] = f"sha256:{sha}"
        if f.bytes_total:
            line["total"] = f.bytes_total
        line["completed"] = f.bytes_done
        lines.append(line)
    return lines


def pull_failure(job: downloader_pb.Job) -> str | None:
    """Why the job ended without the model, or None while it runs or when it is done."""
    if job.phase == downloader_pb.PHASE_FAILED:
        return f"download failed: {job.error or job.error_code or 'unknown error'}"
    if job.phase == downloader_pb.PHASE_CANCELLED:
        return "download cancelled"
    if job.phase == downloader_pb.PHASE_PAUSED:
        return "download paused: pull again to resume it"
    return None


def normalized(values: list[float]) -> list[float]:
    """L2-normalised, as Ollama's /api/embed returns vectors."""
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values] if norm > 0 else values


def embeddings_out(reply: runner_pb.EmbedResponse, dimensions: int | None) -> list[list[float]]:
    out = []
    for e in reply.embeddings:
        values = list(e.values)
        if dimensions is not None:
            if dimensions > len(values):
                raise Unsupported(
                    "dimensions", f"dimensions {dimensions} is more than the model's {len(values)}"
                )
            values = values[:dimensions]
        out.append(normalized(values))
    return out
