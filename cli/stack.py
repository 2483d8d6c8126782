"""Local mode: the services that compose and Kubernetes run, started on loopback.

`python -m cli.stack up` plans the ports (the gateway's is JAN_GATEWAY_PORT, 1337 by default; every other
port is the one its variable sets, else a free one), records them in JAN_ROOT/run/stack.json, starts a
detached supervisor (`cli/supervisor.py`) that runs the service processes (JAN_LOCAL_RUNNERS runners, 1 by
default) and brings back any that exits, returns once the gateway answers and prints its URL; `down` stops
the supervisor and every process. Logs are in JAN_ROOT/logs, one file per process.

The processes: the catalog and the downloader together in one (`controlplane`, services/controlplane:
one Python process with gRPC fewer, ~45 MB), each runner, the gateway. Each service keeps its own ports
and settings. The tests start their own `Stack` on free ports, unsupervised, so a process they kill stays
dead until they start it again; `separate=True` gives the catalog and the downloader a process each, as
compose and Kubernetes run them (the tests that kill the downloader alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.supervisor import Supervisor
from services.runner.settings import RunnerSettings

# Start order: the catalog first (everyone reports to it), the gateway last (it fronts the others).
SERVICES = ("catalog", "downloader", "runner", "gateway")
# The process that serves the catalog and the downloader together in local mode.
CONTROL_PLANE = "controlplane"
CONTROL_PLANE_SERVICES = ("catalog", "downloader")
# What each process runs, by its kind (a runner's name is `runner` or `runner-N`); in start order.
MODULES = {
    "catalog": "services.catalog",
    "downloader": "services.downloader",
    CONTROL_PLANE: "services.controlplane",
    "runner": "services.runner",
    "gateway": "gateway",
}
GATEWAY_DEFAULT_PORT = 1337
MAX_LOCAL_RUNNERS = 64
RECORD = "stack.json"
# The runner's own default of JAN_RUNNER_DRAIN_TIMEOUT_S.
DRAIN_TIMEOUT_S: float = RunnerSettings.default("drain_timeout_s")


class StackError(Exception):
    """A local stack that cannot start; the message is one line for the user."""


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


def kind(name: str) -> str:
    """What a service or process name runs: `runner-2` → `runner`."""
    return name.partition("-")[0]


def service_names(runners: int = 1) -> list[str]:
    """Service names in start order; one runner keeps the plain name `runner`."""
    runner_names = ["runner"] if runners == 1 else [f"runner-{i}" for i in range(1, runners + 1)]
    return ["catalog", "downloader", *runner_names, "gateway"]


def _order(name: str) -> tuple[int, int]:
    what, _, number = name.partition("-")
    return list(MODULES).index(what), int(number or 0)


@dataclass
class Stack:
    root: Path
    # gRPC port of each service by name (the gateway's: its HTTP port); the names say which services.
    ports: dict[str, int]
    # The running processes by process name (`names`).
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Prometheus ports by service name; a service not named here gets whatever the environment says.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    # The catalog and the downloader each in a process of its own, as compose and Kubernetes run them.
    separate: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def services(self) -> list[str]:
        return sorted(self.ports, key=_order)

    @property
    def names(self) -> list[str]:
        """The processes, in start order."""
        return list(dict.fromkeys(map(self.process_of, self.services)))

    @property
    def runner_names(self) -> list[str]:
        return [name for name in self.names if kind(name) == "runner"]

    def process_of(self, service: str) -> str:
        """The process that runs `service`."""
        return CONTROL_PLANE if service in CONTROL_PLANE_SERVICES and not self.separate else service

    def services_of(self, name: str) -> list[str]:
        """The services process `name` runs."""
        return [service for service in self.services if self.process_of(service) == name]

    def env(self, extra: dict[str, str] | None = None, service: str | None = None) -> dict[str, str]:
        """The environment of a process (`service`: its name): the caller's, the stack's addresses,
        `extra`, then what is its own (a runner's port and name, metrics ports, a share of the threads)."""
        env = dict(os.environ)
        env.update(
            {
                "JAN_ROOT": str(self.root),
                "JAN_CATALOG_HOST": "127.0.0.1",
                "JAN_CATALOG_PORT": str(self.ports["catalog"]),
                "JAN_DOWNLOADER_HOST": "127.0.0.1",
                "JAN_DOWNLOADER_PORT": str(self.ports["downloader"]),
                "JAN_RUNNER_HOST": "127.0.0.1",
                "JAN_RUNNER_NAME": "local",
                "JAN_GATEWAY_HOST": "127.0.0.1",
                "JAN_GATEWAY_PORT": str(self.ports["gateway"]),
                "JAN_CATALOG_ADDRESS": f"127.0.0.1:{self.ports['catalog']}",
                "JAN_DOWNLOADER_ADDRESS": f"127.0.0.1:{self.ports['downloader']}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        if service is not None:
            env.update(self._own_env(service, env))
        return env

    def _own_env(self, name: str, env: Mapping[str, str]) -> dict[str, str]:
        own: dict[str, str] = {}
        if kind(name) == "runner":
            own["JAN_RUNNER_PORT"] = str(self.ports[name])
            own["JAN_RUNNER_ADVERTISE_ADDRESS"] = f"127.0.0.1:{self.ports[name]}"
            if name != "runner":  # one of several: its own name, no shared metrics port, part of the cores
                own["JAN_RUNNER_NAME"] = name
                own["JAN_RUNNER_METRICS_PORT"] = "0"
                if "JAN_RUNNER_THREADS" not in env:
                    own["JAN_RUNNER_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.runner_names)))
        for service in self.services_of(name):
            if service in self.metrics_ports:
                own[f"JAN_{kind(service).upper()}_METRICS_PORT"] = str(self.metrics_ports[service])
        return own

    def start(self, extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(extra_env or {})
        for name in self.names:
            self.start_service(name)
        self.wait_ready(timeout)

    def start_service(self, name: str) -> None:
        """Starts one process by name (also used by tests to bring back one they killed)."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULES[kind(name)]],
                env=self.env(self.extra_env, service=name),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))

    def kill(self, name: str) -> None:
        """kill -9 of one process, as a crash would."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def is_ready(self, runners: int | None = None) -> bool:
        """Every service answers the gateway's /healthz and `runners` runners (default: as many as this
        object started) have registered."""
        if runners is None:
            runners = sum(kind(name) == "runner" for name in self.procs)
        try:
            resp = httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False)  # loopback: no proxy
            return resp.status_code == 200 and resp.json().get("runners", 0) >= runners
        except (httpx.HTTPError, ValueError):
            return False

    def exited(self) -> str | None:
        """Why a started process is no longer running (its exit status and the end of its log), if one
        is not."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}"
        return None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (exited := self.exited()) is not None:
                self.stop()
                raise RuntimeError(exited)
            if self.is_ready():
                return
            time.sleep(0.1)
        message = self.not_ready(timeout)
        self.stop()
        raise RuntimeError(message)

    def not_ready(self, timeout: float) -> str:
        try:
            last = httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False).text
        except httpx.HTTPError as exc:
            last = repr(exc)
        tails = "\n".join(f"--- {name}.log\n{self.log_tail(name, 15)}" for name in self.procs or self.names)
        return (
            f"the stack did not become ready in {timeout:.0f} s (last /healthz: {last}); "
            f"logs in {self.log_dir}\n{tails}"
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Runners first, all at once and given their drain (the requests they are serving finish through
        the gateway, still up), then the others in reverse start order, each within `timeout`."""
        runners = [n for n in self.names if kind(n) == "runner"]
        pids = [pid for pid in map(self._pid, runners) if pid is not None]
        _terminate_all(pids, drain_timeout_s(self.extra_env) + timeout)
        for name in reversed(self.names):
            pid = self._pid(name)
            if pid is not None:
                _terminate_all([pid], timeout)
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        self.procs.clear()

    def _pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        try:
            pid = int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _running(pid, MODULES[kind(name)]) else None


def _running(pid: int, module: str) -> bool:
    """Whether `pid` is a live process running `module` (a pid file outlives a reboot, and its number
    may belong to someone else's process by now)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: trust the pid file
    return module.encode() in cmdline


def _exists(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has: only its parent has yet to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return True


def drain_timeout_s(extra_env: Mapping[str, str]) -> float:
    """How long a runner told to stop may take to finish its requests (JAN_RUNNER_DRAIN_TIMEOUT_S)."""
    value = extra_env.get("JAN_RUNNER_DRAIN_TIMEOUT_S") or os.environ.get("JAN_RUNNER_DRAIN_TIMEOUT_S")
    try:
        return max(0.0, float(value)) if value else DRAIN_TIMEOUT_S
    except ValueError:
        return DRAIN_TIMEOUT_S


def _terminate(pid: int, timeout: float) -> None:
    _terminate_all([pid], timeout)


def _terminate_all(pids: list[int], timeout: float) -> None:
    """SIGTERM to each, then SIGKILL to those still running after `timeout`; every one reaped."""
    waiting = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            waiting.append(pid)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        waiting = [pid for pid in waiting if not _ended(pid)]
        if waiting:
            time.sleep(0.05)
    for pid in waiting:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        # Reaped before returning, so its ports are free for whatever starts next.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _ended(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return bool(done)
    except ChildProcessError:  # not our child (started by an earlier `up`)
        return not _exists(pid)


# --- local mode: the plan of ports, its record, up and down --------------------------------------------


def local_runners(env: Mapping[str, str]) -> int:
    value = env.get("JAN_LOCAL_RUNNERS", "").strip() or "1"
    if not value.isdigit() or not 1 <= int(value) <= MAX_LOCAL_RUNNERS:
        raise StackError(f"JAN_LOCAL_RUNNERS={value!r}: a whole number from 1 to {MAX_LOCAL_RUNNERS}")
    return int(value)


# (table: "ports" or "metrics", process, the variable that names it, the port; None: any free one)
Wanted = list[tuple[str, str, str, int | None]]


def wanted_ports(env: Mapping[str, str], runners: int) -> Wanted:
    """The gRPC (gateway: HTTP) and metrics port of every process of a local stack, as the environment
    asks for them: a port its variable sets (with several runners, JAN_RUNNER_PORT and
    JAN_RUNNER_METRICS_PORT are the first runner's, the others' follow it); the gateway's is
    JAN_GATEWAY_PORT or 1337; any other is any free port. A metrics variable set to 0 turns those
    metrics off."""
    wanted: Wanted = []
    for name in service_names(runners):
        service = kind(name)
        offset = int(name.partition("-")[2] or 1) - 1
        label, port = _wanted(env, f"JAN_{service.upper()}_PORT", offset)
        wanted.append(("ports", name, label, port or None))  # 0: any free port, known to the stack
        if service != "gateway":
            label, port = _wanted(env, f"JAN_{service.upper()}_METRICS_PORT", offset)
            if port != 0:  # 0: metrics off
                wanted.append(("metrics", name, label, port))
    return wanted


def plan_ports(wanted: Wanted) -> tuple[dict[str, int], dict[str, int]]:
    """The ports and metrics ports by process name; a port asked for must be free now."""
    plan: dict[str, dict[str, int]] = {"ports": {}, "metrics": {}}
    owners: dict[int, str] = {}
    for table, name, label, port in wanted:  # the given ports first, so that no free one takes theirs
        if port is not None:
            if port in owners:
                raise StackError(f"port {port} is given twice: {owners[port]} and {label}")
            _check_free(port, label)
            owners[port] = label
            _handed_out.add(port)
            plan[table][name] = port
    for table, name, _label, port in wanted:
        if port is None:
            plan[table][name] = free_port()
    return plan["ports"], plan["metrics"]


def _wanted(env: Mapping[str, str], variable: str, offset: int) -> tuple[str, int | None]:
    """(how the port is named to the user, the port it must be or None for a free one)."""
    value = env.get(variable, "").strip()
    if variable == "JAN_GATEWAY_PORT" and not value:
        value = str(GATEWAY_DEFAULT_PORT)
    if not value:
        return variable, None
    if not value.isdigit() or int(value) > 65535:
        raise StackError(f"{variable}={value!r}: a port number from 0 to 65535")
    port = int(value)
    if port == 0 or offset == 0:
        return variable, port
    if port + offset > 65535:
        raise StackError(f"{variable}={value!r}: no room for {offset + 1} runners above it")
    return f"{variable} + {offset}", port + offset


def _check_free(port: int, variable: str) -> None:
    with socket.socket() as s:
        # A port in TIME_WAIT is free for a server (they all set SO_REUSEADDR); one someone listens on
        # is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            base = variable.split(" ")[0]
            raise StackError(f"port {port} ({variable}) is in use: set {base} to a free port") from None


def write_record(stack: Stack, supervisor: int | None) -> None:
    """JAN_ROOT/run/stack.json: the supervisor's pid, each service's ports and process, for `down`,
    tools and tests (written whole, then renamed, so a reader never sees half of it)."""
    services: dict[str, dict[str, Any]] = {}
    for name in stack.services:
        services[name] = {"port": stack.ports[name], "process": stack.process_of(name)}
        if name in stack.metrics_ports:
            services[name]["metrics_port"] = stack.metrics_ports[name]
    record = {"url": stack.url, "supervisor": supervisor, "services": services}
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = stack.run_dir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(stack.run_dir / RECORD)


def read_record(root: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads((root / "run" / RECORD).read_text())
        return record
    except (OSError, ValueError):
        return {}


def recorded_stack(root: Path) -> Stack:
    """The stack that JAN_ROOT's record describes."""
    services: dict[str, dict[str, Any]] = read_record(root).get("services", {})
    ports = {name: service["port"] for name, service in services.items()}
    metrics = {
        name: service["metrics_port"] for name, service in services.items() if "metrics_port" in service
    }
    separate = services.get("downloader", {}).get("process") == "downloader"
    return Stack(root=root, ports=ports, metrics_ports=metrics, separate=separate)


def down(root: Path) -> None:
    """Stops the supervisor (which stops its services), then any service still running without one (its
    supervisor killed, or started before there were supervisors)."""
    record = read_record(root)
    supervisor = record.get("supervisor")
    if isinstance(supervisor, int) and _running(supervisor, "cli.stack"):
        # It stops its runners (within their drain), then its other services one by one (each within 10 s).
        _terminate(supervisor, drain_timeout_s({}) + 10.0 * (len(record.get("services", {})) + 2))
    leftovers = [p.stem for p in (root / "run").glob("*.pid") if kind(p.stem) in MODULES]
    Stack(root=root, ports=dict.fromkeys(leftovers, 0), separate=True).stop()  # each pid file a process
    (root / "run" / RECORD).unlink(missing_ok=True)


def up(env: Mapping[str, str], timeout: float = 120.0) -> Stack:
    """Starts the supervised stack in the background and returns it once it answers."""
    root = Path(env.get("JAN_ROOT", "~/jan")).expanduser().resolve()
    wanted = wanted_ports(env, local_runners(env))  # a bad setting leaves a running stack alone
    down(root)  # a stack already running from this JAN_ROOT is restarted
    ports, metrics = plan_ports(wanted)
    stack = Stack(root=root, ports=ports, metrics_ports=metrics)
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    write_record(stack, supervisor=None)
    log_path = stack.log_dir / "supervisor.log"
    with open(log_path, "ab") as log:
        start = log.tell()
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "cli.stack", "supervise"],
            env={**env, "JAN_ROOT": str(root)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command and the terminal it runs in
        )
    deadline = time.monotonic() + timeout
    while not stack.is_ready(len(stack.runner_names)):
        if supervisor.poll() is not None:
            with open(log_path, "rb") as log:
                log.seek(start)
                raise StackError(log.read().decode(errors="replace").strip() or "the supervisor exited")
        if time.monotonic() > deadline:
            _terminate(supervisor.pid, 60.0)  # it stops what it started
            down(root)
            raise StackError(f"the stack did not start in {timeout:.0f} s; logs in {stack.log_dir}")
        time.sleep(0.2)
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.stack", description=__doc__)
    parser.add_argument(
        "command", choices=["up", "down", "supervise"], help="supervise: run by `up`, not by hand"
    )
    args = parser.parse_args()
    root = Path(os.environ.get("JAN_ROOT", "~/jan")).expanduser().resolve()
    if args.command == "down":
        down(root)
        print("stopped")
        return
    if args.command == "supervise":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per readiness poll
        stack = recorded_stack(root)
        if "gateway" not in stack.ports:
            raise SystemExit(
                f"no stack planned in {stack.run_dir / RECORD}: `python -m cli.stack up` starts one"
            )
        write_record(stack, supervisor=os.getpid())
        try:
            status = Supervisor(stack).run()
        finally:
            (stack.run_dir / RECORD).unlink(missing_ok=True)
        sys.exit(status)
    try:
        stack = up(os.environ)
    except StackError as exc:
        raise SystemExit(str(exc)) from None
    runners = len(stack.runner_names)
    print(f"Jan Models is up: {stack.url}  (JAN_ROOT={stack.root}, logs in {stack.log_dir})")
    print(f"  {runners} runner{'s' if runners > 1 else ''}, supervised; ports in {stack.run_dir / RECORD}")
    print(f"  open {stack.url}/ in a browser  |  curl {stack.url}/v1/models  |  .venv/bin/jan models list")
    print("  stop: make down")


if __name__ == "__main__":
    main()
