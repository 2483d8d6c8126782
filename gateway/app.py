"""The gateway's FastAPI application: OpenAI-style REST in front of the gRPC services. It holds no
business state: every route translates a request into a service call and the reply back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.auth import install_api_keys
from gateway.clients import CatalogClient, DownloaderClient, RunnerPool
from gateway.errors import APIError, install_error_handlers
from gateway.images import ImageReader
from gateway.limits import install_body_limit
from gateway.metrics import install_metrics
from gateway.model_list import ModelList
from gateway.routes import (
    anthropic,
    downloads,
    events,
    fit,
    folders,
    inference,
    models,
    ollama,
    responses,
    storage,
    web,
)
from gateway.serving import Serving
from gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeouts = (settings.rpc_timeout_s, settings.transfer_timeout_s)
        app.state.catalog = CatalogClient(settings.catalog_address, *timeouts)
        app.state.downloader = DownloaderClient(settings.downloader_address, *timeouts)
        app.state.runners = RunnerPool(*timeouts)
        images = ImageReader(settings)
        app.state.serving = Serving(app.state.catalog, app.state.runners, settings, images)
        app.state.model_list = ModelList(app.state.catalog)
        try:
            yield
        finally:
            await app.state.catalog.close()
            await app.state.downloader.close()
            await app.state.runners.close()
            await images.close()

    app = FastAPI(
        title="Jan Models",
        version="0.1.0",
        description="Model management and inference over an OpenAI-style API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_body_limit(app, settings.max_body_bytes)
    install_api_keys(app, settings.keys, metrics_public=settings.metrics_public)
    install_metrics(app)  # last: the outermost middleware sees every answer

    @app.get("/healthz", tags=["health"])
    async def healthz(request: Request) -> JSONResponse:
        """200 when the gateway and the services it needs answer (503 otherwise), with the number of
        live runners (a model can run only when one has registered)."""
        services = {
            "catalog": await request.app.state.catalog.serving(),
            "downloader": await request.app.state.downloader.serving(),
        }
        ok = all(services.values())
        runners = 0
        if services["catalog"]:
            with contextlib.suppress(APIError):
                runners = len(await request.app.state.catalog.list_runners())
        body = {"status": "ok" if ok else "degraded", "services": services, "runners": runners}
        return JSONResponse(body, status_code=200 if ok else 503)

    app.include_router(downloads.router)
    app.include_router(inference.router)
    app.include_router(fit.router)  # before models.router, whose catch-all would take /v1/models/fit
    app.include_router(models.router)
    app.include_router(folders.router)
    app.include_router(storage.router)
    app.include_router(events.router)
    # The other dialects: translations onto the same serving core (gateway/serving.py).
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    app.include_router(ollama.router)
    app.include_router(web.router)  # the page at / (and Ollama's answer there for tools)
    return app
