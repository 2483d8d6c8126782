"""Prometheus metrics every gRPC service shares, and the per-call interceptor that feeds them.

The interceptor (registered by `GrpcServer` outside the error interceptor) counts each call by method
and status code, times it, counts errors by their stable `code` (the `jan-error-code` trailer), and sets
the request id of the call (gRPC metadata `x-request-id`, see `services.common.logs`) for the log lines
written while it runs. `start_metrics_server` serves the registry over HTTP on the service's
`metrics_port` (0 = off), on the service's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from services.common.errors import ERROR_CODE_KEY
from services.common.grpchandlers import Answer, AnswerStream, Wrappers, WrappingInterceptor
from services.common.logs import REQUEST_ID_METADATA, new_request_id, request_id
from services.common.prometheus import REGISTRY, Counter, Histogram, Registry, bound_port, serve_metrics

log = logging.getLogger(__name__)

# Latency buckets from a cached catalog read (~1 ms) to a model load or a long generation (minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

GRPC_HANDLED = Counter(
    "jan_grpc_server_handled_total",
    "gRPC calls completed by this service, by method and status code.",
    ["service", "method", "code"],
)
GRPC_SECONDS = Histogram(
    "jan_grpc_server_handling_seconds",
    "Duration of gRPC calls (a stream: until its last message), by method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter(
    "jan_errors_total",
    "Errors answered, by component and their stable error code (model_not_found, queue_full, ...).",
    ["component", "code"],
)


def _split_method(full: str) -> tuple[str, str]:
    # "/jan.catalog.v1.CatalogService/ListModels" -> ("jan.catalog.v1.CatalogService", "ListModels")
    service, _, method = full.lstrip("/").rpartition("/")
    return service or "unknown", method


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str):
            return value
    return new_request_id()


class MetricsInterceptor(WrappingInterceptor):
    """Per call: the request id for the logs, a count by status code, a duration, errors by code."""

    def wrappers(self, details: grpc.HandlerCallDetails) -> Wrappers:
        service, method = _split_method(details.method)
        rid = _request_id(details)
        component = service.split(".")[1] if service.count(".") >= 2 else service

        def finish(context: aio.ServicerContext, started: float, failed: BaseException | None) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.CANCELLED if failed is not None else grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            GRPC_HANDLED.labels(service, method, name).inc()
            GRPC_SECONDS.labels(service, method).observe(time.perf_counter() - started)
            if name not in ("OK", "CANCELLED"):
                trailers = dict(context.trailing_metadata() or ())
                error = str(trailers.get(ERROR_CODE_KEY) or name.lower())
                ERRORS.labels(component, error).inc()
                # One line per refused call, under the caller's request id (set by this interceptor).
                log.info("%s %s: %s (%s)", method, name, error, context.details() or "")

        def wrap_unary(fn: Answer) -> Answer:
            async def wrapped(request: Any, context: aio.ServicerContext) -> Any:
                request_id.set(rid)  # in the call's own task: gone with it, nothing to reset
                started, failed = time.perf_counter(), None
                try:
                    return await fn(request, context)
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    finish(context, started, failed)

            return wrapped

        def wrap_stream(fn: AnswerStream) -> AnswerStream:
            async def wrapped(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                started, failed = time.perf_counter(), None
                request_id.set(rid)
                try:
                    async for item in fn(request, context):
                        yield item
                        request_id.set(rid)  # each step may run in another context: set it again
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    finish(context, started, failed)

            return wrapped

        return wrap_unary, wrap_stream


async def start_metrics_server(port: int, host: str, registry: Registry = REGISTRY) -> asyncio.Server | None:
    """Serves `registry` in the Prometheus text format at http://host:port/metrics on the running loop;
    None when `port` is 0 (off). A port that cannot be bound ends the process, naming it."""
    if not port:
        return None
    try:
        server = await serve_metrics(host, port, registry)
    except OSError as exc:
        raise SystemExit(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    log.info("metrics on http://%s:%d/metrics", host, bound_port(server))
    return server
