"""Builds and runs a service's grpc.aio server the same way for every service.

Every server gets the metrics and error interceptors, the standard grpc.health.v1 health service
(per-service status plus the overall "" entry) and server reflection, and stops gracefully on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import ErrorInterceptor
from services.common.grpchandlers import HANDLER_MAKERS
from services.common.metrics import MetricsInterceptor

log = logging.getLogger(__name__)

# Lets large model lists and archive chunks through (gRPC's default receive limit is 4 MiB).
MESSAGE_LIMIT = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
)
# gRPC servers set SO_REUSEPORT by default on Linux, so a second process bound to a port already
# served (a second stack on the same ports, a port picked twice) would silently share its connections;
# without it the second bind fails and the service exits saying so.
SERVER_OPTIONS = (*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0))


def _serialize(response: object) -> bytes:
    # A method may hand back its response already serialised (see add_servicer).
    return response if isinstance(response, bytes) else response.SerializeToString()  # type: ignore[attr-defined]


class GrpcServer:
    """A grpc.aio server with health and reflection; `service_names` are the full names it serves."""

    def __init__(self, service_names: Sequence[str]) -> None:
        # Metrics outside errors: it sees the status code and error code the error interceptor sets.
        interceptors = [MetricsInterceptor(), ErrorInterceptor()]
        self.server = aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0

    def add_servicer(self, servicer: object, service: ServiceDescriptor) -> None:
        """Registers `servicer` for `service` as the generated add_*_to_server does, except that a method
        may return its response as bytes already serialised: the catalog answers ListModels from cached
        per-model bytes instead of copying 10,000 messages into a reply (see bench/catalog)."""
        handlers = {}
        for method in service.methods:
            request_cls = message_factory.GetMessageClass(method.input_type)
            make = HANDLER_MAKERS[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = make(
                getattr(servicer, method.name),
                request_deserializer=request_cls.FromString,
                response_serializer=_serialize,
            )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )
        self.server.add_registered_method_handlers(service.full_name, handlers)

    def bind(self, address: str) -> int:
        try:
            port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.61 raises where older versions returned 0
            port = 0
        if port == 0:
            raise SystemExit(f"cannot listen on {address}: the address is in use or not this host's")
        self.port = port
        return port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def stop(self, grace: float = 2.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


def freeze_startup_objects() -> None:
    """Moves everything allocated while starting (modules, the app, its clients: ~70k objects) out of
    the garbage collector's reach. A full collection otherwise walks them all (~17 ms here) and may land
    in the middle of any request; requests then only pay for what they allocate themselves."""
    gc.collect()
    gc.freeze()


def stop_signal() -> asyncio.Event:
    """An event set by the process's first SIGTERM or SIGINT: the one way a service learns to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_until_signal(
    server: GrpcServer,
    *,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_signal: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Starts the server, runs on_start (then reports SERVING), waits for SIGTERM/SIGINT (or for `stop`,
    where the caller owns the signals: two services in one process), runs on_signal while still serving
    (a runner drains: the requests in flight finish), then stops."""
    if stop is None:
        stop = stop_signal()
    await server.start()
    if on_start is not None:
        await on_start()
    await server.set_serving(True)
    freeze_startup_objects()
    log.info("serving %s on port %d", ", ".join(server.service_names), server.port)
    await stop.wait()
    if on_signal is not None:
        await on_signal()
    log.info("stopping %s", ", ".join(server.service_names))
    await server.stop()
    if on_stop is not None:
        await on_stop()
