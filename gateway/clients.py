"""gRPC clients the gateway holds in app.state: one channel per service, a deadline on every call, and
gRPC errors turned into APIError where the call is made."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import from_rpc_error
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb
from jan.downloader.v1 import downloader_service_pb2_grpc as downloader_grpc
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb
from jan.runner.v1 import runner_service_pb2_grpc as runner_grpc
from services.common.grpcserver import CHANNEL_OPTIONS
from services.common.logs import request_id_interceptors


@asynccontextmanager
async def rpc_errors(service: str) -> AsyncIterator[None]:
    try:
        yield
    except aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


class ServiceClient:
    """A channel to one service, its health, and unary calls with the deadline and error translation."""

    service = "service"
    stub_class: Any = None

    def __init__(self, address: str, timeout: float, transfer_timeout: float) -> None:
        self.channel = aio.insecure_channel(
            address, options=CHANNEL_OPTIONS, interceptors=request_id_interceptors()
        )
        self.stub = self.stub_class(self.channel)
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

    async def call(self, method: str, request: Any) -> Any:
        async with rpc_errors(self.service):
            return await getattr(self.stub, method)(request, timeout=self.timeout)

    async def stream(self, call: Any) -> AsyncGenerator[Any, None]:
        """A server stream whose first message is awaited here, so that an error at the start (an unknown
        id) becomes a normal HTTP error before any byte of the response is sent."""
        async with rpc_errors(self.service):
            first = await call.read()

        async def rest() -> AsyncGenerator[Any, None]:
            try:
                reply = first
                while reply is not aio.EOF:
                    yield reply
                    reply = await call.read()
            finally:
                call.cancel()  # the client went away: stop the service's work for it

        return rest()


class CatalogClient(ServiceClient):
    service = "catalog"
    stub_class = catalog_grpc.CatalogServiceStub

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

    async def export_folder(self, folder: str) -> AsyncIterator[bytes]:
        call = self.stub.ExportFolder(
            catalog_pb.ExportFolderRequest(folder=folder), timeout=self.transfer_timeout
        )
        replies = await self.stream(call)

        async def chunks() -> AsyncIterator[bytes]:
            async for reply in replies:
                yield reply.chunk

        return chunks()

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


class DownloaderClient(ServiceClient):
    service = "downloader"
    stub_class = downloader_grpc.DownloaderServiceStub

    async def watch(self, model_id: str) -> AsyncGenerator[downloader_pb.WatchDownloadResponse, None]:
        call = self.stub.WatchDownload(
            downloader_pb.WatchDownloadRequest(model_id=model_id), timeout=self.transfer_timeout
        )
        return await self.stream(call)


class RunnerClient(ServiceClient):
    service = "runner"
    stub_class = runner_grpc.RunnerServiceStub

    async def generate(
        self, request: runner_pb.GenerateRequest
    ) -> AsyncGenerator[runner_pb.GenerateResponse, None]:
        return await self.stream(self.stub.Generate(request, timeout=self.transfer_timeout))


class RunnerPool:
    """One channel per runner address, made on first use (runners come and go; the catalog knows them)."""

    def __init__(self, timeout: float, transfer_timeout: float) -> None:
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout
        self._clients: dict[str, RunnerClient] = {}

    def get(self, address: str) -> RunnerClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = RunnerClient(address, self.timeout, self.transfer_timeout)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
