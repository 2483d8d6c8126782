"""One logging set-up for every process: lines on stderr, as text or as one JSON object a line
(`JAN_LOG_FORMAT`), each carrying the id of the request being served, and, in a process that serves two
services (local mode's control plane), the service each line was written for.

The request id comes from the client's `X-Request-Id` (or is made by the gateway), travels to the services
as gRPC metadata `x-request-id`, and lives in the `request_id` context variable while the request is
served (set by the gateway's middleware and by the services' interceptor), so every log line written on
the request's behalf, in any process, can be found with it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from typing import Any, Literal

from grpc import aio

from services.common.envsettings import Settings, setting

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_METADATA = "x-request-id"
# What a client may send as a request id: one printable token, short enough for a log line. Anything
# else is replaced, so a header value can never smuggle CR/LF or a fake JSON field into the logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# Set only where one process serves several services: the context of each one's task (`service_context`).
service: contextvars.ContextVar[str] = contextvars.ContextVar("service", default="")

LogFormat = Literal["text", "json"]


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str:
    """The client's id when it is a safe token, else a new one."""
    return value if value and _REQUEST_ID.match(value) else new_request_id()


def service_context(name: str) -> contextvars.Context:
    """A copy of the current context in which `service` is `name`: what a task is created with
    (`asyncio.create_task(..., context=)`) to have the lines written on its behalf name the service (the
    tasks it starts, gRPC's per-call ones included, inherit it)."""
    context = contextvars.copy_context()
    context.run(service.set, name)
    return context


class _ContextFilter(logging.Filter):
    """Puts what the context knows on each record: the request id and, where set, the service."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.service = service.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, service (where a process serves several),
    logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            **({"service": name} if (name := getattr(record, "service", "")) else {}),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level [service] logger: message [request_id=…]`, the service only where a process serves
    several."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(service_tag)s%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "service", "")
        record.service_tag = f"[{name}] " if name else ""
        line = super().format(record)
        rid = getattr(record, "request_id", "")
        return f"{line} [request_id={rid}]" if rid else line


def setup_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class LogSettings(Settings):
    """Shared by every process (JAN_LOG_*); the level is each service's own `log_level`."""

    env_prefix = "JAN_LOG_"

    format: LogFormat = setting(
        default="text", description="'text' lines for people, or 'json': one object a line for collectors."
    )


def _with_request_id(details: aio.ClientCallDetails) -> aio.ClientCallDetails:
    rid = request_id.get()
    if not rid:
        return details
    metadata = aio.Metadata(*(details.metadata or ()))
    metadata[REQUEST_ID_METADATA] = rid
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


class _UnaryStream(aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


class _StreamUnary(aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_request_id(details), request_iterator)


def request_id_interceptors() -> list[aio.ClientInterceptor]:
    """Client interceptors that send the current request id as `x-request-id` metadata on every call."""
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary()]
