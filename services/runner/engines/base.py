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
from typing import Any


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


@dataclass(frozen=True)
class GenerateRequest:
    # Either chat messages ({"role", "content"}) or a plain prompt.
    messages: list[dict[str, str]] | None
    prompt: str | None
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Delta:
    """Text produced since the previous delta; the last one carries the finish reason and usage."""

    text: str
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine(abc.ABC):
    """One loaded model. Methods are called from the runner's event loop."""

    name: str = "engine"

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec

    @classmethod
    @abc.abstractmethod
    def estimate_memory(cls, spec: LoadSpec) -> int:
        """Bytes the model will take once loaded (weights + caches), before loading it."""

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

    @property
    @abc.abstractmethod
    def slots(self) -> int:
        """How many requests it serves at once."""

    @property
    def memory_bytes(self) -> int:
        return self.estimate_memory(self.spec)

    @property
    def effective_parameters(self) -> dict[str, Any]:
        return dict(self.spec.parameters)
