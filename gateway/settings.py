"""Settings of the gateway (environment variables JAN_GATEWAY_*, plus the shared service addresses)."""

from __future__ import annotations

from pathlib import Path

from gateway.auth import APIKeyConfigError, load_keys
from services.common.envsettings import Secret, setting
from services.common.grpcserver import MESSAGE_LIMIT
from services.common.service_settings import (
    HfEndpoint,
    LogLevel,
    Port,
    ServiceSettings,
    hf_endpoint_field,
    shared_alias,
)

PREFIX = "JAN_GATEWAY_"
MiB = 1024 * 1024


class GatewaySettings(ServiceSettings):
    env_prefix = PREFIX

    host: str = setting(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: Port = setting(default=1337, description="HTTP port (Jan's port by default).")
    catalog_address: str = setting(
        default="127.0.0.1:13370",
        env=shared_alias(PREFIX, "catalog_address"),
        description="host:port of the catalog's gRPC server.",
    )
    downloader_address: str = setting(
        default="127.0.0.1:13371",
        env=shared_alias(PREFIX, "downloader_address"),
        description="host:port of the downloader's gRPC server.",
    )
    hf_endpoint: HfEndpoint = hf_endpoint_field(
        PREFIX,
        "Base URL of the Hugging Face Hub or a mirror (as huggingface_hub's HF_ENDPOINT): a repository URL "
        "on its host is imported as a repository, not as one file.",
    )
    jit_start: bool = setting(
        default=True, description="Start a downloaded model that is not running when a request names it."
    )
    load_timeout_s: float = setting(default=600.0, gt=0, description="Deadline of loading a model.")
    placement_ttl_s: float = setting(
        default=5.0,
        ge=0,
        le=300,
        description="How long an inference request may reuse the catalog's answer of which runner hosts a "
        "running model instead of asking again (0: ask on every request).",
    )
    routing: str = setting(
        default="affinity",
        pattern="^(affinity|least_loaded)$",
        description="How a request picks among a model's replicas: 'affinity' (a conversation goes back to "
        "the replica holding its prefix cache unless that one is overloaded, else fewest outstanding) or "
        "'least_loaded' (fewest outstanding requests only).",
    )
    affinity_load_factor: float = setting(
        default=1.25,
        ge=1.0,
        le=10.0,
        description="Bounded-load affinity: a replica takes a conversation back only while it holds at "
        "most this many times its fair share of the outstanding requests.",
    )
    max_body_bytes: int = setting(
        default=32 * MiB,
        ge=1024,
        description="Largest JSON request body (32 MiB: room for an image of JAN_GATEWAY_MAX_IMAGE_BYTES "
        "as a base64 data: URL, which is 4/3 of its size).",
    )
    max_images: int = setting(
        default=16, ge=0, le=1024, description="Most images one request may give (0: no image input)."
    )
    max_image_bytes: int = setting(
        default=20 * MiB,
        ge=1024,
        le=MESSAGE_LIMIT,
        description="Largest image of a request (its bytes, decoded or fetched); a larger one is a 400 and a "
        "URL's answer is not read past it. A request's images together go to the runner in one message of "
        f"at most {MESSAGE_LIMIT >> 20} MiB.",
    )
    image_timeout_s: float = setting(
        default=30.0, gt=0, le=600, description="Deadline of fetching one image URL, its redirects included."
    )
    allow_private_networks: bool = setting(
        default=False,
        env=shared_alias(PREFIX, "allow_private_networks"),
        description="Fetch image URLs from loopback, private or link-local addresses (tests, private "
        "networks).",
    )
    rpc_timeout_s: float = setting(default=30.0, gt=0, le=3600, description="Deadline of one catalog call.")
    transfer_timeout_s: float = setting(
        default=6 * 3600, gt=0, le=7 * 86400, description="Deadline of an archive import or export."
    )
    log_level: LogLevel = "INFO"
    api_keys: Secret | None = setting(
        default=None,
        env=shared_alias(PREFIX, "api_keys"),
        description="Comma-separated API keys; when any key is configured every route but /healthz and the "
        "OpenAPI document needs 'Authorization: Bearer <key>'.",
    )
    api_keys_file: Path | None = setting(
        default=None,
        env=shared_alias(PREFIX, "api_keys_file"),
        description="A file of API keys, one per line (blank lines and '#' comments ignored); read at start.",
    )
    metrics_public: bool = setting(
        default=False, description="Serve /metrics without an API key even when keys are configured."
    )

    _keys: list[str]

    def check(self) -> None:
        # Read here so that a missing, unreadable or empty key file stops the gateway at start-up.
        secret = self.api_keys.get_secret_value() if self.api_keys is not None else None
        try:
            self._keys = load_keys(secret, self.api_keys_file)
        except APIKeyConfigError as exc:
            raise ValueError(str(exc)) from None

    @property
    def keys(self) -> list[str]:
        """The API keys in force (empty: the gateway is open)."""
        return self._keys
