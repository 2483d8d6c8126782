"""Which source URLs a model of the `tensorrt` engine may have and which Triton server and model they name:
the one rule the catalog applies when it names a new object and the runner when it loads one."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class TritonSource:
    """The Triton model a `tensorrt` model object names."""

    address: str  # host:port of the server's gRPC endpoint, an IPv6 host in brackets
    model: str  # the model's name on that server
    version: str = ""  # '' = the version the server picks


def parse_triton_source(source_url: str) -> TritonSource:
    """triton://HOST:GRPC_PORT/MODEL[/VERSION]; InvalidArgument for anything else."""
    refused = InvalidArgument(
        "a tensorrt model's source_url must be triton://HOST:GRPC_PORT/MODEL_NAME",
        code="invalid_source_url",
        param="source_url",
    )
    parts = urlsplit(source_url)
    try:
        port = parts.port  # ValueError for a port that is not a number of 0-65535
    except ValueError:
        raise refused from None
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme != "triton" or not parts.hostname or not port or not 1 <= len(segments) <= 2:
        raise refused
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return TritonSource(f"{host}:{port}", segments[0], segments[1] if len(segments) == 2 else "")
