"""Runs a runner: `python -m services.runner [--print-settings]`."""

from __future__ import annotations

from services.common.catalog_client import CatalogClient
from services.common.grpcserver import run_until_signal
from services.common.main import service_main
from services.common.storage import StorageSettings, make_storage
from services.runner import metrics
from services.runner.core import Runner
from services.runner.servicer import make_server
from services.runner.settings import RunnerSettings


async def serve(settings: RunnerSettings, storage_settings: StorageSettings) -> None:
    catalog = CatalogClient(settings.catalog_address)
    runner = Runner(settings, catalog, make_storage(storage_settings, settings.root))
    metrics.watch(runner)
    server = make_server(runner)
    port = server.bind(f"{settings.host}:{settings.port}")
    settings.advertise_address = settings.derive_advertise_address(port)

    async def stop() -> None:
        await runner.close()
        await catalog.close()

    await run_until_signal(server, on_start=runner.start, on_stop=stop, on_signal=runner.drain)


def main() -> None:
    service_main("python -m services.runner", __doc__, (RunnerSettings, StorageSettings), serve)


if __name__ == "__main__":
    main()
