"""A deterministic engine for the runner's `engines=` seam (services/runner/core.py): no model, no
llama.cpp, so the runner's own rules (memory budget and LRU eviction, keep-alive, queue limits, drain) are
tested in milliseconds.

`FakeEngines` is the factory a Runner takes (`Runner(..., engines={"fake": FakeEngines()})`, the models'
`engine` being "fake"). Each model's size is its parameter `memory_mib` (else the factory's default). A
generation echoes the words of the last message (or of the prompt), one word a token, up to
`max_tokens`; at most `slots` run at once and the others wait for a slot. While the factory's `gate` is
clear, every generation stops after its first token, holding its slot, until the test sets the gate.
With `images=True` the engines declare image input, and each image of the echoed message is echoed as one
word where it stood: `<image:MEDIA_TYPE:SIZE:SHA256-PREFIX>` (`image_word`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncGenerator

from services.runner.engines.base import (
    IMAGE_MARKER,
    Delta,
    Engine,
    GenerateRequest,
    Image,
    LoadSpec,
    MemoryEstimate,
)
from services.runner.settings import RunnerSettings

MiB = 1024 * 1024
ENGINE = "fake"


class FakeEngine(Engine):
    name = ENGINE

    def __init__(self, spec: LoadSpec, engines: FakeEngines) -> None:
        super().__init__(spec)
        self.engines = engines
        self._slots = asyncio.Semaphore(engines.slots)
        self.features = frozenset({"images"}) if engines.images else frozenset()

    @classmethod
    def estimate(cls, spec: LoadSpec) -> MemoryEstimate:
        return MemoryEstimate(int(spec.parameters["memory_mib"] * MiB), "size")

    @property
    def slots(self) -> int:
        return self.engines.slots

    async def load(self) -> None:
        await asyncio.sleep(self.engines.load_delay_s)
        self.engines.log.append(("load", self.spec.model_id))

    async def unload(self) -> None:
        self.engines.log.append(("unload", self.spec.model_id))

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Delta, None]:
        words = echoed_words(request)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.messages or []) or len(
            words
        )
        count = min(len(words), request.sampling.max_tokens)
        async with self._slots:
            for i, word in enumerate(words[:count]):
                if i:
                    await self.engines.gate.wait()
                await asyncio.sleep(self.engines.token_delay_s)
                last = i == count - 1
                yield Delta(
                    text=word if i == 0 else f" {word}",
                    finish_reason=("stop" if count == len(words) else "length") if last else None,
                    prompt_tokens=prompt_tokens if last else 0,
                    completion_tokens=count if last else 0,
                )

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        vectors = [[float(len(text)), float(len(text.split()))] for text in inputs]
        return vectors, sum(len(text.split()) for text in inputs)


def echoed_words(request: GenerateRequest) -> list[str]:
    """What a FakeEngine answers to `request`: the words of its last message (each image as its
    `image_word`), or of its prompt."""
    if not request.messages:
        return (request.prompt or "").split()
    contents = [str(m.get("content", "")) for m in request.messages]
    images = iter(request.images[sum(text.count(IMAGE_MARKER) for text in contents[:-1]) :])
    pieces = contents[-1].split(IMAGE_MARKER)
    text = pieces[0] + "".join(f" {image_word(next(images))} {piece}" for piece in pieces[1:])
    return text.split()


def image_word(image: Image) -> str:
    """How a FakeEngine echoes an image it was given."""
    digest = hashlib.sha256(image.data).hexdigest()[:12]
    return f"<image:{image.media_type}:{len(image.data)}:{digest}>"


class FakeEngines:
    """The runner's engine factory for FakeEngine: settings shared by every engine it makes, and the log
    of their loads and unloads, in order (("load" | "unload", model_id))."""

    def __init__(
        self,
        *,
        memory_mib: float = 40,
        slots: int = 1,
        token_delay_s: float = 0.0,
        load_delay_s: float = 0.0,
        images: bool = False,
    ) -> None:
        self.memory_mib = memory_mib
        self.images = images
        self.slots = slots
        self.token_delay_s = token_delay_s
        self.load_delay_s = load_delay_s
        self.log: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def __call__(self, spec: LoadSpec, settings: RunnerSettings) -> FakeEngine:
        parameters = {"memory_mib": self.memory_mib, **spec.parameters}
        return FakeEngine(dataclasses.replace(spec, parameters=parameters), self)

    def unloaded(self) -> list[str]:
        return [model_id for what, model_id in self.log if what == "unload"]
