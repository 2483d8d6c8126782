"""Settings of a runner (environment variables JAN_RUNNER_*, a few shared names)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_budget() -> int:
    """80% of the memory available when the runner starts."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 * 8 // 10
    except OSError:
        pass
    return 8 * 1024**3


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JAN_RUNNER_", extra="ignore", populate_by_name=True)

    root: Path = Field(
        default=Path("~/jan"),
        validation_alias=AliasChoices("JAN_RUNNER_ROOT", "JAN_ROOT"),
        description="Jan's root folder (models in <root>/models).",
    )
    name: str = Field(default_factory=socket.gethostname, description="This runner's unique name.")
    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(default=13372, ge=0, le=65535, description="gRPC port (0 = any free port).")
    advertise_address: str = Field(
        default="", description="host:port the gateway uses to reach this runner (default host:port)."
    )
    catalog_address: str = Field(
        default="127.0.0.1:13370",
        validation_alias=AliasChoices("JAN_RUNNER_CATALOG_ADDRESS", "JAN_CATALOG_ADDRESS"),
        description="host:port of the catalog's gRPC server.",
    )
    memory_budget_bytes: int = Field(
        default_factory=_default_budget, ge=64 * 1024**2, description="Memory the loaded models may use."
    )
    keep_alive_s: float = Field(
        default=300.0, ge=-1, description="An idle model is unloaded after this long (-1 = never)."
    )
    threads: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        le=512,
        description="CPU threads per model.",
    )
    max_queue: int = Field(
        default=64, ge=0, le=100_000, description="Requests waiting per model beyond its slots; more get 429."
    )
    queue_timeout_s: float = Field(
        default=300.0, gt=0, description="A request waiting longer than this for a slot gets 503."
    )
    default_ctx_len: int = Field(
        default=4096, ge=64, le=1_048_576, description="ctx_len when the model sets none."
    )
    default_n_parallel: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Slots (requests decoded together) of a llama.cpp model that sets no n_parallel; "
        "halved until the KV caches fit the memory budget.",
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")

    @field_validator("root", mode="after")
    @classmethod
    def _expand_root(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def address(self) -> str:
        return self.advertise_address or f"{self.host}:{self.port}"
