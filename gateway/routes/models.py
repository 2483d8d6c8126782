"""/v1/models: the OpenAI Models API plus Jan's own model routes (create, update, state, metadata)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from gateway.clients import CatalogClient
from gateway.errors import APIError, error_responses
from gateway.protocol import models as convert
from gateway.protocol.models import (
    CreateModelIn,
    DeletedOut,
    DirectoryImportOut,
    MetadataOut,
    ModelListOut,
    ModelOut,
    RemoteImportIn,
    RepoImportOut,
    StateOut,
    UpdateModelIn,
)
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb

router = APIRouter(prefix="/v1/models", tags=["models"])
JSON = "application/json"


def _catalog(request: Request) -> CatalogClient:
    return request.app.state.catalog


def _json(body: bytes, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type=JSON)


@router.get("", response_model=ModelListOut, responses={**error_responses(400, 503), 304: {"model": None}})
async def list_models(
    request: Request,
    state: Annotated[list[convert.State] | None, Query(description="Only models in these states.")] = None,
    engine: Annotated[list[str] | None, Query(description="Only models run by these engines.")] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=100_000, description="At most this many models (then has_more says more).")
    ] = None,
    after: Annotated[
        str | None, Query(description="The models after this id (the last_id of the previous page).")
    ] = None,
) -> Response:
    """Every model in id order. With `limit` or `after`, one page and `first_id`, `last_id`, `has_more`
    as OpenAI's paged lists. The ETag changes with the catalog: sent back in If-None-Match, 304 until
    then."""
    listing = await request.app.state.model_list.current()
    etag = listing.etag(request.url.query)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    states = [convert.STATE_VALUES[s] for s in state or []]
    body = listing.select(states, engine or [], limit, after)
    return Response(content=body, media_type=JSON, headers=headers)


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare as their strong form)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@router.post(
    "",
    status_code=201,
    response_model=ModelOut | RepoImportOut | DirectoryImportOut,
    responses=error_responses(400, 403, 404, 409, 422, 501, 503),
)
async def create_model(request: Request, body: CreateModelIn) -> Response:
    """Creates a model object from a local file or a file URL. A Hugging Face repository URL creates one
    object per GGUF quantization instead, and a local directory imports every GGUF model in it in place
    (a Hugging Face cache included): both are answered as a list."""
    if convert.is_hf_repo_url(body.source_url, request.app.state.settings.hf_endpoint):
        folder = body.id.split("/", 1)[0] if body.id else ""
        request_pb = downloader_pb.ImportRepositoryRequest(repo_url=body.source_url, folder=folder)
        reply = await request.app.state.downloader.import_repository(request_pb)
        models = [convert.model_dict(m) for m in reply.models]
        body_json = convert.orjson.dumps({"object": "list", "folder": reply.folder, "data": models})
        return _json(body_json, 201)
    reply = await _catalog(request).create_model(convert.create_request(body))
    if reply.HasField("directory"):
        return _json(convert.directory_import_json(reply.directory), 201)
    return _json(convert.model_json(reply.model), 201)


@router.post(
    "/remote",
    status_code=201,
    response_model=RepoImportOut,
    responses=error_responses(400, 409, 422, 502, 503),
)
async def import_remote_models(request: Request, body: RemoteImportIn) -> Response:
    """Creates model objects of the api engine for a remote OpenAI-compatible API's models (listed when no
    `models` are named) or an Azure OpenAI resource's deployments, in one folder (answered as a list)."""
    reply = await _catalog(request).import_remote_models(convert.remote_import_request(body))
    models = [convert.model_dict(m) for m in reply.models]
    return _json(convert.orjson.dumps({"object": "list", "folder": reply.folder, "data": models}), 201)


@router.get("/{folder}/{file}", response_model=ModelOut, responses=error_responses(400, 404, 422, 503))
async def get_model(request: Request, folder: str, file: str) -> Response:
    return _json(convert.model_json(await _catalog(request).get_model(f"{folder}/{file}")))


@router.patch("/{folder}/{file}", response_model=ModelOut, responses=error_responses(400, 404, 409, 422, 503))
async def update_model(request: Request, folder: str, file: str, body: UpdateModelIn) -> Response:
    model = await _catalog(request).update_model(convert.update_request(f"{folder}/{file}", body))
    return _json(convert.model_json(model))


@router.delete("/{folder}/{file}", response_model=DeletedOut, responses=error_responses(400, 404, 503))
async def delete_model(request: Request, folder: str, file: str) -> DeletedOut:
    reply = await _catalog(request).delete_model(f"{folder}/{file}")
    return DeletedOut(id=reply.id)


@router.get("/{folder}/{file}/state", response_model=StateOut, responses=error_responses(400, 404, 422, 503))
async def get_model_state(request: Request, folder: str, file: str) -> StateOut:
    return StateOut(**convert.state_dict(await _catalog(request).get_model(f"{folder}/{file}")))


@router.get(
    "/{folder}/{file}/metadata", response_model=MetadataOut, responses=error_responses(400, 404, 422, 503)
)
async def get_model_metadata(request: Request, folder: str, file: str) -> Response:
    model = await _catalog(request).get_model(f"{folder}/{file}")
    return _json(convert.orjson.dumps(convert.metadata_dict(model)))


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def bad_model_path(path: str) -> None:
    raise APIError(
        404 if path.count("/") != 0 else 400,
        f"no such route: model ids look like '<folder>/<file>' (got {path!r})",
        code="invalid_model_id",
        param="id",
    )
