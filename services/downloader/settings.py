"""Settings of the downloader service (environment variables JAN_DOWNLOADER_*, a few shared names)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class DownloaderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JAN_DOWNLOADER_", extra="ignore", populate_by_name=True)

    root: Path = Field(
        default=Path("~/jan"),
        validation_alias=AliasChoices("JAN_DOWNLOADER_ROOT", "JAN_ROOT"),
        description="Jan's root folder (models in <root>/models, job state in <root>/.downloads).",
    )
    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(default=13371, ge=0, le=65535, description="gRPC port (0 = any free port).")
    catalog_address: str = Field(
        default="127.0.0.1:13370",
        validation_alias=AliasChoices("JAN_DOWNLOADER_CATALOG_ADDRESS", "JAN_CATALOG_ADDRESS"),
        description="host:port of the catalog's gRPC server.",
    )
    connections: int = Field(default=4, ge=1, le=32, description="Parallel ranged connections for one file.")
    min_split_bytes: int = Field(
        default=64 * MiB, ge=MiB, description="Files smaller than twice this are fetched over one connection."
    )
    chunk_bytes: int = Field(
        default=4 * MiB,
        ge=16 * 1024,
        le=64 * MiB,
        description="Buffer size of a connection (4 of them in flight per file); the unit of hashing.",
    )
    stall_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="No byte for this long: drop the connection and resume."
    )
    connect_timeout_s: float = Field(default=30.0, gt=0, le=600, description="Connect + first byte deadline.")
    retries: int = Field(
        default=8,
        ge=0,
        le=1000,
        description="Attempts without progress before a file fails (progress resets).",
    )
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60, description="First retry delay (doubles).")
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600, description="Longest retry delay.")
    max_file_bytes: int = Field(
        default=512 * 1024**3, ge=1, description="Size cap: a binary larger than this is refused."
    )
    reserve_bytes: int = Field(
        default=1024 * MiB, ge=0, description="Free space that must remain after a download."
    )
    allow_private_networks: bool = Field(
        default=False,
        validation_alias=AliasChoices("JAN_DOWNLOADER_ALLOW_PRIVATE_NETWORKS", "JAN_ALLOW_PRIVATE_NETWORKS"),
        description="Fetch from loopback, private or link-local addresses (tests, private mirrors).",
    )
    hf_endpoint: str = Field(
        default="https://huggingface.co",
        validation_alias=AliasChoices("JAN_DOWNLOADER_HF_ENDPOINT", "HF_ENDPOINT"),
        description="Base URL of the Hugging Face Hub (as huggingface_hub's HF_ENDPOINT).",
    )
    hf_token: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("JAN_DOWNLOADER_HF_TOKEN", "HF_TOKEN"),
        description="Token for gated Hugging Face repositories (sent to the Hub's own host only).",
    )
    progress_interval_s: float = Field(
        default=0.25, gt=0, le=10, description="How often progress is published and reported."
    )
    keep_finished_s: float = Field(
        default=3600, ge=0, description="How long ended jobs stay listed before they are forgotten."
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics server on host (0 = off)."
    )

    @field_validator("root", mode="after")
    @classmethod
    def _expand_root(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("hf_endpoint", mode="after")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @property
    def state_dir(self) -> Path:
        return self.root / ".downloads"
