"""The command line every service process shares: `--print-settings`, logging, then serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic_settings import BaseSettings

from services.common.logs import LogSettings, setup_logging
from services.common.metrics import start_metrics_server


def service_main(
    prog: str,
    description: str | None,
    settings_types: tuple[type[BaseSettings], ...],
    serve: Callable[..., Coroutine[Any, Any, None]],
) -> None:
    """Reads the settings (bad ones fail here, with pydantic's message), then runs `serve(*settings)`.
    The first settings class is the service's own and gives the log level, the host and the metrics port."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    args = parser.parse_args()
    settings: list[Any] = [cls() for cls in settings_types]
    log_settings = LogSettings()
    if args.print_settings:
        for s in [*settings, log_settings]:  # secrets are SecretStr: printed as **********
            print(s.model_dump_json(indent=2))
        return
    setup_logging(settings[0].log_level, log_settings.format)
    start_metrics_server(getattr(settings[0], "metrics_port", 0), settings[0].host)
    asyncio.run(serve(*settings))
