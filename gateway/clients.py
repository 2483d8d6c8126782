"""gRPC clients the gateway holds in app.state: one channel per service, a deadline on every call, and
gRPC errors turned into APIError where the call is made. Runner channels are replaced when a runner
cannot be reached. Typed methods (`catalog.place(id)`, `runner.generate(req)`) hold no policy: placement
and retries live in gateway/serving.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import APIError, from_rpc_error
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb
from jan.downloader.v1 import downloader_service_pb2_grpc as downloader_grpc
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb
from jan.runner.v1 import runner_service_pb2_grpc as runner_grpc
from services.common.errors import ERROR_CODE_KEY
from services.common.grpcserver import CHANNEL_OPTIONS
from services.common.logs import request_id_interceptors


@asynccontextmanager
async def rpc_errors(service: str) -> AsyncIterator[None]:
    try:
        yield
    except aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


class Unreachable(APIError):
    """The service could not be reached (no connection, connection lost): the same 503 as any
    `<service>_unavailable`, distinguishable from a service's own UNAVAILABLE errors (which carry a code)."""


def unreachable(exc: aio.AioRpcError) -> bool:
    """UNAVAILABLE from the transport or the server machinery, not from the service's code: a JanError
    (queue_timeout, storage_unavailable, ...) always carries its code in the trailers."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return ERROR_CODE_KEY not in dict(exc.trailing_metadata() or ())


class ServiceClient:
    """A channel to one service, its health, and unary calls with the deadline and error translation."""

    service = "service"
    stub_class: Any = None
    channel_options: tuple[tuple[str, Any], ...] = CHANNEL_OPTIONS

    def __init__(self, address: str, timeout: float, transfer_timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout
        self._connect()

    def _connect(self) -> None:
        self.channel = aio.insecure_channel(
            self.address, options=self.channel_options, interceptors=request_id_interceptors()
        )
        self.stub = self.stub_class(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    def _rpc_failed(self, exc: aio.AioRpcError, channel: aio.Channel) -> None:
        """Called with every error of a call made on `channel`, before it is translated or re-raised."""

    def _translate(self, exc: aio.AioRpcError) -> APIError:
        return from_rpc_error(exc, self.service)

    @asynccontextmanager
    async def _errors(self, channel: aio.Channel) -> AsyncIterator[None]:
        try:
            yield
        except aio.AioRpcError as exc:
            self._rpc_failed(exc, channel)
            raise self._translate(exc) from None

    async def serving(self) -> bool:
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
        except aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def _unary(self, rpc: Any, request: Any, timeout: float | None = None) -> Any:
        """One unary call of `rpc` (a method of `self.stub`), with the deadline and error translation."""
        async with self._errors(self.channel):
            return await rpc(request, timeout=self.timeout if timeout is None else timeout)

    async def stream(self, call: Any) -> AsyncGenerator[Any, None]:
        """A server stream whose first message is awaited here, so that an error at the start (an unknown
        id) becomes a normal HTTP error before any byte of the response is sent. `call` must have been
        made on the current channel just before (`self.stream(self.stub.Method(...))`)."""
        channel = self.channel
        async with self._errors(channel):
            first = await call.read()

        async def rest() -> AsyncGenerator[Any, None]:
            try:
                reply = first
                while reply is not aio.EOF:
                    yield reply
                    reply = await call.read()
            except aio.AioRpcError as exc:
                self._rpc_failed(exc, channel)  # the reader translates it (or turns it into an event)
                raise
            finally:
                call.cancel()  # the client went away: stop the service's work for it

        return rest()


@dataclass(frozen=True)
class Listed:
    """A ListModels reading: every model, or (delta) those changed since a version and the ids gone."""

    models: list[model_pb2.Model]
    version: str
    delta: bool = False
    removed: list[str] = field(default_factory=list)


class CatalogClient(ServiceClient):
    service = "catalog"
    stub_class = catalog_grpc.CatalogServiceStub

    def __init__(self, address: str, timeout: float, transfer_timeout: float) -> None:
        super().__init__(address, timeout, transfer_timeout)
        # Called after every call that changes model objects (the serving layer drops its hints).
        self.after_write: Callable[[], None] = lambda: None

    async def _write(self, rpc: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await self._unary(rpc, request, timeout)
        finally:
            self.after_write()

    async def place(self, request: catalog_pb.PlaceModelRequest) -> catalog_pb.PlaceModelResponse:
        """Where the model's replicas run, and where more go (the catalog decides)."""
        return await self._unary(self.stub.PlaceModel, request)

    async def release(self, model_id: str) -> None:
        """Forgets the replicas the model was started with (before an explicit stop)."""
        await self._unary(self.stub.ReleaseModel, catalog_pb.ReleaseModelRequest(model_id=model_id))

    async def get_model(self, model_id: str) -> model_pb2.Model:
        reply = await self._unary(self.stub.GetModel, catalog_pb.GetModelRequest(id=model_id))
        return reply.model

    async def list_runners(self) -> list[catalog_pb.Runner]:
        reply = await self._unary(self.stub.ListRunners, catalog_pb.ListRunnersRequest())
        return list(reply.runners)

    async def list_problems(self) -> list[model_pb2.Problem]:
        reply = await self._unary(self.stub.ListProblems, catalog_pb.ListProblemsRequest())
        return list(reply.problems)

    async def create_model(self, request: catalog_pb.CreateModelRequest) -> catalog_pb.CreateModelResponse:
        """The object created, or (for a local directory) what importing the directory gave."""
        return await self._write(self.stub.CreateModel, request)

    async def storage_usage(self) -> catalog_pb.GetStorageUsageResponse:
        return await self._unary(self.stub.GetStorageUsage, catalog_pb.GetStorageUsageRequest())

    async def update_model(self, request: catalog_pb.UpdateModelRequest) -> model_pb2.Model:
        return (await self._write(self.stub.UpdateModel, request)).model

    async def delete_model(self, model_id: str) -> catalog_pb.DeleteModelResponse:
        return await self._write(self.stub.DeleteModel, catalog_pb.DeleteModelRequest(id=model_id))

    async def import_remote_models(
        self, request: catalog_pb.ImportRemoteModelsRequest
    ) -> catalog_pb.ImportRemoteModelsResponse:
        return await self._write(self.stub.ImportRemoteModels, request)

    async def list_all(
        self, states: Sequence[model_pb2.ModelState.ValueType], engines: Sequence[str]
    ) -> list[model_pb2.Model]:
        listed = await self.list_since("", states, engines)
        assert listed is not None
        return listed.models

    async def list_since(
        self,
        version: str,
        states: Sequence[model_pb2.ModelState.ValueType] = (),
        engines: Sequence[str] = (),
    ) -> Listed | None:
        """What changed since the catalog's `version` of the whole list (a delta), or every model (of these
        states and engines) when the catalog cannot tell or no version is given; None while the catalog
        is still at `version`. The version of a list read in pages is the first page's: a change while
        later pages are read makes the next call read them all again."""
        models: list[model_pb2.Model] = []
        token, first = "", ""
        async with rpc_errors("catalog"):
            while True:
                reply = await self.stub.ListModels(
                    catalog_pb.ListModelsRequest(
                        page_size=10_000,
                        page_token=token,
                        states=states,
                        engines=engines,
                        since_version="" if token else version,
                    ),
                    timeout=self.timeout,
                )
                if reply.unchanged:
                    return None
                if reply.delta:
                    return Listed(
                        list(reply.models), reply.version, delta=True, removed=list(reply.removed_ids)
                    )
                first = first or reply.version
                models.extend(reply.models)
                token = reply.next_page_token
                if not token:
                    return Listed(models, first)

    async def watch(self) -> AsyncGenerator[catalog_pb.WatchModelsResponse, None]:
        """Every change of the catalog from now on, as it happens (a quiet catalog sends nothing, so no
        first message is awaited: an error at any point raises APIError from the iteration)."""
        call = self.stub.WatchModels(catalog_pb.WatchModelsRequest(), timeout=self.transfer_timeout)
        try:
            async with rpc_errors("catalog"):
                async for reply in call:
                    yield reply
        finally:
            call.cancel()

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

        try:
            async with self._errors(self.channel):
                return await self.stub.ImportFolder(requests(), timeout=self.transfer_timeout)
        finally:
            self.after_write()


