"""Continuous batching in the llama.cpp engine, with a real llama.cpp and a tiny GGUF written by the tests:
several requests decoded together in one context, each with its own sampling, joining and leaving
between steps, and embeddings that never hold generation up for long."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.runner.engines.base import GenerateRequest, LoadSpec, Sampling
from services.runner.engines.llamacpp import LlamaCppEngine
from tests.fakes.tiny_gguf import write_tiny_gguf

pytest.importorskip("llama_cpp")

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = ["the cat", "a dog and the cat", "the", "the dog on the mat"]


@pytest.fixture
async def engine(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LlamaCppEngine]:
    params = {"ctx_len": 512, "n_parallel": 4, **getattr(request, "param", {})}
    path = write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=TEMPLATE)
    engine = LlamaCppEngine(LoadSpec("t/tiny", [path], None, params, {}), threads=1)
    await engine.load()
    try:
        yield engine
    finally:
        await engine.unload()


def chat(content: str, **sampling: object) -> GenerateRequest:
    return GenerateRequest(
        messages=[{"role": "user", "content": content}],
        prompt=None,
        sampling=Sampling(**{"temperature": 0.0, "max_tokens": 40, **sampling}),  # type: ignore[arg-type]
    )


async def run(engine: LlamaCppEngine, request: GenerateRequest) -> tuple[str, str | None, int, int]:
    text, finish, prompt, completion = "", None, 0, 0
    async for delta in engine.generate(request):
        text += delta.text
        if delta.finish_reason:
            finish, prompt, completion = delta.finish_reason, delta.prompt_tokens, delta.completion_tokens
    return text, finish, prompt, completion


async def test_concurrent_greedy_streams_match_their_solo_runs(engine: LlamaCppEngine) -> None:
    alone = [await run(engine, chat(p)) for p in PROMPTS]
    together = await asyncio.gather(*(run(engine, chat(p)) for p in PROMPTS))
    assert together == alone
    for text, finish, prompt, completion in together:
        assert text.strip() and finish == "length" and completion == 40 and prompt > 2
    assert engine.stats["max_batch"] == 4  # the four were decoded in the same steps


async def test_each_slot_keeps_its_own_sampling(engine: LlamaCppEngine) -> None:
    requests = [
        chat("the cat", temperature=0.9, seed=1, max_tokens=30),
        chat("the cat", temperature=0.9, seed=2, max_tokens=30),
        chat("the cat", temperature=1.5, top_k=5, seed=3, max_tokens=30),
        chat("the cat", max_tokens=7),
    ]
    alone = [await run(engine, r) for r in requests]
    together = await asyncio.gather(*(run(engine, r) for r in requests))
    assert together == alone  # same seed, same answer, whoever shares the batch
    assert len({t[0] for t in together[:3]}) == 3  # different seeds, different answers
    assert together[3][3] == 7


async def test_a_late_request_starts_at_once_and_cuts_nothing_off(engine: LlamaCppEngine) -> None:
    long = engine.generate(chat("the cat", max_tokens=400))
    first = await anext(long)
    rest = asyncio.ensure_future(_drain(long))
    short = await run(engine, chat("the dog", max_tokens=5))
    assert short[3] == 5
    assert not rest.done()  # the short one finished while the long one was still streaming
    text, finish, completion = await rest
    assert finish == "length" and completion == 400 and (first.text + text).strip()


async def _drain(stream: AsyncIterator) -> tuple[str, str | None, int]:
    text, finish, completion = "", None, 0
    async for delta in stream:
        text += delta.text
        if delta.finish_reason:
            finish, completion = delta.finish_reason, delta.completion_tokens
    return text, finish, completion


@pytest.mark.parametrize("engine", [{"n_parallel": 1}], indirect=True)
async def test_a_cancelled_request_frees_its_slot(engine: LlamaCppEngine) -> None:
    stream = engine.generate(chat("the cat", max_tokens=400))
    await anext(stream)
    await stream.aclose()  # the client went away
    _, finish, _, completion = await asyncio.wait_for(run(engine, chat("the dog", max_tokens=3)), 10)
    assert finish == "length" and completion == 3
    generated = engine.stats["generated"]
    assert generated < 400 + 3  # the cancelled one stopped early


@pytest.mark.parametrize("engine", [{"n_parallel": 1}], indirect=True)
async def test_the_next_turn_of_a_chat_reuses_the_cache(engine: LlamaCppEngine) -> None:
    first = await run(engine, chat("the cat on the mat", max_tokens=5))
    before = dict(engine.stats)
    again = await run(engine, chat("the cat on the mat", max_tokens=5))
    assert again == first
    assert engine.stats["reused_tokens"] - before["reused_tokens"] == first[2] - 1
    assert engine.stats["prompt_tokens"] - before["prompt_tokens"] == 1  # only the last prompt token


async def test_an_embedding_does_not_wait_for_a_long_generation(engine: LlamaCppEngine) -> None:
    long = engine.generate(chat("the cat", max_tokens=400))
    await anext(long)
    rest = asyncio.ensure_future(_drain(long))
    vectors, tokens = await engine.embed(["the cat", "a dog on the mat"])
    assert not rest.done()
    assert len(vectors) == 2 and len(vectors[0]) == 64 and tokens >= 4
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-4 for v in vectors)  # unit length
    assert (await rest)[2] == 400


@pytest.mark.parametrize("engine", [{"ctx_len": 64, "n_parallel": 2}], indirect=True)
async def test_context_limits_per_slot(engine: LlamaCppEngine) -> None:
    _, finish, prompt, completion = await run(engine, chat("the cat", max_tokens=0))
    assert finish == "length" and prompt + completion == 64  # the slot's whole context
    with pytest.raises(InvalidArgument) as exc:
        await run(engine, chat("the cat " * 40))
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(InvalidArgument):
        await engine.embed(["the cat " * 40])
    assert (await run(engine, chat("the dog", max_tokens=3)))[3] == 3  # still serving


async def test_unloading_fails_the_requests_in_flight(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=TEMPLATE)
    spec = LoadSpec("t/tiny", [path], None, {"ctx_len": 512, "n_parallel": 1}, {})
    engine = LlamaCppEngine(spec, threads=1)
    await engine.load()
    running = engine.generate(chat("the cat", max_tokens=400))
    await anext(running)
    waiting = asyncio.ensure_future(run(engine, chat("the dog")))
    await asyncio.sleep(0.01)
    await engine.unload()
    with pytest.raises(Exception, match="unloaded"):
        await _drain(running)
    with pytest.raises(Exception, match="unloaded"):
        await waiting


async def test_concurrent_requests_take_neighbouring_slots(engine: LlamaCppEngine) -> None:
    # Four cached conversations, then two new requests at once: llama.cpp decodes the range of
    # sequences between the lowest and highest active one, so they must sit next to each other.
    await asyncio.gather(*(run(engine, chat(p, max_tokens=5)) for p in PROMPTS))
    a = engine.generate(chat("a cat on a dog", max_tokens=200))
    b = engine.generate(chat("mat mat the", max_tokens=200))
    await anext(a)
    await anext(b)
    active = sorted(s.seq for s in engine.slot_views() if s.busy)
    assert len(active) == 2 and active[1] - active[0] == 1
    await a.aclose()
    await b.aclose()


async def test_chats_taking_turns_each_keep_their_cache(engine: LlamaCppEngine) -> None:
    # Three conversations on four slots, one turn each in turn: every second turn finds its first turn
    # still cached (a new chat takes the slot used longest ago, not the one sharing the template's
    # first tokens), so it reads only what was added since.
    starts = ["the cat on the mat", "a dog and the cat", "the dog on the mat and the cat"]
    firsts = []
    for content in starts:
        firsts.append(await run(engine, chat(content, max_tokens=6)))
    for content, (answer, _, prompt_tokens, _) in zip(starts, firsts, strict=True):
        before = dict(engine.stats)
        turn = GenerateRequest(
            messages=[
                {"role": "user", "content": content},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "the cat"},
            ],
            prompt=None,
            sampling=Sampling(temperature=0.0, max_tokens=3),
        )
        _, _, second_prompt, _ = await run(engine, turn)
        reused = engine.stats["reused_tokens"] - before["reused_tokens"]
        assert reused >= prompt_tokens, (content, reused, prompt_tokens, second_prompt)
    # A new chat after them overwrites none of the three: it takes the slot never used.
    await run(engine, chat("mat", max_tokens=2))
    assert len([s for s in engine.slot_views() if s.cache]) == 4


async def test_every_slot_starts_with_the_chat_template_opening(engine: LlamaCppEngine) -> None:
    # Decoded once at load into every slot: a new chat reads only its own part, whichever slot it takes.
    caches = {s.cache for s in engine.slot_views()}
    assert len(caches) == 1
    opening = caches.pop()
    assert opening and engine.stats["prompt_tokens"] == 0  # not counted as a request's tokens
    before = dict(engine.stats)
    text, finish, prompt_tokens, _ = await run(engine, chat("the cat", max_tokens=3))
    assert engine.stats["reused_tokens"] - before["reused_tokens"] == len(opening)
    assert engine.stats["prompt_tokens"] - before["prompt_tokens"] == prompt_tokens - len(opening)
    assert text and finish == "length"


async def test_a_constrained_slot_and_free_neighbours_each_equal_their_solo_runs(
    engine: LlamaCppEngine,
) -> None:
    """A grammar, log-probabilities, n > 1 and logit biases are per slot: decoded in the same steps as free
    requests, every answer is what it is alone."""
    from services.runner.engines.base import Constraint

    requests = [
        chat(PROMPTS[0]),
        dataclasses.replace(
            chat(PROMPTS[1]), constraint=Constraint(kind="grammar", grammar='root ::= "a"+ "b"')
        ),
        dataclasses.replace(chat(PROMPTS[2], max_tokens=10), logprobs=True, top_logprobs=2),
        dataclasses.replace(chat(PROMPTS[3]), logit_bias={300: 5.0}),
    ]
    alone = [await run(engine, r) for r in requests]
    together = await asyncio.gather(*(run(engine, r) for r in requests))
    assert together == alone
    text, finish = alone[1][0], alone[1][1]
    assert re.fullmatch("a+b?", text) and (finish == "stop") == text.endswith("b")
