"""Settings of the gateway (environment variables JAN_GATEWAY_*, plus the shared service addresses)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JAN_GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(default=1337, ge=0, le=65535, description="HTTP port (Jan's port by default).")
    catalog_address: str = Field(
        default="127.0.0.1:13370",
        validation_alias=AliasChoices("JAN_GATEWAY_CATALOG_ADDRESS", "JAN_CATALOG_ADDRESS"),
        description="host:port of the catalog's gRPC server.",
    )
    downloader_address: str = Field(
        default="127.0.0.1:13371",
        validation_alias=AliasChoices("JAN_GATEWAY_DOWNLOADER_ADDRESS", "JAN_DOWNLOADER_ADDRESS"),
        description="host:port of the downloader's gRPC server.",
    )
    jit_start: bool = Field(
        default=True, description="Start a downloaded model that is not running when a request names it."
    )
    load_timeout_s: float = Field(default=600.0, gt=0, description="Deadline of loading a model.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest JSON request body.")
    rpc_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Deadline of one catalog call.")
    transfer_timeout_s: float = Field(
        default=6 * 3600, gt=0, le=7 * 86400, description="Deadline of an archive import or export."
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")
