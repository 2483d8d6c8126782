"""The one interface every engine implements (llama.cpp now; remote APIs and Triton next).

An engine hosts one model: it loads, generates (an async stream of text deltas), embeds, and unloads.
It knows nothing about gRPC or HTTP; the runner's core owns scheduling across models, memory and
keep-alive, and the servicer adapts to gRPC.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from services.common.errors import InvalidArgument, Unimplemented


@dataclass(frozen=True)
class LoadSpec:
    """What a model needs to be loaded."""

    model_id: str
    # Local paths of the binaries, in order (a split GGUF: all parts, the first one is loaded).
    files: list[Path]
    # A multimodal projector (llava's mmproj), when the model has one.
    mmproj: Path | None
    # The model object's parameters merged with the load-time overrides.
    parameters: dict[str, Any]
    metadata: dict[str, Any]
    source_url: str = ""
    # With no `files` (binaries not on this runner): their sizes as the model object declares them, so that
    # the memory can be estimated before a download. A load always has files.
    declared_bytes: int = 0


# What a memory estimate rests on: "header" the binaries here (sizes, and the KV cache from the GGUF
# header); "size" sizes only (declared, or the header unreadable) with the KV cache of a 7B-class model;
# "remote" a model that runs elsewhere.
MemoryBasis = Literal["header", "size", "remote"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model takes once loaded (weights + caches), and what the figure rests on."""

    bytes: int
    basis: MemoryBasis


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    # The fields the request or the model object set; the others hold these defaults (a remote API is
    # sent only what was asked for).
    given: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Tool:
    """A function the model may call (OpenAI's `tools[].function`)."""

    name: str
    description: str = ""
    # The arguments' JSON schema (an object schema; {} when the tool takes none).
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolChoice:
    """auto: the model decides; none: no call; required: at least one call; function: a call of `name`."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str = ""


@dataclass(frozen=True)
class Constraint:
    """What the output must be: any JSON object, JSON matching a schema, or text of a GBNF grammar."""

    kind: Literal["json_object", "json_schema", "grammar"]
    # json_schema: the schema (a dict); grammar: the GBNF text; json_object: None.
    schema: dict[str, Any] | None = None
    grammar: str = ""


# Where an image stands in a chat message's text: the engine that reads images splits the rendered prompt
# there (llama.cpp's multimodal library's own default marker). Text that contains it is refused.
IMAGE_MARKER = "<__media__>"


@dataclass(frozen=True)
class Image:
    """An image given with a chat message: the file's bytes as the client sent them."""

    data: bytes
    media_type: str = ""


@dataclass(frozen=True)
class GenerateRequest:
    # Either chat messages or a plain prompt. A message is {"role", "content"} plus, for an assistant's
    # calls, "tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}], and for a
    # tool's answer "tool_call_id" (and "name").
    messages: list[dict[str, Any]] | None
    prompt: str | None
    sampling: Sampling = field(default_factory=Sampling)
    constraint: Constraint | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    # Log-probabilities of each sampled token, and of the `top_logprobs` most likely alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    # Choices generated from the one prompt (each its own seed stream).
    n: int = 1
    # Token id -> bias added to its logit (-100 bans it, +100 makes it all but certain).
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Thinking text between reasoning markers: "separate" (Delta.reasoning) or "inline" (in the text).
    reasoning: Literal["separate", "inline"] = "separate"
    # The messages' images in order of appearance; each stands at an IMAGE_MARKER in its message's content.
    images: tuple[Image, ...] = ()


@dataclass(frozen=True)
class TopLogprob:
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token, its log-probability, and the most likely alternatives at that step."""

    token: str
    bytes: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call: the first piece of call `index` carries its id and name, later pieces
    carry more of its arguments (JSON text, concatenated in order)."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class Delta:
    """Output since the previous delta of choice `index`; a choice's last delta carries its finish
    reason and usage."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    # Prompt tokens read from a cache instead of being computed (on the last delta).
    cached_tokens: int = 0
    # On the last delta of a choice that a stop string of Sampling.stop ended: that string (prompt.py's
    # reported_stop says which count).
    stop_sequence: str = ""


