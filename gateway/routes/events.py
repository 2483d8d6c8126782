"""`GET /v1/events`: the catalog's changes as Server-Sent Events, so that a page (or any client) sees a
download finish, a model start from the CLI or a hand-edited json file without polling.

Each event is `event: model` with `{"type": "added" | "updated" | "removed" | "invalid", "id", "model"}`
(the model object as `GET /v1/models/{id}` returns it; null when removed or invalid). A comment line goes
out every `PING_S` seconds, so that proxies keep the connection and clients notice a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.errors import APIError, Dialect, error_body, error_responses
from gateway.protocol import models as convert
from gateway.streaming import sse, streamed
from jan.catalog.v1 import catalog_service_pb2 as catalog_pb

router = APIRouter(tags=["models"])
PING_S = 15.0
KINDS = {
    catalog_pb.CHANGE_TYPE_ADDED: "added",
    catalog_pb.CHANGE_TYPE_UPDATED: "updated",
    catalog_pb.CHANGE_TYPE_REMOVED: "removed",
    catalog_pb.CHANGE_TYPE_INVALID: "invalid",
}


def change_dict(change: catalog_pb.WatchModelsResponse) -> dict[str, Any]:
    model = convert.model_dict(change.model) if change.HasField("model") else None
    return {"type": KINDS.get(change.change_type, "updated"), "id": change.id, "model": model}


@router.get(
    "/v1/events",
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(503)},
)
async def events(request: Request) -> Response:
    """The catalog's changes as Server-Sent Events (`event: model`), from now on; `: ping` comments keep
    the connection alive. The stream ends with an `event: error` when the catalog goes away."""
    changes = request.app.state.catalog.watch()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1024)

    async def pump() -> None:
        try:
            async for change in changes:
                await queue.put(sse(change_dict(change), "model"))
        except APIError as err:
            body = error_body(Dialect.OPENAI, err.status, err.message, err.code, err.param)
            await queue.put(sse(body, "error"))
        finally:
            await queue.put(None)

    async def body() -> AsyncIterator[bytes]:
        task = asyncio.create_task(pump())
        try:
            yield b": connected\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=PING_S)
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                if item is None:
                    return
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await changes.aclose()

    return streamed(body(), "text/event-stream")
