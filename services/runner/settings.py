"""Settings of a runner (environment variables JAN_RUNNER_*, a few shared names)."""

from __future__ import annotations

import fnmatch
import os
import socket
from collections.abc import Callable
from pathlib import Path

from services.common.envsettings import setting
from services.common.service_settings import (
    GrpcHost,
    GrpcPort,
    GrpcServiceSettings,
    LogLevel,
    MetricsPort,
    root_field,
    shared_alias,
)

PREFIX = "JAN_RUNNER_"


def _default_budget() -> int:
    """80% of the memory available when the runner starts: the machine's, or the container's limit
    (cgroup v2 `memory.max`, or v1's `memory.limit_in_bytes`) when that is lower."""
    available = 8 * 1024**3
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit():
            available = min(available, int(value))
        break
    return available * 8 // 10


WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def _own_address() -> str:
    """The address this machine's name resolves to (loopback when it resolves to nothing)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class RunnerSettings(GrpcServiceSettings):
    env_prefix = PREFIX

    root: Path = root_field(PREFIX, "Jan's root folder (models in <root>/models).")
    name: str = setting(default_factory=socket.gethostname, description="This runner's unique name.")
    host: GrpcHost = "127.0.0.1"
    port: GrpcPort = 13372
    advertise_address: str = setting(
        default="",
        description="host:port the gateway uses to reach this runner (default host:port; when host is a "
        "wildcard such as 0.0.0.0, this machine's own address: a container's or a pod's IP).",
    )
    catalog_address: str = setting(
        default="127.0.0.1:13370",
        env=shared_alias(PREFIX, "catalog_address"),
        description="host:port of the catalog's gRPC server.",
    )
    memory_budget_bytes: int = setting(
        default_factory=_default_budget, ge=64 * 1024**2, description="Memory the loaded models may use."
    )
    drain_timeout_s: float = setting(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM: how long requests in flight may take to finish (no new ones are taken) "
        "before the runner exits anyway.",
    )
    keep_alive_s: float = setting(
        default=300.0, ge=-1, description="An idle model is unloaded after this long (-1 = never)."
    )
    threads: int = setting(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        le=512,
        description="CPU threads per model.",
    )
    max_queue: int = setting(
        default=64, ge=0, le=100_000, description="Requests waiting per model beyond its slots; more get 429."
    )
    queue_timeout_s: float = setting(
        default=300.0, gt=0, description="A request waiting longer than this for a slot gets 503."
    )
    default_ctx_len: int = setting(
        default=4096, ge=64, le=1_048_576, description="ctx_len when the model sets none."
    )
    default_n_parallel: int = setting(
        default=4,
        ge=1,
        le=256,
        description="Slots (requests decoded together) of a llama.cpp model that sets no n_parallel; "
        "halved until the KV caches fit the memory budget.",
    )
    log_level: LogLevel = "INFO"
    metrics_port: MetricsPort = 0
    # Engines whose models run elsewhere (api: a remote OpenAI-style API; tensorrt: a Triton server).
    allow_private_networks: bool = setting(
        default=False,
        env=shared_alias(PREFIX, "allow_private_networks"),
        description="api/tensorrt models may reach loopback, private or link-local addresses.",
    )
    api_connect_timeout_s: float = setting(
        default=10.0, gt=0, le=600, description="api engine: connecting to the remote API."
    )
    api_read_timeout_s: float = setting(
        default=120.0, gt=0, le=3600, description="api engine: longest wait for the remote's next bytes."
    )
    triton_timeout_s: float = setting(
        default=600.0, gt=0, le=86_400, description="tensorrt engine: loading a model on Triton."
    )
    secret_env_names: list[str] = setting(
        default=["OPENAI_*", "AZURE_OPENAI_*", "JAN_SECRET_*"],
        description="Environment variables (',' separated globs) a model's \"env:NAME\" key may name.",
    )
    secret_dirs: list[Path] = setting(
        default=[Path("/run/secrets")],
        description="Directories (',' or ':' separated) a model's \"file:/path\" key may read from.",
    )

    def secret(self, value: str, what: str = "API-KEY") -> str:
        """A secret given in a model object: plain text, "env:NAME" (an allowed environment variable of
        this runner) or "file:/path" (a file under an allowed directory, e.g. a mounted secret).
        The allow-lists keep a model object from sending any other variable or file to a remote."""
        if value.startswith("env:"):
            name = value[4:].strip()
            if not any(fnmatch.fnmatchcase(name, p) for p in self.secret_env_names):
                raise ValueError(
                    f"{what} names the environment variable {name!r}, which is not in "
                    f"JAN_RUNNER_SECRET_ENV_NAMES ({', '.join(self.secret_env_names)})"
                )
            if name not in os.environ:
                raise ValueError(f"{what} names the environment variable {name!r}, which is not set")
            return os.environ[name].strip()
        if value.startswith("file:"):
            path = Path(value[5:].strip()).expanduser()
            resolved = path.resolve()
            if not path.is_absolute() or not any(
                d.resolve() == resolved.parent or d.resolve() in resolved.parents for d in self.secret_dirs
            ):
                raise ValueError(
                    f"{what} names the file {str(path)!r}, which is not under JAN_RUNNER_SECRET_DIRS "
                    f"({', '.join(map(str, self.secret_dirs))})"
                )
            try:
                return resolved.read_text().strip()
            except OSError as exc:
                raise ValueError(f"{what}: cannot read {path}: {exc.strerror}") from None
        return value

    @property
    def address(self) -> str:
        return self.advertise_address or f"{self.host}:{self.port}"

    def derive_advertise_address(self, port: int, own_address: Callable[[], str] | None = None) -> str:
        """Where the gateway reaches this runner bound on `port`: the advertise address when set, else
        host:port, except that a wildcard host (0.0.0.0, ::) cannot be dialled: then the address this
        machine's name resolves to (in a container or a pod, its own IP)."""
        if self.advertise_address:
            return self.advertise_address
        host = self.host
        if host in WILDCARD_HOSTS:
            host = (own_address or _own_address)()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
