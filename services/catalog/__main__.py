"""Runs the catalog service: `python -m services.catalog [--print-settings]`."""

from __future__ import annotations

import argparse
import asyncio

from jan.catalog.v1 import catalog_service_pb2, catalog_service_pb2_grpc

from services.catalog.core import Catalog
from services.catalog.servicer import CatalogServicer
from services.catalog.settings import CatalogSettings
from services.common.grpcserver import GrpcServer, run_until_signal
from services.common.logs import setup_logging

SERVICE_NAME = catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name


async def serve(settings: CatalogSettings) -> None:
    catalog = Catalog(settings)
    server = GrpcServer([SERVICE_NAME])
    catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(catalog), server.server)
    server.bind(f"{settings.host}:{settings.port}")
    await run_until_signal(server, on_start=catalog.start, on_stop=catalog.close)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.catalog", description=__doc__)
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    args = parser.parse_args()
    settings = CatalogSettings()
    if args.print_settings:
        print(settings.model_dump_json(indent=2))
        return
    setup_logging(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
