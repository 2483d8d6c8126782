"""Domain errors shared by every service, and the one gRPC interceptor that maps them to status codes.

Cores raise these; servicers never build gRPC errors by hand. The error's `code` (a stable snake_case
string, like google.rpc.ErrorInfo.reason) travels in trailing metadata so the gateway can fill the
OpenAI error shape without ever parsing message text.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
from grpc import aio

from services.common.grpchandlers import Answer, AnswerStream, Wrappers, WrappingInterceptor

log = logging.getLogger(__name__)

# Trailing metadata keys carrying the structured error.
ERROR_CODE_KEY = "jan-error-code"
ERROR_PARAM_KEY = "jan-error-param"


class JanError(Exception):
    """Base of every domain error: a message for humans, a stable code, an optional offending param."""

    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param


class InvalidArgument(JanError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    default_code = "invalid_argument"


class NotFound(JanError):
    status = grpc.StatusCode.NOT_FOUND
    default_code = "not_found"


class AlreadyExists(JanError):
    status = grpc.StatusCode.ALREADY_EXISTS
    default_code = "already_exists"


class FailedPrecondition(JanError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    default_code = "failed_precondition"


class PermissionDenied(JanError):
    status = grpc.StatusCode.PERMISSION_DENIED
    default_code = "permission_denied"


class ResourceExhausted(JanError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_code = "resource_exhausted"


class Unavailable(JanError):
    status = grpc.StatusCode.UNAVAILABLE
    default_code = "unavailable"


class Unimplemented(JanError):
    status = grpc.StatusCode.UNIMPLEMENTED
    default_code = "unimplemented"


def storage_error(exc: OSError) -> JanError | None:
    """A file system that refuses a write (full, read-only, permissions) is not an internal error: it says
    so, naming the folder only (never the server's full path)."""
    where = f" (folder {Path(exc.filename).parent.name!r})" if isinstance(exc.filename, str) else ""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(
            f"no space left on the model storage{where}: {reason}", code="insufficient_space"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return Unavailable(f"the model storage refused a write{where}: {reason}", code="storage_unavailable")
    return None


def _trailers(err: JanError) -> tuple[tuple[str, str], ...]:
    items = [(ERROR_CODE_KEY, err.code)]
    if err.param:
        items.append((ERROR_PARAM_KEY, err.param))
    return tuple(items)


class ErrorInterceptor(WrappingInterceptor):
    """Maps JanError to its status code; anything else becomes INTERNAL with a logged traceback."""

    def wrappers(self, details: grpc.HandlerCallDetails) -> Wrappers:
        method = details.method

        async def abort(context: aio.ServicerContext, exc: BaseException) -> None:
            if isinstance(exc, OSError) and (storage := storage_error(exc)) is not None:
                log.warning(
                    "%s: %s", method, exc
                )  # the operator's to fix: the full path goes to the log only
                exc = storage
            if isinstance(exc, JanError):
                context.set_trailing_metadata(_trailers(exc))
                await context.abort(exc.status, exc.message)
            log.exception("unexpected error in %s", method, exc_info=exc)
            context.set_trailing_metadata(((ERROR_CODE_KEY, "internal_error"),))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the service log)")

        def wrap_unary(fn: Answer) -> Answer:
            async def wrapped(request: Any, context: aio.ServicerContext) -> Any:
                try:
                    return await fn(request, context)
                except (JanError, Exception) as exc:
                    if isinstance(exc, aio.AbortError):
                        raise
                    await abort(context, exc)

            return wrapped

        def wrap_stream(fn: AnswerStream) -> AnswerStream:
            async def wrapped(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in fn(request, context):
                        yield item
                except (JanError, Exception) as exc:
                    if isinstance(exc, aio.AbortError):
                        raise
                    await abort(context, exc)

            return wrapped

        return wrap_unary, wrap_stream
