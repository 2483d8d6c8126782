"""The error shape of every response, in the dialect of the route that answers it, and the one table that
turns a gRPC status into an HTTP status.

OpenAI's routes (and the Responses API, and Jan's own) answer `{"error": {"message", "type", "param",
"code"}}`; Ollama's routes (`/api/...`) answer `{"error": "<message>"}` as Ollama does; Anthropic's
(`/v1/messages...`) answer `{"type": "error", "error": {"type", "message"}}`. Ollama and Anthropic call
a request that does not validate a 400, where OpenAI says 422."""

from __future__ import annotations

import enum
import logging
import re

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import aio
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.metrics import count_error
from gateway.protocol.common import Unsupported
from services.common.errors import ERROR_CODE_KEY, ERROR_PARAM_KEY

log = logging.getLogger(__name__)

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Error codes whose HTTP status is more precise than their gRPC status says.
# A remote API (api engine) that refuses our key or does not know the model is a bad gateway: the caller
# did nothing wrong and cannot fix it in the request; a remote that is too slow is a gateway timeout.
CODE_TO_HTTP = {
    "invalid_model_file": 422,
    "remote_auth_failed": 502,
    "remote_model_not_found": 502,
    "remote_error": 502,
    "remote_timeout": 504,
}

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    502: "bad_gateway_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """The `responses=` entry a route declares so the OpenAPI document lists its errors."""
    return {
        status: {"model": ErrorResponse, "description": _TYPES.get(status, "error")} for status in statuses
    }


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


# Anthropic's error types (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class Dialect(enum.Enum):
    OPENAI = "openai"
    OLLAMA = "ollama"
    ANTHROPIC = "anthropic"

    @classmethod
    def of_path(cls, path: str) -> Dialect:
        """The dialect a route speaks: the one place that knows which paths are whose."""
        if path == "/api" or path.startswith("/api/"):
            return cls.OLLAMA
        if path == "/v1/messages" or path.startswith("/v1/messages/"):
            return cls.ANTHROPIC
        return cls.OPENAI


def error_body(dialect: Dialect, status: int, message: str, code: str | None, param: str | None) -> dict:
    """The error as `dialect` writes it (also the payload of an error event in a stream)."""
    if dialect is Dialect.OLLAMA:
        return {"error": message}
    if dialect is Dialect.ANTHROPIC:
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_json(
    status: int, message: str, code: str | None = None, param: str | None = None, *, path: str = ""
) -> JSONResponse:
    """The error response of a request to `path`, in that route's dialect."""
    count_error(code, status)
    dialect = Dialect.of_path(path)
    if status == 422 and dialect is not Dialect.OPENAI:
        status = 400
    return JSONResponse(error_body(dialect, status, message, code, param), status_code=status)


def from_rpc_error(exc: aio.AioRpcError, service: str) -> APIError:
    trailers = dict(exc.trailing_metadata() or ())
    code = trailers.get(ERROR_CODE_KEY)
    param = trailers.get(ERROR_PARAM_KEY)
    status = CODE_TO_HTTP.get(str(code), GRPC_TO_HTTP.get(exc.code(), 500))
    message = exc.details() or exc.code().name
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and code is None:
        message = f"the {service} service is unavailable ({exc.code().name.lower()}): try again shortly"
        code = f"{service}_unavailable"
    if status == 500:
        log.error("%s failed: %s %s", service, exc.code().name, exc.details())
        message = f"internal error in the {service} service"
    return APIError(
        status, str(message), code=str(code) if code else None, param=str(param) if param else None
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_json(exc.status, exc.message, exc.code, exc.param, path=request.url.path)

    @app.exception_handler(Unsupported)
    async def _unsupported(request: Request, exc: Unsupported) -> JSONResponse:
        return error_json(400, str(exc), "unsupported_parameter", exc.param, path=request.url.path)

    @app.exception_handler(orjson.JSONEncodeError)
    async def _unencodable(request: Request, exc: orjson.JSONEncodeError) -> JSONResponse:
        # A schema, tool parameters or format holding what JSON parsing accepts and the services cannot
        # take (integers beyond 64 bits, nesting deeper than 255): the request's fault, named as such.
        message = f"request: a JSON value the services cannot store ({exc})"
        return error_json(422, message, "invalid_request", None, path=request.url.path)

    @app.exception_handler(aio.AioRpcError)
    async def _rpc_error(request: Request, exc: aio.AioRpcError) -> JSONResponse:
        err = from_rpc_error(exc, "catalog")
        return error_json(err.status, err.message, err.code, err.param, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        reason = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        field, _, said = reason.partition(": ")
        if not loc and said and " " not in field:
            # A whole-body check that names its field itself ("temperature: a boolean is not valid here").
            loc, reason = [field], said
        message = f"{'.'.join(loc) or 'request'}: {reason}"
        return error_json(422, message, "invalid_request", ".".join(loc) or None, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Keep the exception's headers: a 405 must say which methods are allowed (RFC 9110 `Allow`).
        code = "method_not_allowed" if exc.status_code == 405 else None
        response = error_json(exc.status_code, str(exc.detail), code, None, path=request.url.path)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_json(500, "internal error in the gateway", "internal_error", None, path=request.url.path)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document lists for the request's path. Starlette's 405 names only the
    methods of the first route that matched, and FastAPI makes one route per method."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    paths = request.app.openapi().get("paths", {})
    if path in paths:  # a literal path wins over a template that also matches it (/v1/responses/{id})
        return sorted(m.upper() for m in paths[path] if m in _HTTP_METHODS)
    for template, operations in paths.items():
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", template)
        )
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in operations if m in _HTTP_METHODS}
    return sorted(methods)


_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
