"""Runs the downloader service: `python -m services.downloader [--print-settings]`."""

from __future__ import annotations

import argparse
import asyncio

from services.common.catalog_client import CatalogClient
from services.common.grpcserver import run_until_signal
from services.common.logs import setup_logging
from services.common.storage import StorageSettings, make_storage
from services.downloader.core import Downloader
from services.downloader.servicer import make_server
from services.downloader.settings import DownloaderSettings


async def serve(settings: DownloaderSettings, storage_settings: StorageSettings) -> None:
    catalog = CatalogClient(settings.catalog_address)
    downloader = Downloader(settings, make_storage(storage_settings, settings.root), catalog)
    server = make_server(downloader)
    server.bind(f"{settings.host}:{settings.port}")

    async def stop() -> None:
        await downloader.close()
        await catalog.close()

    await run_until_signal(server, on_start=downloader.start, on_stop=stop)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.downloader", description=__doc__)
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    args = parser.parse_args()
    settings, storage = DownloaderSettings(), StorageSettings()
    if args.print_settings:
        print(settings.model_dump_json(indent=2))
        print(storage.model_dump_json(indent=2))
        return
    setup_logging(settings.log_level)
    asyncio.run(serve(settings, storage))


if __name__ == "__main__":
    main()