class DownloaderClient(ServiceClient):
    service = "downloader"
    stub_class = downloader_grpc.DownloaderServiceStub

    async def start(self, model_id: str) -> downloader_pb.Job:
        return (
            await self._unary(self.stub.StartDownload, downloader_pb.StartDownloadRequest(model_id=model_id))
        ).job

    async def get(self, model_id: str) -> downloader_pb.Job:
        return (
            await self._unary(self.stub.GetDownload, downloader_pb.GetDownloadRequest(model_id=model_id))
        ).job

    async def pause(self, model_id: str) -> downloader_pb.Job:
        return (
            await self._unary(self.stub.PauseDownload, downloader_pb.PauseDownloadRequest(model_id=model_id))
        ).job

    async def resume(self, model_id: str) -> downloader_pb.Job:
        request = downloader_pb.ResumeDownloadRequest(model_id=model_id)
        return (await self._unary(self.stub.ResumeDownload, request)).job

    async def cancel(self, model_id: str) -> downloader_pb.Job:
        request = downloader_pb.CancelDownloadRequest(model_id=model_id)
        return (await self._unary(self.stub.CancelDownload, request)).job

    async def list(self) -> list[downloader_pb.Job]:
        return list((await self._unary(self.stub.ListDownloads, downloader_pb.ListDownloadsRequest())).jobs)

    async def import_repository(
        self, request: downloader_pb.ImportRepositoryRequest
    ) -> downloader_pb.ImportRepositoryResponse:
        return await self._unary(self.stub.ImportRepository, request)

    async def watch(self, model_id: str) -> AsyncGenerator[downloader_pb.WatchDownloadResponse, None]:
        call = self.stub.WatchDownload(
            downloader_pb.WatchDownloadRequest(model_id=model_id), timeout=self.transfer_timeout
        )
        return await self.stream(call)


