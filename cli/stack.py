"""Local mode: the same service processes that compose and Kubernetes run, started on loopback.

`python -m cli.stack up` starts every service in the background (pids and logs under JAN_ROOT/run and
JAN_ROOT/logs), returns once the gateway answers /healthz and prints its URL; `down` stops them.
The e2e tests start their own stack through `start_stack` on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Start order: the catalog first (everyone reports to it), the gateway last (it fronts the others).
SERVICES = ("catalog", "downloader", "runner", "gateway")
MODULES = {
    "catalog": "services.catalog",
    "downloader": "services.downloader",
    "runner": "services.runner",
    "gateway": "gateway",
}
DEFAULT_PORTS = {"catalog": 13370, "downloader": 13371, "runner": 13372, "gateway": 1337}
# Local mode serves each gRPC service's Prometheus metrics here (the gateway's are at /metrics);
# tests leave them off.
DEFAULT_METRICS_PORTS = {"catalog": 13380, "downloader": 13381, "runner": 13382}


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, never one this process handed out before (the kernel may
    offer a just-closed port again, and two services of one stack must not get the same one)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class Stack:
    root: Path
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "JAN_ROOT": str(self.root),
                "JAN_CATALOG_HOST": "127.0.0.1",
                "JAN_CATALOG_PORT": str(self.ports["catalog"]),
                "JAN_DOWNLOADER_HOST": "127.0.0.1",
                "JAN_DOWNLOADER_PORT": str(self.ports["downloader"]),
                "JAN_RUNNER_HOST": "127.0.0.1",
                "JAN_RUNNER_PORT": str(self.ports["runner"]),
                "JAN_RUNNER_NAME": "local",
                "JAN_GATEWAY_HOST": "127.0.0.1",
                "JAN_GATEWAY_PORT": str(self.ports["gateway"]),
                "JAN_CATALOG_ADDRESS": f"127.0.0.1:{self.ports['catalog']}",
                "JAN_DOWNLOADER_ADDRESS": f"127.0.0.1:{self.ports['downloader']}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def start(self, extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(extra_env or {})
        for name in SERVICES:
            self.start_service(name)
        self.wait_ready(timeout)

    def start_service(self, name: str) -> None:
        """Starts one service process (also used by tests to bring back one they killed)."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULES[name]],
                env=self.env(self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))

    def kill(self, name: str) -> None:
        """kill -9 of one service, as a crash would."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = self.log_tail(name)
                    self.stop()
                    raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")
            try:
                resp = httpx.get(f"{self.url}/healthz", timeout=1.0)
                last = f"{resp.status_code} {resp.text}"
                # Ready when every service answers and the runner has registered with the catalog.
                if resp.status_code == 200 and (
                    resp.json().get("runners", 0) >= 1 or "runner" not in self.procs
                ):
                    return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        self.stop()
        tails = "\n".join(f"--- {name}.log\n{self.log_tail(name, 15)}" for name in self.procs or SERVICES)
        raise RuntimeError(
            f"the stack did not become ready in {timeout:.0f} s (last /healthz: {last}); "
            f"logs in {self.log_dir}\n{tails}"
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        for name in reversed(SERVICES):
            pid = self._pid(name)
            if pid is not None:
                _terminate(pid, timeout)
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        self.procs.clear()

    def _pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        try:
            return int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child (started by an earlier `up`)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    # Reaped before returning, so its ports are free for whatever starts next.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def default_stack() -> Stack:
    root = Path(os.environ.get("JAN_ROOT", "~/jan")).expanduser().resolve()
    ports = {name: int(os.environ.get(f"JAN_{name.upper()}_PORT", DEFAULT_PORTS[name])) for name in SERVICES}
    return Stack(root=root, ports=ports)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    stack = default_stack()
    if args.command == "down":
        stack.stop()
        print("stopped")
        return
    running = [n for n in SERVICES if stack._pid(n) is not None and _alive(stack._pid(n))]
    if running:
        stack.stop()
    metrics = {
        f"JAN_{name.upper()}_METRICS_PORT": os.environ.get(f"JAN_{name.upper()}_METRICS_PORT", str(port))
        for name, port in DEFAULT_METRICS_PORTS.items()
    }
    try:
        stack.start(extra_env=metrics)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    print(f"Jan Models is up: {stack.url}  (JAN_ROOT={stack.root}, logs in {stack.log_dir})")
    print(f"  open {stack.url}/ in a browser  |  curl {stack.url}/v1/models  |  .venv/bin/jan models list")
    print("  stop: make down")


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


if __name__ == "__main__":
    main()
