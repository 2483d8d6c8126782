"""Keeps the services of a local stack running, as compose's `restart: unless-stopped` and Kubernetes do:
a service that exits is started again after a delay that doubles with each quick exit, and every exit and
restart is one line of the log. Only SIGTERM or SIGINT to the supervisor stops the services for good.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

log = logging.getLogger("cli.supervisor")


class Supervised(Protocol):
    """The processes a supervisor keeps running, as it sees them: `cli.stack.Stack` is one (declared
    here, so that the supervisor needs nothing from the module that runs it)."""

    @property
    def url(self) -> str: ...

    @property
    def run_dir(self) -> Path: ...

    @property
    def log_dir(self) -> Path: ...

    @property
    def names(self) -> list[str]: ...

    @property
    def procs(self) -> Mapping[str, subprocess.Popen[bytes]]: ...

    def start_service(self, name: str) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def is_ready(self, runners: int | None = ...) -> bool: ...

    def exited(self) -> str | None: ...

    def not_ready(self, timeout: float) -> str: ...


@dataclass
class Backoff:
    """The delay before each service's next start: `initial` doubling up to `cap`, back to `initial`
    once the service had stayed up `stable_s`."""

    initial: float = 0.5
    cap: float = 30.0
    stable_s: float = 60.0
    _next: dict[str, float] = field(default_factory=dict)

    def delay(self, name: str, uptime: float) -> float:
        delay = self.initial if uptime >= self.stable_s else self._next.get(name, self.initial)
        self._next[name] = min(self.cap, delay * 2)
        return delay


def describe(status: int) -> str:
    if status < 0:
        with_name = f" ({signal.Signals(-status).name})" if -status in signal.valid_signals() else ""
        return f"{status}{with_name}"
    return str(status)


@dataclass
class Supervisor:
    stack: Supervised
    # A service that exits before the whole stack was first ready is a fault to report, not to retry.
    start_timeout: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)
    interval: float = 0.1
    _stopping: bool = False
    _started_at: dict[str, float] = field(default_factory=dict)

    def run(self) -> int:
        """Starts every service and keeps them running until SIGTERM or SIGINT, then stops them; returns
        the exit status (1 when the stack never became ready)."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.stack.run_dir.mkdir(parents=True, exist_ok=True)
        self.stack.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._watch()
        finally:
            self.stack.stop()
            log.info("stopped")

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loop notices it within one interval and stops the services outside the handler.
        self._stopping = True

    def _start(self, name: str) -> None:
        self.stack.start_service(name)
        self._started_at[name] = time.monotonic()

    def _watch(self) -> int:
        for name in self.stack.names:
            self._start(name)
        deadline = time.monotonic() + self.start_timeout
        ready = False
        due: dict[str, float] = {}  # services waiting to start again, and when
        while not self._stopping:
            now = time.monotonic()
            for name, proc in self.stack.procs.items():
                if name in due or proc.poll() is None:
                    continue
                if not ready:
                    log.error("the stack did not start: %s", self.stack.exited())
                    return 1
                delay = self.backoff.delay(name, now - self._started_at[name])
                log.warning(
                    "%s exited with status %s; restarting in %.1f s", name, describe(proc.returncode), delay
                )
                due[name] = now + delay
            for name, when in list(due.items()):
                if now >= when:
                    del due[name]
                    self._start(name)
                    log.info("%s restarted (pid %d)", name, self.stack.procs[name].pid)
            if not ready:
                if self.stack.is_ready():
                    ready = True
                    log.info("up: %s (%s)", self.stack.url, ", ".join(self.stack.names))
                elif now > deadline:
                    log.error("%s", self.stack.not_ready(self.start_timeout))
                    return 1
            time.sleep(self.interval)
        return 0
