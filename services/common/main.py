"""The command line every process shares, the gateway's too: `--print-settings`, logging; for a gRPC
service then its metrics server, and serving until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from services.common.envsettings import Settings, SettingsError
from services.common.logs import LogSettings, setup_logging
from services.common.metrics import start_metrics_server
from services.common.service_settings import GrpcServiceSettings, ServiceSettings

S = TypeVar("S", bound=Settings)


def read_settings(cls: type[S]) -> S:
    """`cls()` from the environment; a bad value ends the process with one line per problem that names
    the variable (`JAN_RUNNER_THREADS='': Input should be a valid integer, ...`), not a traceback."""
    try:
        return cls()
    except SettingsError as exc:
        raise SystemExit("invalid settings:\n  " + "\n  ".join(map(str, exc.problems))) from None


def process_start(
    prog: str, description: str | None, settings_types: tuple[type[Settings], ...]
) -> list[Any] | None:
    """The command line every process shares: reads the settings (a bad one ends the process here, naming
    the variable); with `--print-settings` prints them and returns None, else sets up logging at the
    level of the first settings class (the process's own) and returns them."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    args = parser.parse_args()
    settings: list[Any] = [read_settings(cls) for cls in settings_types]
    log_settings = read_settings(LogSettings)
    if args.print_settings:
        for s in [*settings, log_settings]:  # secrets are Secret: printed as **********
            print(s.to_json(indent=2))
        return None
    setup_logging(settings[0].log_level, log_settings.format)
    for more in settings[1:]:  # another service in this process (services/controlplane): its own level
        if isinstance(more, ServiceSettings):
            logging.getLogger(type(more).__module__.rpartition(".")[0]).setLevel(more.log_level)
    return settings


def service_main(
    prog: str,
    description: str | None,
    settings_types: tuple[type[Settings], ...],
    serve: Callable[..., Coroutine[Any, Any, None]],
) -> None:
    """`process_start`, then the metrics server of each service (one per GrpcServiceSettings: its host and
    `metrics_port`; every one serves the process's metrics), then `serve(*settings)` until it returns."""
    settings = process_start(prog, description, settings_types)
    if settings is None:
        return

    async def run() -> None:
        metrics = []
        try:
            for service in settings:
                if isinstance(service, GrpcServiceSettings):
                    server = await start_metrics_server(service.metrics_port, service.host)
                    if server is not None:
                        metrics.append(server)
            await serve(*settings)
        finally:
            for server in metrics:
                server.close()

    asyncio.run(run())