@dataclass(frozen=True)
class TokenizeRequest:
    """Plain text (with the model's BOS when `add_special`) or chat messages rendered with the template,
    with what else a generation puts in a chat's prompt (its tools, as they are offered)."""

    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special: bool = True
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    constraint: Constraint | None = None

    def as_chat(self) -> GenerateRequest:
        """The generation whose prompt this counts (messages only)."""
        return GenerateRequest(
            messages=self.messages,
            prompt=None,
            constraint=self.constraint,
            tools=self.tools,
            tool_choice=self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls,
        )


@dataclass(frozen=True)
class Tokenized:
    tokens: list[int]
    pieces: list[str]
    # The context one request may use.
    max_model_len: int


# Features of a request beyond plain sampling, each with the OpenAI request field that asks for it.
FEATURE_PARAMS = {
    "constraint": "response_format",
    "grammar": "grammar",
    "tools": "tools",
    "logprobs": "logprobs",
    "n": "n",
    "logit_bias": "logit_bias",
    "images": "messages",
}


def requested_features(request: GenerateRequest) -> list[str]:
    """The features (FEATURE_PARAMS keys) the request uses."""
    kind = request.constraint.kind if request.constraint is not None else None
    used = {
        "constraint": kind in ("json_object", "json_schema"),
        "grammar": kind == "grammar",
        "tools": bool(request.tools),
        "logprobs": request.logprobs or request.top_logprobs > 0,
        "n": request.n > 1,
        "logit_bias": bool(request.logit_bias),
        "images": bool(request.images),
    }
    return [name for name, on in used.items() if on]


def refuse_unsupported(engine: Engine, request: GenerateRequest) -> None:
    """Raises InvalidArgument naming the first field the engine cannot honour: nothing is ignored."""
    for feature in requested_features(request):
        if feature not in engine.features:
            raise InvalidArgument(
                engine.unsupported(feature), code="unsupported_parameter", param=FEATURE_PARAMS[feature]
            )


class Engine(abc.ABC):
    """One loaded model. Methods are called from the runner's event loop."""

    name: str = "engine"
    # The request features (FEATURE_PARAMS keys) it honours; generate() refuses the others.
    features: frozenset[str] = frozenset()

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec

    def unsupported(self, feature: str) -> str:
        """Why a request feature (a FEATURE_PARAMS key) not in `features` is refused."""
        what = "image input" if feature == "images" else FEATURE_PARAMS[feature]
        return f"{what} is not supported by the {self.name} engine that runs {self.spec.model_id}"

    @classmethod
    @abc.abstractmethod
    def estimate(cls, spec: LoadSpec) -> MemoryEstimate:
        """Bytes the model will take once loaded (weights + caches), before loading it."""

    @classmethod
    def estimate_memory(cls, spec: LoadSpec) -> int:
        return cls.estimate(spec).bytes

    @abc.abstractmethod
    async def load(self) -> None: ...

    @abc.abstractmethod
    async def unload(self) -> None:
        """Frees everything the model holds; memory is returned to the system."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncGenerator[Delta, None]:
        """Streams the answer. Closing the iterator (a client that went away) stops the generation."""

    @abc.abstractmethod
    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """One vector per input, and the number of tokens read."""

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        raise Unimplemented(
            f"{self.spec.model_id} runs on the {self.name} engine, which does not tokenize here",
            code="tokenize_unsupported",
        )

    async def detokenize(self, tokens: list[int]) -> str:
        raise Unimplemented(
            f"{self.spec.model_id} runs on the {self.name} engine, which does not detokenize here",
            code="tokenize_unsupported",
        )

    @property
    @abc.abstractmethod
    def slots(self) -> int:
        """How many requests it serves at once."""

    @property
    def memory_estimate(self) -> MemoryEstimate:
        """The estimate of the model as this engine will load it: the runner decides by it whether the
        load fits, and answers EstimateModels with it."""
        return self.estimate(self.spec)

    @property
    def memory_bytes(self) -> int:
        """Bytes the runner accounts for the model (once loaded, caches made since included)."""
        return self.memory_estimate.bytes

    @property
    def effective_parameters(self) -> dict[str, Any]:
        return dict(self.spec.parameters)
