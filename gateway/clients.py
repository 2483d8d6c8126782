"""gRPC clients the gateway holds in app.state: one channel per service, a deadline on every call, and
gRPC errors turned into APIError where the call is made."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import from_rpc_error
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from jan.model.v1 import model_pb2
from services.common.grpcserver import CHANNEL_OPTIONS


@asynccontextmanager
async def rpc_errors(service: str) -> AsyncIterator[None]:
    try:
        yield
    except aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


class CatalogClient:
    def __init__(self, address: str, timeout: float, transfer_timeout: float) -> None:
        self.channel = aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = catalog_grpc.CatalogServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout

    async def close(self) -> None:
        await self.channel.close()

    async def serving(self) -> bool:
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
        except aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def list_all(
        self, states: Sequence[model_pb2.ModelState.ValueType], engines: Sequence[str]
    ) -> list[model_pb2.Model]:
        models: list[model_pb2.Model] = []
        token = ""
        async with rpc_errors("catalog"):
            while True:
                reply = await self.stub.ListModels(
                    catalog_pb.ListModelsRequest(
                        page_size=10_000, page_token=token, states=states, engines=engines
                    ),
                    timeout=self.timeout,
                )
                models.extend(reply.models)
                token = reply.next_page_token
                if not token:
                    return models

    async def call(self, method: str, request: Any) -> Any:
        async with rpc_errors("catalog"):
            return await getattr(self.stub, method)(request, timeout=self.timeout)

    async def export_folder(self, folder: str) -> AsyncIterator[bytes]:
        """The archive chunks; the first is awaited here so a bad folder fails before any byte is sent."""
        call = self.stub.ExportFolder(
            catalog_pb.ExportFolderRequest(folder=folder), timeout=self.transfer_timeout
        )
        async with rpc_errors("catalog"):
            first = await call.read()

        async def rest() -> AsyncIterator[bytes]:
            try:
                reply = first
                while reply is not aio.EOF:
                    yield reply.chunk
                    reply = await call.read()
            finally:
                call.cancel()

        return rest()

    async def import_folder(
        self, folder: str, chunks: AsyncIterator[bytes]
    ) -> catalog_pb.ImportFolderResponse:
        async def requests() -> AsyncIterator[catalog_pb.ImportFolderRequest]:
            yield catalog_pb.ImportFolderRequest(header=catalog_pb.ImportFolderHeader(folder=folder))
            async for chunk in chunks:
                if chunk:
                    yield catalog_pb.ImportFolderRequest(chunk=chunk)

        async with rpc_errors("catalog"):
            return await self.stub.ImportFolder(requests(), timeout=self.transfer_timeout)
