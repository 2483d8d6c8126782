"""Runs the gateway: `python -m gateway [--print-settings]`."""

from __future__ import annotations

import argparse

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.common.grpcserver import freeze_startup_objects
from services.common.logs import LogSettings, setup_logging
from services.common.main import read_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    args = parser.parse_args()
    settings = read_settings(GatewaySettings)
    log_settings = read_settings(LogSettings)
    if args.print_settings:
        print(settings.model_dump_json(indent=2))
        print(log_settings.model_dump_json(indent=2))
        return
    setup_logging(settings.log_level, log_settings.format)
    app = create_app(settings)
    # As every service does once serving (services/common/grpcserver.py); here in the process's entry
    # point, so that an app made in-process (the tests') leaves its host's garbage collector alone.
    freeze_startup_objects()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's loggers go through ours (text or JSON, with the request id)
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
