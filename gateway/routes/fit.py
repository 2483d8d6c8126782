"""GET /v1/models/fit: whether each model fits a runner's memory, by the runners' own estimates (the
hub's badge). Its own route so that GET /v1/models stays the catalog's answer alone."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from gateway.errors import error_responses
from gateway.protocol.models import FitListOut, fit_list_json
from gateway.serving import Serving

router = APIRouter(tags=["models"])


@router.get("/v1/models/fit", response_model=FitListOut, responses=error_responses(503))
async def memory_fit(
    request: Request,
    model_ids: Annotated[
        list[str] | None, Query(alias="id", description="Only these models (default: every model).")
    ] = None,
) -> Response:
    """Per model, its memory estimate on the runner where it fits best, and the fit there: `fits`,
    `tight` or `wont_fit` (null with a `reason` when it cannot be estimated). No runner: an empty list
    with a `reason`."""
    serving: Serving = request.app.state.serving
    answers = await serving.memory_fit(model_ids or [])
    if answers is None:
        reason = "no runner answered: none has registered with the catalog, or none is reachable"
        return Response(fit_list_json([], reason), media_type="application/json")
    return Response(fit_list_json(answers, None), media_type="application/json")


@router.api_route("/v1/models/fit", methods=["POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def memory_fit_other_methods() -> None:
    # A 405 (with Allow: GET) here, before the catch-all of routes/models.py reads "fit" as a bad model id.
    raise HTTPException(405, "Method Not Allowed")
