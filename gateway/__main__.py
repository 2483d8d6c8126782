"""Runs the gateway: `python -m gateway [--print-settings]`."""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.common.grpcserver import freeze_startup_objects
from services.common.main import process_start


def main() -> None:
    started = process_start("python -m gateway", __doc__, (GatewaySettings,))
    if started is None:
        return
    settings: GatewaySettings = started[0]
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
