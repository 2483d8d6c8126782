"""The request body bound (`JAN_GATEWAY_MAX_BODY_BYTES`): 413 `request_too_large` in the one error shape.

A declared Content-Length over the bound is refused before a byte of the body is read; a chunked body
is counted as it arrives and refused once it passes the bound, so no route ever buffers more (the HTTP
server discards the rest of the body, and the client, still sending, gets its answer). Archive
imports stream to the catalog, which has limits of its own on what an archive may hold, and are exempt.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_json

# Routes whose body is a stream passed on as it arrives, not a document parsed in memory.
STREAMED_BODIES = frozenset({"/v1/folders/import"})


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a chunked body passes the bound (FastAPI lets HTTPException through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes (JAN_GATEWAY_MAX_BODY_BYTES)")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in STREAMED_BODIES:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    status, message = (413, BodyTooLarge(self.max_bytes).detail)
                    if not value.isdigit():
                        status, message = (400, "the Content-Length header is not a number")
                    code = "request_too_large" if status == 413 else None
                    response = error_json(status, message, code, path=scope["path"])
                    await response(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def install_body_limit(app: FastAPI, max_bytes: int) -> None:
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_json(413, str(exc.detail), "request_too_large", path=request.url.path)
