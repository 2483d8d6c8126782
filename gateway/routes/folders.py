"""Model folders as archives (export / import) and the catalog's list of invalid files."""

from __future__ import annotations

from urllib.parse import quote

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from gateway.clients import CatalogClient
from gateway.errors import error_responses
from gateway.protocol import models as convert
from gateway.protocol.models import ImportOut, ProblemListOut

router = APIRouter(tags=["folders"])


def _catalog(request: Request) -> CatalogClient:
    return request.app.state.catalog


@router.get(
    "/v1/folders/{folder}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}}, **error_responses(400, 404, 503)},
)
async def export_folder(request: Request, folder: str) -> StreamingResponse:
    """The model folder as a .tar.gz: the json files and the binaries, ready to import elsewhere."""
    chunks = await _catalog(request).export_folder(folder)
    return StreamingResponse(
        chunks,
        media_type="application/gzip",
        headers={"Content-Disposition": _attachment(f"{folder}.tar.gz")},
    )


def _attachment(filename: str) -> str:
    """Content-Disposition for any folder name (RFC 6266): quotes, non-ASCII and control characters
    become '_' in the plain `filename`, and travel percent-encoded in `filename*`, so the header stays one
    well-formed latin-1 line whatever the name holds."""
    plain = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.post(
    "/v1/folders/import",
    status_code=201,
    response_model=ImportOut,
    responses=error_responses(400, 409, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def import_folder(
    request: Request,
    folder: str = Query(
        default="", description="Name of the new folder (default: the archive's top folder)."
    ),
) -> Response:
    """Imports a model folder from a tar(.gz) or zip archive sent as the request body."""
    reply = await _catalog(request).import_folder(folder, request.stream())
    body = {
        "folder": reply.folder,
        "data": [convert.model_dict(m) for m in reply.models],
        "problems": [convert.problem_dict(p) for p in reply.problems],
    }
    return Response(orjson.dumps(body), status_code=201, media_type="application/json")


@router.get("/v1/catalog/problems", response_model=ProblemListOut, responses=error_responses(503))
async def list_problems(request: Request) -> ProblemListOut:
    """json files under models/ that are not valid model objects, with the reason for each."""
    problems = await _catalog(request).list_problems()
    return ProblemListOut(data=[convert.problem_dict(p) for p in problems])  # type: ignore[misc]
