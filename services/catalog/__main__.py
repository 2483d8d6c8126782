"""Runs the catalog service: `python -m services.catalog [--print-settings]`."""

from __future__ import annotations

import asyncio

from services.catalog.core import Catalog
from services.catalog.servicer import make_server
from services.catalog.settings import CatalogSettings
from services.common.grpcserver import run_until_signal
from services.common.main import service_main
from services.common.storage import StorageSettings, make_storage


async def serve(
    settings: CatalogSettings, storage_settings: StorageSettings, stop: asyncio.Event | None = None
) -> None:
    """Serves until SIGTERM/SIGINT, or until `stop` is set where the caller owns the signals."""
    catalog = Catalog(settings, storage=make_storage(storage_settings, settings.root))
    server = make_server(catalog)
    server.bind(f"{settings.host}:{settings.port}")
    await run_until_signal(server, on_start=catalog.start, on_stop=catalog.close, stop=stop)


def main() -> None:
    service_main("python -m services.catalog", __doc__, (CatalogSettings, StorageSettings), serve)


if __name__ == "__main__":
    main()
