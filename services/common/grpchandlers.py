"""The four kinds of gRPC method handler (a request and a response each one message or a stream) and the
one way the server interceptors wrap a handler's behaviour whatever its kind (`WrappingInterceptor`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

# grpc's maker of a method handler, by (the request streams, the response streams).
HANDLER_MAKERS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}

# A method's behaviour, called with (request or request iterator, context): one answer, or a stream.
Answer = Callable[..., Awaitable[Any]]
AnswerStream = Callable[..., AsyncIterator[Any]]
# How an interceptor wraps a call's behaviour when it answers once, and when it answers a stream.
Wrappers = tuple[Callable[[Answer], Answer], Callable[[AnswerStream], AnswerStream]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    *,
    unary: Callable[[Answer], Answer],
    stream: Callable[[AnswerStream], AnswerStream],
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped by `unary` when it answers one message, by `stream` when it
    answers a stream; the (de)serialisers stay."""
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if behaviour is None:
        return handler
    wrap: Callable[[Any], Any] = stream if kind[1] else unary
    return HANDLER_MAKERS[kind](
        wrap(behaviour),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class WrappingInterceptor(aio.ServerInterceptor):
    """A server interceptor that wraps the behaviour of every call; a subclass says how, per call."""

    def wrappers(self, details: grpc.HandlerCallDetails) -> Wrappers:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED
            return handler
        unary, stream = self.wrappers(handler_call_details)
        return rewrap(handler, unary=unary, stream=stream)
