"""gRPC adapter of the catalog: converts messages to core calls and back, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from grpc import aio

from jan.catalog.v1 import catalog_service_pb2 as pb
from jan.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from services.catalog.core import Catalog
from services.catalog.model import Runtime
from services.catalog.wire import WireCache
from services.common.errors import InvalidArgument
from services.common.grpcserver import GrpcServer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CatalogService"].full_name

_IMPORT_MODES = {
    pb.IMPORT_MODE_UNSPECIFIED: "link",
    pb.IMPORT_MODE_LINK: "link",
    pb.IMPORT_MODE_COPY: "copy",
    pb.IMPORT_MODE_SYMLINK: "symlink",
}
_CHANGE_TYPES = {
    "added": pb.CHANGE_TYPE_ADDED,
    "updated": pb.CHANGE_TYPE_UPDATED,
    "removed": pb.CHANGE_TYPE_REMOVED,
    "invalid": pb.CHANGE_TYPE_INVALID,
}


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.wire = WireCache()
        catalog.changes.listen(self.wire.forget)

    async def ListModels(  # type: ignore[override]  # returns pre-serialised bytes, see GrpcServer.add_servicer
        self, request: pb.ListModelsRequest, context: aio.ServicerContext
    ) -> bytes:
        version = self.catalog.version
        if request.since_version == version:
            return pb.ListModelsResponse(version=version, unchanged=True).SerializeToString()
        delta = self.catalog.changed_since(request.since_version) if request.since_version else None
        if delta is not None and not request.states and not request.engines:
            changed, removed = delta
            tail = pb.ListModelsResponse(version=version, delta=True, removed_ids=removed)
            return self.wire.encode(changed) + tail.SerializeToString()
        models, token, total = self.catalog.list_models(
            request.page_size, request.page_token, list(request.states), list(request.engines)
        )
        # Serialised protobuf messages concatenate into their merge: cached model bytes + the scalars.
        tail = pb.ListModelsResponse(next_page_token=token, total_size=total, version=version)
        return self.wire.encode(models) + tail.SerializeToString()

    async def GetModel(
        self, request: pb.GetModelRequest, context: aio.ServicerContext
    ) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=await self.catalog.get(request.id))

    async def CreateModel(
        self, request: pb.CreateModelRequest, context: aio.ServicerContext
    ) -> pb.CreateModelResponse:
        directory = await asyncio.to_thread(self.catalog.source_directory, request.source_url)
        if directory is not None:
            imported = await self.catalog.import_directory(
                directory,
                folder=request.id,
                parameters=_object(request.parameters_json, "parameters"),
                refused=[
                    field
                    for field, given in (
                        ("name", request.HasField("name")),
                        ("description", request.HasField("description")),
                        ("metadata", bool(request.metadata_json)),
                        ("owned_by", request.HasField("owned_by")),
                        ("import_mode", request.import_mode == pb.IMPORT_MODE_COPY),
                    )
                    if given
                ],
            )
            return pb.CreateModelResponse(
                directory=pb.ImportedDirectory(
                    folders=imported.folders,
                    models=imported.models,
                    created_ids=imported.created_ids,
                    skipped=[pb.SkippedFile(path=s.path, reason=s.reason) for s in imported.skipped],
                )
            )
        model = await self.catalog.create(
            source_url=request.source_url,
            model_id=request.id,
            name=request.name if request.HasField("name") else None,
            description=request.description if request.HasField("description") else None,
            parameters=_object(request.parameters_json, "parameters"),
            metadata=_object(request.metadata_json, "metadata"),
            import_mode=_IMPORT_MODES.get(request.import_mode, "?"),
            owned_by=request.owned_by if request.HasField("owned_by") else None,
        )
        return pb.CreateModelResponse(model=model)

    async def UpdateModel(
        self, request: pb.UpdateModelRequest, context: aio.ServicerContext
    ) -> pb.UpdateModelResponse:
        model = await self.catalog.update(
            request.id,
            name=request.name if request.HasField("name") else None,
            description=request.description if request.HasField("description") else None,
            parameters_patch=_parse_json(request.parameters_patch_json, "parameters"),
            metadata_patch=_parse_json(request.metadata_patch_json, "metadata"),
        )
        return pb.UpdateModelResponse(model=model)

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: aio.ServicerContext
    ) -> pb.DeleteModelResponse:
        removed = await self.catalog.delete(request.id)
        return pb.DeleteModelResponse(id=request.id, removed_paths=removed)

    async def ListProblems(
        self, request: pb.ListProblemsRequest, context: aio.ServicerContext
    ) -> pb.ListProblemsResponse:
        return pb.ListProblemsResponse(problems=self.catalog.problems())

    async def WatchModels(
        self, request: pb.WatchModelsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchModelsResponse]:
        async for change in self.catalog.watch(request.include_initial):
            yield pb.WatchModelsResponse(
                change_type=_CHANGE_TYPES[change.kind],
                id=change.id,
                model=change.model,
                problem=change.problem,
            )

    async def ExportFolder(
        self, request: pb.ExportFolderRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ExportFolderResponse]:
        chunks = self.catalog.export_folder(request.folder)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield pb.ExportFolderResponse(chunk=chunk)

    async def ImportFolder(
        self, request_iterator: AsyncIterator[pb.ImportFolderRequest], context: aio.ServicerContext
    ) -> pb.ImportFolderResponse:
        header: pb.ImportFolderHeader | None = None
        upload = self.catalog.new_upload_file()
        try:
            with upload.open("wb") as f:
                async for item in request_iterator:
                    if item.HasField("header"):
                        header = item.header
                    elif header is None:
                        raise InvalidArgument("the first ImportFolder message must be the header")
                    else:
                        await asyncio.to_thread(f.write, item.chunk)
            if header is None:
                raise InvalidArgument("ImportFolder got no header")
            folder, models, problems = await self.catalog.import_archive(Path(upload), header.folder)
        finally:
            upload.unlink(missing_ok=True)
        return pb.ImportFolderResponse(folder=folder, models=models, problems=problems)

    async def ReportModelRuntime(
        self, request: pb.ReportModelRuntimeRequest, context: aio.ServicerContext
    ) -> pb.ReportModelRuntimeResponse:
        runtime = Runtime(
            state=request.state,
            reason=request.reason,
            runner=request.runner,
            bytes_done=request.bytes_done,
            bytes_total=request.bytes_total,
        )
        return pb.ReportModelRuntimeResponse(model=await self.catalog.report_runtime(request.id, runtime))

    async def RegisterRunner(
        self, request: pb.RegisterRunnerRequest, context: aio.ServicerContext
    ) -> pb.RegisterRunnerResponse:
        interval, assignments = await self.catalog.register_runner(request.runner)
        return pb.RegisterRunnerResponse(heartbeat_interval_s=interval, assignments=assignments)

    async def PlaceModel(
        self, request: pb.PlaceModelRequest, context: aio.ServicerContext
    ) -> pb.PlaceModelResponse:
        _object(request.overrides_json, "overrides_json")
        placed = await self.catalog.placement.place(
            request.model_id,
            start=request.start,
            replicas=request.replicas,
            overrides_json=request.overrides_json,
            keep_alive_s=request.keep_alive_s,
            avoid=frozenset(request.avoid),
        )
        return pb.PlaceModelResponse(
            runner=placed.runner,
            loaded=placed.loaded,
            replicas=placed.replicas,
            targets=placed.targets,
            wanted=placed.wanted,
            overrides_json=placed.overrides_json,
            keep_alive_s=placed.keep_alive_s,
        )

    async def ReleaseModel(
        self, request: pb.ReleaseModelRequest, context: aio.ServicerContext
    ) -> pb.ReleaseModelResponse:
        self.catalog.release(request.model_id)
        return pb.ReleaseModelResponse()

    async def ListRunners(
        self, request: pb.ListRunnersRequest, context: aio.ServicerContext
    ) -> pb.ListRunnersResponse:
        return pb.ListRunnersResponse(runners=self.catalog.live_runners())

    async def GetStorageUsage(
        self, request: pb.GetStorageUsageRequest, context: aio.ServicerContext
    ) -> pb.GetStorageUsageResponse:
        usage, model_bytes, models = await self.catalog.storage_usage()
        return pb.GetStorageUsageResponse(
            backend=self.catalog.binaries.backend.kind,
            stored_bytes=usage.stored_bytes,
            contents=usage.contents,
            binary_bytes=usage.binary_bytes,
            binaries=usage.binaries,
            linked_bytes=usage.linked_bytes,
            model_bytes=model_bytes,
            models=models,
        )

    async def ImportRemoteModels(
        self, request: pb.ImportRemoteModelsRequest, context: aio.ServicerContext
    ) -> pb.ImportRemoteModelsResponse:
        folder, models = await self.catalog.import_remote(
            request.importer,
            request.base_url,
            request.api_key,
            folder=request.folder,
            models=list(request.models),
            api_version=request.api_version,
        )
        return pb.ImportRemoteModelsResponse(folder=folder, models=models)


def make_server(catalog: Catalog) -> GrpcServer:
    """A gRPC server (health, reflection, error mapping) serving the catalog; bind it, then start it."""
    server = GrpcServer([SERVICE_NAME])
    server.add_servicer(CatalogServicer(catalog), pb.DESCRIPTOR.services_by_name["CatalogService"])
    return server


def _parse_json(text: str, param: str) -> Any:
    """JSON text from a request (empty = None), or InvalidArgument naming the field."""
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{param} is not valid JSON: {exc}", param=param) from None


def _object(text: str, param: str) -> dict | None:
    value = _parse_json(text, param)
    if value is not None and not isinstance(value, dict):
        raise InvalidArgument(f"{param} must be a JSON object", param=param)
    return value
