"""The gateway's FastAPI application: OpenAI-style REST in front of the gRPC services. It holds no
business state: every route translates a request into a service call and the reply back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.clients import CatalogClient
from gateway.errors import install_error_handlers
from gateway.routes import folders, models
from gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.catalog = CatalogClient(
            settings.catalog_address, settings.rpc_timeout_s, settings.transfer_timeout_s
        )
        try:
            yield
        finally:
            await app.state.catalog.close()

    app = FastAPI(
        title="Jan Models",
        version="0.1.0",
        description="Model management and inference over an OpenAI-style API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz(request: Request) -> JSONResponse:
        """200 when the gateway and the services it needs answer; 503 otherwise."""
        catalog_ok = await request.app.state.catalog.serving()
        body = {"status": "ok" if catalog_ok else "degraded", "services": {"catalog": catalog_ok}}
        return JSONResponse(body, status_code=200 if catalog_ok else 503)

    app.include_router(models.router)
    app.include_router(folders.router)
    return app