class RunnerClient(ServiceClient):
    """A runner's channel, replaced by a fresh one as soon as a call finds the runner unreachable.

    A gRPC channel that fails to connect (the runner is down or restarting) waits out a growing
    reconnect backoff during which every call fails at once: a runner that is back would go on getting
    503s. The fresh channel connects on its first call instead. Its subchannels are its own (gRPC shares
    the subchannels of equal channels process-wide by default, backoff included). The old channel closes
    once the calls still on it end. `resets` counts the replacements (placement hints made before one
    are stale)."""

    service = "runner"
    stub_class = runner_grpc.RunnerServiceStub
    channel_options = (*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1))

    def __init__(self, address: str, timeout: float, transfer_timeout: float) -> None:
        self.resets = 0
        self._retiring: dict[asyncio.Task[None], aio.Channel] = {}
        super().__init__(address, timeout, transfer_timeout)

    def _rpc_failed(self, exc: aio.AioRpcError, channel: aio.Channel) -> None:
        if unreachable(exc) and channel is self.channel:  # not twice for calls on the same old channel
            self._connect()
            self.resets += 1
            task = asyncio.get_running_loop().create_task(channel.close(grace=self.transfer_timeout))
            self._retiring[task] = channel
            task.add_done_callback(lambda t: self._retiring.pop(t, None))

    def _translate(self, exc: aio.AioRpcError) -> APIError:
        err = from_rpc_error(exc, self.service)
        if unreachable(exc):
            return Unreachable(err.status, err.message, code=err.code, param=err.param)
        return err

    async def close(self) -> None:
        for task, channel in list(self._retiring.items()):
            task.cancel()
            await channel.close()
        await super().close()

    async def generate(
        self, request: runner_pb.GenerateRequest
    ) -> AsyncGenerator[runner_pb.GenerateResponse, None]:
        """The answer's messages; the first one is awaited here (an error at the start is raised now)."""
        return await self.stream(self.stub.Generate(request, timeout=self.transfer_timeout))

    async def load(self, request: runner_pb.LoadModelRequest, timeout: float) -> runner_pb.LoadModelResponse:
        return await self._unary(self.stub.LoadModel, request, timeout)

    async def unload(self, model_id: str) -> None:
        await self._unary(self.stub.UnloadModel, runner_pb.UnloadModelRequest(model_id=model_id))

    async def list_loaded(self) -> runner_pb.ListLoadedResponse:
        return await self._unary(self.stub.ListLoaded, runner_pb.ListLoadedRequest())

    async def embed(self, request: runner_pb.EmbedRequest) -> runner_pb.EmbedResponse:
        return await self._unary(self.stub.Embed, request, self.transfer_timeout)

    async def estimate_models(self, model_ids: list[str]) -> runner_pb.EstimateModelsResponse:
        return await self._unary(
            self.stub.EstimateModels, runner_pb.EstimateModelsRequest(model_ids=model_ids)
        )

    async def tokenize(self, request: runner_pb.TokenizeRequest) -> runner_pb.TokenizeResponse:
        return await self._unary(self.stub.Tokenize, request)

    async def detokenize(self, request: runner_pb.DetokenizeRequest) -> runner_pb.DetokenizeResponse:
        return await self._unary(self.stub.Detokenize, request)


class RunnerPool:
    """One client per runner address, made on first use (runners come and go; the catalog knows them)."""

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
