"""Runs the catalog and the downloader in one process, local mode's control plane:
`python -m services.controlplane [--print-settings]`.

Each serves on its own gRPC port and its own metrics port, reads its own settings (JAN_CATALOG_*,
JAN_DOWNLOADER_*, log levels included) and talks to the other over gRPC on loopback, exactly as when each
runs alone, as compose and Kubernetes run them; here they share one interpreter and event loop, which
spares the ~45 MB a second Python process serving gRPC costs. Either metrics port shows the whole
process's metrics; each log line written for one of them names it (`[catalog] ...` in text,
`"service": "catalog"` in JSON). A stop signal stops the downloader first (its jobs keep their state on
disk), then the catalog; either one failing ends the process, and the supervisor brings both back.
"""

from __future__ import annotations

import asyncio

from services.catalog import __main__ as catalog
from services.catalog.settings import CatalogSettings
from services.common.grpcserver import stop_signal
from services.common.logs import service_context
from services.common.main import service_main
from services.common.storage import StorageSettings
from services.downloader import __main__ as downloader
from services.downloader.settings import DownloaderSettings


async def serve(
    catalog_settings: CatalogSettings,
    downloader_settings: DownloaderSettings,
    storage_settings: StorageSettings,
) -> None:
    stop = stop_signal()
    catalog_stop = asyncio.Event()
    serving_catalog = catalog.serve(catalog_settings, storage_settings, stop=catalog_stop)
    serving_downloader = downloader.serve(downloader_settings, storage_settings, stop=stop)
    catalog_task = asyncio.create_task(serving_catalog, context=service_context("catalog"))
    downloader_task = asyncio.create_task(serving_downloader, context=service_context("downloader"))
    try:
        await asyncio.wait((catalog_task, downloader_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not downloader_task.done():  # the catalog failed (or this coroutine is cancelled)
            downloader_task.cancel()
        await asyncio.wait((downloader_task,))
        catalog_stop.set()
        await asyncio.wait((catalog_task,))
    for task in (catalog_task, downloader_task):  # the first failure ends the process with its message
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure


def main() -> None:
    service_main(
        "python -m services.controlplane",
        __doc__,
        (CatalogSettings, DownloaderSettings, StorageSettings),
        serve,
    )


if __name__ == "__main__":
    main()
