"""The runner's servicer turning a chat's messages, images included, into the engines' request."""

from __future__ import annotations

import pytest

from jan.runner.v1 import runner_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.runner.engines.base import IMAGE_MARKER, Image
from services.runner.servicer import generate_request, tokenize_request


def image_part(data: bytes, media_type: str = "image/png") -> pb.ContentPart:
    return pb.ContentPart(image=pb.Image(data=data, media_type=media_type))


def chat(*messages: pb.ChatMessage) -> pb.GenerateRequest:
    return pb.GenerateRequest(model_id="m/m", chat=pb.ChatMessages(messages=messages))


def test_images_stand_at_markers_in_order() -> None:
    request = chat(
        pb.ChatMessage(role="system", content="be brief"),
        pb.ChatMessage(
            role="user", parts=[pb.ContentPart(text="see "), image_part(b"A"), pb.ContentPart(text="!")]
        ),
        pb.ChatMessage(role="user", parts=[image_part(b"B", "image/jpeg"), image_part(b"C")]),
    )
    engine = generate_request(request, {})
    assert engine.messages is not None
    assert [m["content"] for m in engine.messages] == [
        "be brief",
        f"see {IMAGE_MARKER}!",
        IMAGE_MARKER * 2,
    ]
    assert engine.images == (Image(b"A", "image/png"), Image(b"B", "image/jpeg"), Image(b"C", "image/png"))


def test_a_chat_without_images_may_say_the_marker() -> None:
    engine = generate_request(chat(pb.ChatMessage(role="user", content=f"what is {IMAGE_MARKER}?")), {})
    assert engine.messages is not None and engine.messages[0]["content"] == f"what is {IMAGE_MARKER}?"
    assert engine.images == ()


@pytest.mark.parametrize(
    "text_message",
    [
        pb.ChatMessage(role="user", content=f"what is {IMAGE_MARKER}?"),
        pb.ChatMessage(role="user", parts=[pb.ContentPart(text=IMAGE_MARKER)]),
    ],
)
def test_with_images_the_marker_in_text_is_refused(text_message: pb.ChatMessage) -> None:
    request = chat(text_message, pb.ChatMessage(role="user", parts=[image_part(b"A")]))
    with pytest.raises(InvalidArgument, match="may not contain") as info:
        generate_request(request, {})
    assert info.value.param == "messages"


def test_counting_the_tokens_of_images_is_refused_clearly() -> None:
    request = pb.TokenizeRequest(
        model_id="m/m", chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", parts=[image_part(b"A")])])
    )
    with pytest.raises(InvalidArgument, match="tokens of images"):
        tokenize_request(request)
