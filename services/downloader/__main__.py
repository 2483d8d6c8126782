"""Runs the downloader service: `python -m services.downloader [--print-settings]`."""

from __future__ import annotations

import asyncio

from services.common.catalog_client import CatalogClient
from services.common.grpcserver import run_until_signal
from services.common.main import service_main
from services.common.storage import StorageSettings, make_storage
from services.downloader import metrics
from services.downloader.core import Downloader
from services.downloader.servicer import make_server
from services.downloader.settings import DownloaderSettings


async def serve(
    settings: DownloaderSettings, storage_settings: StorageSettings, stop: asyncio.Event | None = None
) -> None:
    """Serves until SIGTERM/SIGINT, or until `stop` is set where the caller owns the signals."""
    catalog = CatalogClient(settings.catalog_address)
    downloader = Downloader(settings, make_storage(storage_settings, settings.root), catalog)
    metrics.watch(downloader)
    server = make_server(downloader)
    server.bind(f"{settings.host}:{settings.port}")

    async def close() -> None:
        await downloader.close()
        await catalog.close()

    await run_until_signal(server, on_start=downloader.start, on_stop=close, stop=stop)


def main() -> None:
    service_main("python -m services.downloader", __doc__, (DownloaderSettings, StorageSettings), serve)


if __name__ == "__main__":
    main()
