"""What every service's settings share: the `ServiceSettings` base and the fields each service repeats,
defined once and listed by each service in its order (how settings are read: services/common/envsettings.py).

The shared fields are types (`GrpcHost`, `GrpcPort`, `HfEndpoint`, `LogLevel`, `MetricsPort`, `Port`) and
the field functions (`root_field`, `hf_endpoint_field`), not fields of the base: a base's fields would come
first in every class, and `--print-settings` lists a service's settings in the order its class declares them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from services.common.envsettings import Settings, setting

Port = Annotated[int, setting(ge=0, le=65535)]
GrpcHost = Annotated[str, setting(description="Address the gRPC server binds to.")]
GrpcPort = Annotated[Port, setting(description="gRPC port (0 = any free port).")]
LogLevel = Annotated[str, setting(pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")]
MetricsPort = Annotated[
    Port, setting(description="Port of the Prometheus /metrics server on host (0 = off).")
]
# A Hub URL is the endpoint followed by "/<path>": a trailing slash would double it.
HfEndpoint = Annotated[str, setting(after=lambda v: v.rstrip("/"))]


class ServiceSettings(Settings):
    """Base of a service's settings class, which sets its own `env_prefix` (JAN_<SERVICE>_)."""

    if TYPE_CHECKING:  # what every service declares, each in its own order (not fields of the base)
        host: str
        log_level: str


class GrpcServiceSettings(ServiceSettings):
    """Base of a gRPC service's settings (the catalog's, the downloader's, a runner's): those also serve
    their Prometheus metrics on a port of their own."""

    if TYPE_CHECKING:
        metrics_port: int


def shared_alias(env_prefix: str, name: str) -> tuple[str, str]:
    """The service's own variable (JAN_RUNNER_CATALOG_ADDRESS), else the one all services read
    (JAN_CATALOG_ADDRESS), so that one setting configures a whole stack."""
    return (f"{env_prefix}{name.upper()}", f"JAN_{name.upper()}")


def external_alias(env_prefix: str, name: str, variable: str) -> tuple[str, str]:
    """The service's own variable (JAN_DOWNLOADER_HF_TOKEN), else the one another tool reads for the same
    thing (HF_TOKEN, AWS_ACCESS_KEY_ID), so that an environment set up for that tool works as it is."""
    return (f"{env_prefix}{name.upper()}", variable)


def hf_endpoint_field(env_prefix: str, description: str) -> Any:
    """The Hugging Face Hub's base URL, or a mirror's (an `HfEndpoint`): <PREFIX>HF_ENDPOINT, else
    huggingface_hub's HF_ENDPOINT, https://huggingface.co by default."""
    return setting(
        "https://huggingface.co",
        env=external_alias(env_prefix, "hf_endpoint", "HF_ENDPOINT"),
        description=description,
    )


def absolute(path: Path) -> Path:
    return path.expanduser().resolve()


def absolute_all(paths: list[Path]) -> list[Path]:
    return [absolute(p) for p in paths]


def root_field(env_prefix: str, description: str) -> Any:
    """Jan's root folder: <PREFIX>ROOT or JAN_ROOT, ~/jan by default, made absolute."""
    return setting(
        Path("~/jan"), env=shared_alias(env_prefix, "root"), description=description, after=absolute
    )
