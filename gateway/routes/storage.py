"""GET /v1/storage: what the model binaries take on disk (or in the bucket), each content once, against
the sum of the models' sizes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.clients import CatalogClient
from gateway.errors import error_responses
from gateway.protocol.models import StorageOut, storage_json

router = APIRouter(tags=["models"])


@router.get("/v1/storage", response_model=StorageOut, responses=error_responses(503))
async def storage_usage(request: Request) -> Response:
    """Bytes stored (identical binaries share one copy; files imported in place are the user's and are
    counted apart, in `linked_bytes`) against what the models add up to."""
    catalog: CatalogClient = request.app.state.catalog
    return Response(storage_json(await catalog.storage_usage()), media_type="application/json")
