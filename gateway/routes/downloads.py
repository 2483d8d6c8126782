"""Downloads of model binaries: start, progress (Server-Sent Events or a JSON snapshot), pause, resume,
cancel; the list of jobs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from gateway.clients import DownloaderClient
from gateway.errors import APIError, error_responses
from gateway.protocol import models as convert
from gateway.protocol.models import DownloadListOut, DownloadOut
from jan.downloader.v1 import downloader_service_pb2 as pb

router = APIRouter(tags=["downloads"])
BASE = "/v1/models/{folder}/{file}/download"


def _downloader(request: Request) -> DownloaderClient:
    return request.app.state.downloader


def _json(job: pb.Job, status: int = 200) -> Response:
    return Response(orjson.dumps(convert.job_dict(job)), status_code=status, media_type="application/json")


@router.post(
    BASE, status_code=202, response_model=DownloadOut, responses=error_responses(400, 404, 409, 429, 503)
)
async def start_download(request: Request, folder: str, file: str) -> Response:
    """Starts fetching the model's missing binaries (or joins the download already running)."""
    job = await _downloader(request).start(f"{folder}/{file}")
    return _json(job, 202)


@router.get(
    BASE,
    response_model=DownloadOut,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(404, 503)},
)
async def download_progress(request: Request, folder: str, file: str) -> Response:
    """Progress as Server-Sent Events (`data: {job}` until the job ends, then `data: [DONE]`), or one
    JSON snapshot when the request accepts application/json and not text/event-stream."""
    model_id = f"{folder}/{file}"
    accept = request.headers.get("accept", "")
    client = _downloader(request)
    if "application/json" in accept and "text/event-stream" not in accept:
        return _json(await client.get(model_id))
    replies = await client.watch(model_id)

    async def events() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(replies):  # a client that goes away ends the watch at once
                async for reply in replies:
                    yield b"data: " + orjson.dumps(convert.job_dict(reply.job)) + b"\n\n"
        except APIError as exc:
            error = {"message": exc.message, "type": "server_error", "param": exc.param, "code": exc.code}
            yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        except Exception as exc:  # after the headers, an error can only travel as an event
            error = {
                "message": f"progress stream broke: {type(exc).__name__}",
                "type": "server_error",
                "param": None,
                "code": "stream_error",
            }
            yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.delete(BASE, response_model=DownloadOut, responses=error_responses(404, 503))
async def cancel_download(request: Request, folder: str, file: str) -> Response:
    """Cancels the download and removes its partial files; the model stays not-downloaded."""
    job = await _downloader(request).cancel(f"{folder}/{file}")
    return _json(job)


@router.post(f"{BASE}/pause", response_model=DownloadOut, responses=error_responses(404, 503))
async def pause_download(request: Request, folder: str, file: str) -> Response:
    job = await _downloader(request).pause(f"{folder}/{file}")
    return _json(job)


@router.post(f"{BASE}/resume", response_model=DownloadOut, responses=error_responses(404, 409, 429, 503))
async def resume_download(request: Request, folder: str, file: str) -> Response:
    job = await _downloader(request).resume(f"{folder}/{file}")
    return _json(job)


@router.get("/v1/downloads", response_model=DownloadListOut, responses=error_responses(503))
async def list_downloads(request: Request) -> Response:
    jobs = await _downloader(request).list()
    body = {"object": "list", "data": [convert.job_dict(j) for j in jobs]}
    return Response(orjson.dumps(body), media_type="application/json")
