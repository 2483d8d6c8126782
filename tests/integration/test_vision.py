"""Image input in the llama.cpp engine: a real llama.cpp with its multimodal library (mtmd), the suite's tiny
language model and a tiny projector written by tests/fakes/projector.py (random weights: mtmd reads the
image and splices its embeddings into the prompt, which is what these tests check, not what the model says
about it)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.runner.engines.base import (
    IMAGE_MARKER,
    GenerateRequest,
    Image,
    LoadSpec,
    Sampling,
    refuse_unsupported,
)
from services.runner.engines.llamacpp import LlamaCppEngine
from services.runner.engines.llamacpp.vision import snap_to_image_start
from tests.fakes.projector import IMAGE_TOKENS, png, write_projector
from tests.fakes.tiny_gguf import N_EMBD, write_tiny_gguf
from tests.harness import engine_answer

llama_cpp = pytest.importorskip("llama_cpp")
try:
    from llama_cpp import mtmd_cpp  # noqa: F401
except (OSError, FileNotFoundError):
    pytest.skip("llama-cpp-python was built without its multimodal library", allow_module_level=True)

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
RED, BLUE = png(color=(200, 30, 30)), png(width=12, height=6, color=(20, 40, 220))


async def load(
    tmp_path: Path, *, projector: bool = True, width: int = N_EMBD, **params: object
) -> LlamaCppEngine:
    model = write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=TEMPLATE)
    mmproj = write_projector(tmp_path / "mmproj-tiny.gguf", width) if projector else None
    spec = LoadSpec("t/tiny", [model], mmproj, {"ctx_len": 512, "n_parallel": 2, **params}, {})
    engine = LlamaCppEngine(spec, threads=1)
    await engine.load()
    return engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = await load(tmp_path)
    try:
        yield engine
    finally:
        await engine.unload()


def chat(
    messages: list[tuple[str, str]], images: tuple[bytes, ...] = (), max_tokens: int = 8
) -> GenerateRequest:
    return GenerateRequest(
        messages=[{"role": role, "content": content} for role, content in messages],
        prompt=None,
        sampling=Sampling(temperature=0.0, max_tokens=max_tokens),
        images=tuple(Image(data) for data in images),
    )


async def test_an_image_grows_the_prompt_by_its_positions(engine: LlamaCppEngine) -> None:
    _, plain, _ = await engine_answer(engine, chat([("user", "the cat")]))
    text, with_image, _ = await engine_answer(engine, chat([("user", f"the cat {IMAGE_MARKER}")], (RED,)))
    # mtmd wraps the image's embeddings in <start_of_image> ... <end_of_image> (text of the model's own).
    assert with_image >= plain + IMAGE_TOKENS + 2
    assert text and engine.stats["images"] == 1


async def test_several_images_in_one_and_in_several_messages(engine: LlamaCppEngine) -> None:
    one = chat([("user", f"{IMAGE_MARKER} and {IMAGE_MARKER}")], (RED, BLUE))
    _, tokens_one, _ = await engine_answer(engine, one)
    two = chat(
        [("user", f"look {IMAGE_MARKER}"), ("assistant", "red"), ("user", f"and {IMAGE_MARKER}")], (RED, BLUE)
    )
    _, tokens_two, _ = await engine_answer(engine, two)
    _, plain, _ = await engine_answer(engine, chat([("user", "look"), ("assistant", "red"), ("user", "and")]))
    assert engine.stats["images"] == 4
    assert tokens_one > 2 * IMAGE_TOKENS and tokens_two >= plain + 2 * IMAGE_TOKENS


async def test_the_image_changes_what_the_model_reads(engine: LlamaCppEngine) -> None:
    # Random weights, but deterministic: another image is other embeddings, so (almost surely) another answer.
    red = await engine_answer(engine, chat([("user", f"what is it {IMAGE_MARKER}")], (RED,), max_tokens=16))
    again = await engine_answer(engine, chat([("user", f"what is it {IMAGE_MARKER}")], (RED,), max_tokens=16))
    blue = await engine_answer(engine, chat([("user", f"what is it {IMAGE_MARKER}")], (BLUE,), max_tokens=16))
    assert red[0] == again[0]
    assert red[0] != blue[0]


async def test_a_continued_chat_reuses_its_image_from_the_cache(engine: LlamaCppEngine) -> None:
    first = [("user", f"see {IMAGE_MARKER}")]
    answer, prompt, _ = await engine_answer(engine, chat(first, (RED,)))
    images = engine.stats["images"]
    _, _, cached = await engine_answer(
        engine, chat([*first, ("assistant", answer), ("user", "more")], (RED,))
    )
    assert cached >= prompt - 1  # the image's positions came from the slot's cache
    assert engine.stats["images"] == images  # and it was not encoded again


async def test_a_changed_image_is_read_again(engine: LlamaCppEngine) -> None:
    first = [("user", f"see {IMAGE_MARKER}")]
    answer, _, _ = await engine_answer(engine, chat(first, (RED,)))
    images = engine.stats["images"]
    await engine_answer(engine, chat([*first, ("assistant", answer), ("user", "more")], (BLUE,)))
    assert engine.stats["images"] == images + 1


async def test_images_join_the_batch_next_to_text_only_streams(engine: LlamaCppEngine) -> None:
    alone = await engine_answer(engine, chat([("user", "the dog")], max_tokens=24))
    together = await asyncio.gather(
        engine_answer(engine, chat([("user", "the dog")], max_tokens=24)),
        engine_answer(engine, chat([("user", f"the cat {IMAGE_MARKER}")], (RED,), max_tokens=24)),
    )
    assert together[0][:2] == alone[:2]  # the text-only stream is the same with an image read beside it
    assert together[1][0] and engine.stats["max_batch"] == 2


async def test_a_broken_image_is_a_clear_error_and_the_engine_goes_on(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidArgument, match="image 2 of the request could not be decoded") as info:
        await engine_answer(
            engine, chat([("user", f"{IMAGE_MARKER} {IMAGE_MARKER}")], (RED, b"not an image at all"))
        )
    assert info.value.param == "messages"
    text, _, _ = await engine_answer(engine, chat([("user", f"fine {IMAGE_MARKER}")], (RED,)))
    assert text


async def test_images_and_markers_must_match(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidArgument, match="do not match"):
        await engine_answer(engine, chat([("user", "no place for it")], (RED,)))


async def test_a_model_without_a_projector_refuses_images(tmp_path: Path) -> None:
    engine = await load(tmp_path, projector=False)
    try:
        with pytest.raises(InvalidArgument, match="t/tiny cannot see images: it has no vision projector"):
            refuse_unsupported(engine, chat([("user", IMAGE_MARKER)], (RED,)))
    finally:
        await engine.unload()


async def test_a_projector_of_another_width_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"could not load the projector mmproj-tiny\.gguf"):
        await load(tmp_path, width=N_EMBD * 2)


async def test_the_prompt_may_not_outgrow_the_context_with_its_images(tmp_path: Path) -> None:
    engine = await load(tmp_path, ctx_len=16)
    try:
        with pytest.raises(InvalidArgument, match="context holds"):
            await engine_answer(
                engine, chat([("user", f"{IMAGE_MARKER} {IMAGE_MARKER} {IMAGE_MARKER}")], (RED, RED, RED))
            )
    finally:
        await engine.unload()


def test_a_cut_inside_an_image_moves_back_to_its_start() -> None:
    tokens = [5, 6, -7, -8, -8, -8, 9, -7, -8, 10]
    assert snap_to_image_start(tokens, 4) == 2
    assert snap_to_image_start(tokens, 2) == 2
    assert snap_to_image_start(tokens, 6) == 6
    assert snap_to_image_start(tokens, 8) == 7
    assert snap_to_image_start(tokens, 1) == 1


def test_requests_carry_images_in_order() -> None:
    request = chat([("user", f"{IMAGE_MARKER}")], (RED, BLUE))
    assert [i.data for i in request.images] == [RED, BLUE]
    assert dataclasses.replace(request, images=()).images == ()
