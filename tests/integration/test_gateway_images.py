"""Image input through the real in-process gateway, catalog and runner (tests/harness.py), the runner's
engine being the fake one (tests/fakes/engine.py) standing in for llama.cpp: each dialect's images reach
the runner as bytes, in their places among the text (the fake engine echoes each image it gets as
`<image:TYPE:SIZE:SHA>` where it stood); a model that cannot see images is refused by the runner with a
400 in each dialect's shape; a bad image is a 400 before any model starts; token counts refuse images.
Image URLs name a loopback server (tests/fakes/images.py)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.runner.engines.base import Image
from tests.fakes.engine import FakeEngines, image_word
from tests.fakes.images import GIF, JPEG, PNG, ImageServer, data_url
from tests.harness import TINY_CHAT, Stack, serving_stack, write_tiny_chat_model


@dataclass
class Env:
    stack: Stack
    engines: FakeEngines
    images: ImageServer


async def _env(tmp_path: Path, *, vision: bool) -> AsyncIterator[Env]:
    root = tmp_path / "jan"
    write_tiny_chat_model(root, max_tokens=64)
    engines = FakeEngines(images=vision)
    async with (
        ImageServer() as images,
        serving_stack(root, engines={"llamacpp": engines}, allow_private_networks=True) as stack,
    ):
        yield Env(stack, engines, images)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path, vision=True):
        yield e


@pytest.fixture
async def blind(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path, vision=False):
        yield e


def word(data: bytes, media_type: str) -> str:
    return image_word(Image(data=data, media_type=media_type))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def openai_body(*content: dict[str, Any]) -> dict[str, Any]:
    return {"model": TINY_CHAT, "messages": [{"role": "user", "content": list(content)}]}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def image_url(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


async def test_openai_chat_images_reach_the_runner_in_order(env: Env) -> None:
    jpeg_url = env.images.add("/photo.jpg", JPEG, "image/jpeg")
    answer = await env.stack.sdk.chat.completions.create(
        model=TINY_CHAT,
        messages=[
            {"role": "user", "content": "earlier turn"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [text("first "), image_url(data_url(PNG)), text("then "), image_url(jpeg_url)],
            },
        ],
    )
    expected = f"first {word(PNG, 'image/png')} then {word(JPEG, 'image/jpeg')}"
    assert answer.choices[0].message.content == expected
    assert env.images.requests == ["/photo.jpg"]


async def test_anthropic_image_blocks_reach_the_runner_in_order(env: Env) -> None:
    gif_url = env.images.add("/anim.gif", GIF, "application/octet-stream")  # typed by its bytes
    body = {
        "model": TINY_CHAT,
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)},
                    },
                    {"type": "text", "text": "and"},
                    {"type": "image", "source": {"type": "url", "url": gif_url}},
                ],
            }
        ],
    }
    resp = await env.stack.http.post("/v1/messages", json=body)
    assert resp.status_code == 200, resp.text
    expected = f"{word(PNG, 'image/png')} and {word(GIF, 'image/gif')}"
    assert resp.json()["content"] == [{"type": "text", "text": expected, "citations": None}]


async def test_responses_input_images_reach_the_runner(env: Env) -> None:
    content = [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": data_url(JPEG, "image/jpeg"), "detail": "auto"},
    ]
    body = {"model": TINY_CHAT, "input": [{"role": "user", "content": content}]}
    resp = await env.stack.http.post("/v1/responses", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"][0]["content"][0]["text"] == f"see {word(JPEG, 'image/jpeg')}"


async def test_ollama_images_reach_the_runner_before_the_text(env: Env) -> None:
    message = {"role": "user", "content": "what is it", "images": [b64(PNG), b64(GIF)]}
    resp = await env.stack.http.post(
        "/api/chat", json={"model": TINY_CHAT, "messages": [message], "stream": False}
    )
    assert resp.status_code == 200, resp.text
    expected = f"{word(PNG, 'image/png')} {word(GIF, 'image/gif')} what is it"
    assert resp.json()["message"]["content"] == expected
    body = {"model": TINY_CHAT, "prompt": "this", "images": [b64(JPEG)], "stream": False}
    resp = await env.stack.http.post("/api/generate", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["response"] == f"{word(JPEG, 'image/jpeg')} this"


async def test_a_model_that_cannot_see_images_is_refused_by_the_runner_in_each_dialect(blind: Env) -> None:
    http = blind.stack.http
    resp = await http.post("/v1/chat/completions", json=openai_body(text("x"), image_url(data_url(PNG))))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "messages")
    assert error["message"].startswith("image input is not supported")
    content = [{"type": "input_image", "image_url": data_url(PNG)}]
    resp = await http.post(
        "/v1/responses", json={"model": TINY_CHAT, "input": [{"role": "user", "content": content}]}
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)}}
    body = {"model": TINY_CHAT, "max_tokens": 8, "messages": [{"role": "user", "content": [block]}]}
    resp = await http.post("/v1/messages", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("messages: image input is not supported")
    message = {"role": "user", "content": "x", "images": [b64(PNG)]}
    resp = await http.post("/api/chat", json={"model": TINY_CHAT, "messages": [message], "stream": False})
    assert resp.status_code == 400 and "image input is not supported" in resp.json()["error"]


async def test_a_bad_image_is_a_400_before_any_model_starts(env: Env) -> None:
    http = env.stack.http
    broken = "data:image/png;base64,not*base64"
    resp = await http.post("/v1/chat/completions", json=openai_body(image_url(broken)))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_image", "messages.0.content.0.image_url.url")
    resp = await http.post(
        "/v1/chat/completions", json=openai_body(image_url(env.images.status("/gone", 404)))
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "image_unreachable"
    message = {"role": "user", "content": "x", "images": ["%%%"]}
    resp = await http.post("/api/chat", json={"model": TINY_CHAT, "messages": [message], "stream": False})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("messages.0.images.0: the image's data is not valid base64")
    assert env.engines.log == []  # no model was loaded for any of them


async def test_token_counts_refuse_images(env: Env) -> None:
    http = env.stack.http
    resp = await http.post("/v1/tokenize", json=openai_body(text("x"), image_url(data_url(PNG))))
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "messages.0.content.1.image_url.url"
    block = {"type": "image", "source": {"type": "url", "url": "https://images.example/a.png"}}
    count = {"model": TINY_CHAT, "messages": [{"role": "user", "content": [block]}]}
    resp = await http.post("/v1/messages/count_tokens", json=count)
    assert resp.status_code == 400
    assert "counting the tokens of an image is not supported" in resp.json()["error"]["message"]
    content = [{"type": "input_image", "image_url": data_url(PNG)}]
    body = {"model": TINY_CHAT, "input": [{"role": "user", "content": content}]}
    resp = await http.post("/v1/responses/input_tokens", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input.0.content.0.image_url"
    assert env.engines.log == [] and env.images.requests == []


async def test_an_image_of_the_full_size_fits_the_default_body_bound_as_a_data_url(env: Env) -> None:
    # JAN_GATEWAY_MAX_BODY_BYTES (32 MiB) leaves room for an image of JAN_GATEWAY_MAX_IMAGE_BYTES (20 MiB)
    # as base64, 4/3 of its size.
    settings = env.stack.gateway.app.state.settings
    image = PNG + bytes(settings.max_image_bytes - len(PNG))
    answer = await env.stack.sdk.chat.completions.create(
        model=TINY_CHAT, messages=[{"role": "user", "content": [image_url(data_url(image))]}]
    )
    assert answer.choices[0].message.content == word(image, "image/png")
    too_large = data_url(image + b"\x00")
    resp = await env.stack.http.post("/v1/chat/completions", json=openai_body(image_url(too_large)))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "image_too_large"
