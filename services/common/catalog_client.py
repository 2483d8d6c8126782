"""The catalog as the other services (downloader, runners) call it: each call with a deadline, and gRPC
errors turned back into domain errors, so a service's own clients see the catalog's answer."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
from grpc import aio

from jan.catalog.v1 import catalog_service_pb2 as pb
from jan.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from jan.model.v1 import model_pb2
from services.common import errors
from services.common.grpcserver import CHANNEL_OPTIONS
from services.common.logs import request_id_interceptors

_ERRORS: dict[grpc.StatusCode, type[errors.JanError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}


def _translate(exc: aio.AioRpcError) -> errors.JanError:
    trailers = dict(exc.trailing_metadata() or ())
    cls = _ERRORS.get(exc.code(), errors.Unavailable)
    code = trailers.get(errors.ERROR_CODE_KEY)
    if cls is errors.Unavailable and code is None:
        return errors.Unavailable(f"the catalog is unavailable: {exc.details()}", code="catalog_unavailable")
    return cls(
        exc.details() or exc.code().name,
        code=str(code) if code else None,
        param=str(trailers[errors.ERROR_PARAM_KEY]) if errors.ERROR_PARAM_KEY in trailers else None,
    )


class CatalogClient:
    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.channel = aio.insecure_channel(
            address, options=CHANNEL_OPTIONS, interceptors=request_id_interceptors()
        )
        self.stub = pb_grpc.CatalogServiceStub(self.channel)
        self.timeout = timeout

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub, method)(request, timeout=self.timeout)
        except aio.AioRpcError as exc:
            raise _translate(exc) from None

    async def get_model(self, model_id: str) -> model_pb2.Model:
        return (await self._call("GetModel", pb.GetModelRequest(id=model_id))).model

    async def list_models(self) -> list[model_pb2.Model]:
        """Every model, page after page (the catalog's default page size)."""
        models: list[model_pb2.Model] = []
        token = ""
        while True:
            reply = await self._call("ListModels", pb.ListModelsRequest(page_token=token))
            models.extend(reply.models)
            token = reply.next_page_token
            if not token:
                return models

    async def create_model(
        self, *, model_id: str, source_url: str, name: str, metadata: dict[str, Any], owned_by: str
    ) -> model_pb2.Model:
        request = pb.CreateModelRequest(
            id=model_id,
            source_url=source_url,
            name=name,
            metadata_json=orjson.dumps(metadata).decode(),
            owned_by=owned_by,
        )
        return (await self._call("CreateModel", request)).model

    async def update_metadata(self, model_id: str, patch: dict[str, Any]) -> model_pb2.Model:
        request = pb.UpdateModelRequest(id=model_id, metadata_patch_json=orjson.dumps(patch).decode())
        return (await self._call("UpdateModel", request)).model

    async def report(
        self, model_id: str, state: model_pb2.ModelState.ValueType, reason: str, done: int, total: int
    ) -> None:
        request = pb.ReportModelRuntimeRequest(
            id=model_id, state=state, reason=reason, bytes_done=done, bytes_total=total
        )
        await self._call("ReportModelRuntime", request)

    async def register_runner(self, runner: pb.Runner) -> pb.RegisterRunnerResponse:
        """The heartbeat: how often to call again, and the replicas this runner should load."""
        response: pb.RegisterRunnerResponse = await self._call(
            "RegisterRunner", pb.RegisterRunnerRequest(runner=runner)
        )
        return response
