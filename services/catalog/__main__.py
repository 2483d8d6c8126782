"""Runs the catalog service: `python -m services.catalog [--print-settings]`."""

from __future__ import annotations

import argparse
import asyncio

from services.catalog.core import Catalog
from services.catalog.servicer import make_server
from services.catalog.settings import CatalogSettings
from services.common.grpcserver import run_until_signal
from services.common.logs import setup_logging
from services.common.storage import StorageSettings, make_storage


async def serve(settings: CatalogSettings, storage_settings: StorageSettings) -> None:
    catalog = Catalog(settings, storage=make_storage(storage_settings, settings.root))
    server = make_server(catalog)
    server.bind(f"{settings.host}:{settings.port}")
    await run_until_signal(server, on_start=catalog.start, on_stop=catalog.close)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.catalog", description=__doc__)
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    args = parser.parse_args()
    settings, storage = CatalogSettings(), StorageSettings()
    if args.print_settings:
        print(settings.model_dump_json(indent=2))
        print(storage.model_dump_json(indent=2))
        return
    setup_logging(settings.log_level)
    asyncio.run(serve(settings, storage))


if __name__ == "__main__":
    main()
