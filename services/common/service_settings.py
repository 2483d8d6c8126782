"""What every service's settings share: the `ServiceSettings` base (environment conventions, Jan's root
made absolute) and the fields each service repeats, defined once and listed by each service in its order.

The shared fields are types (`GrpcHost`, `GrpcPort`, `LogLevel`, `MetricsPort`, `Port`) and `root_field`,
not fields of the base: a base's fields would come first in every class, and `--print-settings` lists a
service's settings in the order its class declares them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=0, le=65535)]
GrpcHost = Annotated[str, Field(description="Address the gRPC server binds to.")]
GrpcPort = Annotated[Port, Field(description="gRPC port (0 = any free port).")]
LogLevel = Annotated[str, Field(pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")]
MetricsPort = Annotated[Port, Field(description="Port of the Prometheus /metrics server on host (0 = off).")]


class ServiceSettings(BaseSettings):
    """Base of a service's settings class, which sets its own `env_prefix` (JAN_<SERVICE>_): unknown
    variables are ignored, fields may be given by name, and a `root` field is made absolute."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    @field_validator("root", mode="after", check_fields=False)
    @classmethod
    def _expand_root(cls, v: Path) -> Path:
        return v.expanduser().resolve()


def shared_alias(env_prefix: str, name: str) -> AliasChoices:
    """The service's own variable (JAN_RUNNER_CATALOG_ADDRESS), else the one all services read
    (JAN_CATALOG_ADDRESS), so that one setting configures a whole stack."""
    return AliasChoices(f"{env_prefix}{name.upper()}", f"JAN_{name.upper()}")


def root_field(env_prefix: str, description: str) -> Any:
    """Jan's root folder: <PREFIX>ROOT or JAN_ROOT, ~/jan by default."""
    return Field(
        default=Path("~/jan"), validation_alias=shared_alias(env_prefix, "root"), description=description
    )


def split_list(value: object) -> object:
    """A list given in one variable: items separated by ',' or the path separator, blanks dropped."""
    if isinstance(value, str):
        return [p.strip() for chunk in value.split(",") for p in chunk.split(os.pathsep) if p.strip()]
    return value


def none_if_empty(value: object) -> object:
    """An empty variable means "not set" for an optional setting."""
    return None if value == "" else value
