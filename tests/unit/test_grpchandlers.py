"""services/common/grpchandlers.py: one re-wrapping of a handler for the four gRPC kinds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.common.grpchandlers import HANDLER_MAKERS, Answer, AnswerStream, rewrap


async def one(request: Any, context: Any) -> str:
    return f"one {request}"


async def many(request: Any, context: Any) -> AsyncIterator[str]:
    yield f"many {request}"


def tag_unary(fn: Answer) -> Answer:
    async def wrapped(request: Any, context: Any) -> Any:
        return ("unary", await fn(request, context))

    return wrapped


def tag_stream(fn: AnswerStream) -> AnswerStream:
    async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in fn(request, context):
            yield ("stream", item)

    return wrapped


def deserialize(b: bytes) -> str:
    return b.decode()


def serialize(s: str) -> bytes:
    return s.encode()


@pytest.mark.parametrize("kind", list(HANDLER_MAKERS))
async def test_each_kind_is_wrapped_by_the_wrapper_of_its_answer(kind: tuple[bool, bool]) -> None:
    handler = HANDLER_MAKERS[kind](
        many if kind[1] else one, request_deserializer=deserialize, response_serializer=serialize
    )
    wrapped = rewrap(handler, unary=tag_unary, stream=tag_stream)
    assert (wrapped.request_streaming, wrapped.response_streaming) == kind
    assert wrapped.request_deserializer is deserialize and wrapped.response_serializer is serialize
    behaviour = wrapped.unary_unary or wrapped.unary_stream or wrapped.stream_unary or wrapped.stream_stream
    if kind[1]:
        assert [item async for item in behaviour("r", None)] == [("stream", "many r")]
    else:
        assert await behaviour("r", None) == ("unary", "one r")


def test_a_handler_without_behaviour_is_left_alone() -> None:
    handler = grpc.unary_unary_rpc_method_handler(None)  # type: ignore[arg-type]
    assert rewrap(handler, unary=tag_unary, stream=tag_stream) is handler
