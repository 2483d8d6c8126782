"""What every service's settings share: the `ServiceSettings` base (environment conventions, Jan's root
made absolute) and the fields each service repeats, defined once and listed by each service in its order.

The shared fields are types (`GrpcHost`, `GrpcPort`, `HfEndpoint`, `LogLevel`, `MetricsPort`, `Port`) and
the field functions (`root_field`, `hf_endpoint_field`), not fields of the base: a base's fields would come
first in every class, and `--print-settings` lists a service's settings in the order its class declares them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=0, le=65535)]
GrpcHost = Annotated[str, Field(description="Address the gRPC server binds to.")]
GrpcPort = Annotated[Port, Field(description="gRPC port (0 = any free port).")]
LogLevel = Annotated[str, Field(pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")]
MetricsPort = Annotated[Port, Field(description="Port of the Prometheus /metrics server on host (0 = off).")]
# A Hub URL is the endpoint followed by "/<path>": a trailing slash would double it.
HfEndpoint = Annotated[str, AfterValidator(lambda v: v.rstrip("/"))]


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


def external_alias(env_prefix: str, name: str, variable: str) -> AliasChoices:
    """The service's own variable (JAN_DOWNLOADER_HF_TOKEN), else the one another tool reads for the same
    thing (HF_TOKEN, AWS_ACCESS_KEY_ID), so that an environment set up for that tool works as it is."""
    return AliasChoices(f"{env_prefix}{name.upper()}", variable)


def hf_endpoint_field(env_prefix: str, description: str) -> Any:
    """The Hugging Face Hub's base URL, or a mirror's (an `HfEndpoint`): <PREFIX>HF_ENDPOINT, else
    huggingface_hub's HF_ENDPOINT, https://huggingface.co by default."""
    return Field(
        default="https://huggingface.co",
        validation_alias=external_alias(env_prefix, "hf_endpoint", "HF_ENDPOINT"),
        description=description,
    )


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
