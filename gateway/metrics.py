"""Per request on the gateway: the request id (from the client's `X-Request-Id`, else a new one; in the
response, in every log line, and passed on to the services as gRPC metadata), the runner that served it
(`X-Jan-Runner`, set by the serving layer) and the Prometheus metrics served at `/metrics`: requests by
route template, method and status, their durations, errors by code; outstanding inference requests by
model and by runner, and each model's replicas (gateway/routing.py, gateway/serving.py).
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.logs import REQUEST_ID_HEADER, request_id, valid_request_id
from services.common.metrics import ERRORS, LATENCY_BUCKETS
from services.common.prometheus import CONTENT_TYPE, REGISTRY, Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "jan_http_requests_total",
    "HTTP requests answered by the gateway, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "jan_http_request_duration_seconds",
    "Duration of HTTP requests (a stream: until its last byte), by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge("jan_http_requests_in_progress", "HTTP requests being served by the gateway.")
MODEL_OUTSTANDING = Gauge(
    "jan_gateway_model_outstanding_requests",
    "Inference requests this gateway has sent to a model's replicas and not seen finish, by model.",
    ["model"],
)
RUNNER_OUTSTANDING = Gauge(
    "jan_gateway_runner_outstanding_requests",
    "Inference requests this gateway has sent to a runner and not seen finish, by runner.",
    ["runner"],
)
MODEL_REPLICAS = Gauge(
    "jan_gateway_model_replicas",
    "Replicas of a model running, as the catalog last placed it for this gateway, by model.",
    ["model"],
)
# The runner that served the current request (the serving layer appends its name): the X-Jan-Runner header.
served_by: ContextVar[list[str] | None] = ContextVar("served_by", default=None)
RUNNER_HEADER = b"x-jan-runner"
# Paths that match no route share one label, so that scanners cannot grow the label set without bound.
UNMATCHED = "<unmatched>"
_HEADER = REQUEST_ID_HEADER.lower().encode()


def count_error(code: str | None, status: int) -> None:
    """Called for every error answered (gateway/errors.py), with its code or else its HTTP status."""
    ERRORS.labels("gateway", code or str(status)).inc()


class RequestMiddleware:
    """Pure ASGI, outermost: it sees every answer, the 401s and 413s of the other middlewares included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope["headers"] if k == _HEADER), b"")
        rid = valid_request_id(sent.decode("latin-1"))
        token = request_id.set(rid)
        runner: list[str] = []
        served_token = served_by.set(runner)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (_HEADER, rid.encode())]
                if runner:
                    headers.append((RUNNER_HEADER, runner[-1].encode()))
                message["headers"] = headers
            await send(message)

        HTTP_IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            HTTP_IN_PROGRESS.dec()
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
            method = scope["method"]
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_SECONDS.labels(method, template).observe(time.perf_counter() - started)
            served_by.reset(served_token)
            request_id.reset(token)


def install_metrics(app: FastAPI) -> None:
    """Adds the request middleware (call it after every other middleware: it must be the outermost) and
    `GET /metrics` (Prometheus text format; outside the OpenAPI document, which describes the JSON API)."""

    async def metrics(request: Request) -> Response:
        return Response(REGISTRY.exposition(), media_type=CONTENT_TYPE)

    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMiddleware)
