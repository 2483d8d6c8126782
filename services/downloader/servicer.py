"""gRPC adapter of the downloader: converts messages to core calls and back, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from jan.downloader.v1 import downloader_service_pb2 as pb
from jan.downloader.v1 import downloader_service_pb2_grpc as pb_grpc
from services.common.grpcserver import GrpcServer
from services.downloader.core import Downloader

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DownloaderService"].full_name


class DownloaderServicer(pb_grpc.DownloaderServiceServicer):
    def __init__(self, downloader: Downloader) -> None:
        self.downloader = downloader

    async def StartDownload(
        self, request: pb.StartDownloadRequest, context: aio.ServicerContext
    ) -> pb.StartDownloadResponse:
        job, started = await self.downloader.start_download(request.model_id)
        return pb.StartDownloadResponse(job=job.to_pb(), started=started)

    async def GetDownload(
        self, request: pb.GetDownloadRequest, context: aio.ServicerContext
    ) -> pb.GetDownloadResponse:
        return pb.GetDownloadResponse(job=self.downloader.get(request.model_id).to_pb())

    async def WatchDownload(
        self, request: pb.WatchDownloadRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchDownloadResponse]:
        async for job in self.downloader.watch(request.model_id):
            yield pb.WatchDownloadResponse(job=job.to_pb())

    async def PauseDownload(
        self, request: pb.PauseDownloadRequest, context: aio.ServicerContext
    ) -> pb.PauseDownloadResponse:
        return pb.PauseDownloadResponse(job=(await self.downloader.pause(request.model_id)).to_pb())

    async def ResumeDownload(
        self, request: pb.ResumeDownloadRequest, context: aio.ServicerContext
    ) -> pb.ResumeDownloadResponse:
        return pb.ResumeDownloadResponse(job=(await self.downloader.resume(request.model_id)).to_pb())

    async def CancelDownload(
        self, request: pb.CancelDownloadRequest, context: aio.ServicerContext
    ) -> pb.CancelDownloadResponse:
        return pb.CancelDownloadResponse(job=(await self.downloader.cancel(request.model_id)).to_pb())

    async def ListDownloads(
        self, request: pb.ListDownloadsRequest, context: aio.ServicerContext
    ) -> pb.ListDownloadsResponse:
        return pb.ListDownloadsResponse(jobs=[job.to_pb() for job in self.downloader.list_jobs()])

    async def ImportRepository(
        self, request: pb.ImportRepositoryRequest, context: aio.ServicerContext
    ) -> pb.ImportRepositoryResponse:
        folder, models = await self.downloader.import_repository(request.repo_url, request.folder)
        return pb.ImportRepositoryResponse(folder=folder, models=models)


def make_server(downloader: Downloader) -> GrpcServer:
    """A gRPC server (health, reflection, error mapping) serving the downloader; bind it, then start it."""
    server = GrpcServer([SERVICE_NAME])
    server.add_servicer(DownloaderServicer(downloader), pb.DESCRIPTOR.services_by_name["DownloaderService"])
    return server
