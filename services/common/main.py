"""The command line every process shares, the gateway's too: `--print-settings`, logging; for a gRPC
service then its metrics server, and serving until a signal."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from services.common.envsettings import Settings, SettingsError
from services.common.logs import LogSettings, setup_logging
from services.common.metrics import start_metrics_server

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
    return settings


def service_main(
    prog: str,
    description: str | None,
    settings_types: tuple[type[Settings], ...],
    serve: Callable[..., Coroutine[Any, Any, None]],
) -> None:
    """`process_start`, then the metrics server on the service's host and `metrics_port`, then
    `serve(*settings)` until it returns."""
    settings = process_start(prog, description, settings_types)
    if settings is None:
        return

    async def run() -> None:
        metrics = await start_metrics_server(settings[0].metrics_port, settings[0].host)
        try:
            await serve(*settings)
        finally:
            if metrics is not None:
                metrics.close()

    asyncio.run(run())
