"""Settings of the downloader service (environment variables JAN_DOWNLOADER_*, a few shared names)."""

from __future__ import annotations

from pathlib import Path

from services.common.envsettings import Secret, setting
from services.common.service_settings import (
    GrpcHost,
    GrpcPort,
    GrpcServiceSettings,
    HfEndpoint,
    LogLevel,
    MetricsPort,
    external_alias,
    hf_endpoint_field,
    root_field,
    shared_alias,
)

MiB = 1024 * 1024
PREFIX = "JAN_DOWNLOADER_"


class DownloaderSettings(GrpcServiceSettings):
    env_prefix = PREFIX

    root: Path = root_field(
        PREFIX, "Jan's root folder (models in <root>/models, job state in <root>/.downloads)."
    )
    host: GrpcHost = "127.0.0.1"
    port: GrpcPort = 13371
    catalog_address: str = setting(
        default="127.0.0.1:13370",
        env=shared_alias(PREFIX, "catalog_address"),
        description="host:port of the catalog's gRPC server.",
    )
    connections: int = setting(
        default=4, ge=1, le=32, description="Parallel ranged connections for one file."
    )
    min_split_bytes: int = setting(
        default=64 * MiB, ge=MiB, description="Files smaller than twice this are fetched over one connection."
    )
    chunk_bytes: int = setting(
        default=4 * MiB,
        ge=16 * 1024,
        le=64 * MiB,
        description="Buffer size of a connection (4 of them in flight per file); the unit of hashing.",
    )
    stall_timeout_s: float = setting(
        default=30.0, gt=0, le=3600, description="No byte for this long: drop the connection and resume."
    )
    connect_timeout_s: float = setting(
        default=30.0, gt=0, le=600, description="Connect + first byte deadline."
    )
    retries: int = setting(
        default=8,
        ge=0,
        le=1000,
        description="Attempts without progress before a file fails (progress resets).",
    )
    backoff_initial_s: float = setting(default=0.5, gt=0, le=60, description="First retry delay (doubles).")
    backoff_max_s: float = setting(default=30.0, gt=0, le=3600, description="Longest retry delay.")
    max_file_bytes: int = setting(
        default=512 * 1024**3, ge=1, description="Size cap: a binary larger than this is refused."
    )
    reserve_bytes: int = setting(
        default=1024 * MiB, ge=0, description="Free space that must remain after a download."
    )
    allow_private_networks: bool = setting(
        default=False,
        env=shared_alias(PREFIX, "allow_private_networks"),
        description="Fetch from loopback, private or link-local addresses (tests, private mirrors).",
    )
    hf_endpoint: HfEndpoint = hf_endpoint_field(
        PREFIX, "Base URL of the Hugging Face Hub (as huggingface_hub's HF_ENDPOINT)."
    )
    hf_token: Secret = setting(
        default=Secret(""),
        env=external_alias(PREFIX, "hf_token", "HF_TOKEN"),
        description="Token for gated Hugging Face repositories (sent to the Hub's own host only).",
    )
    progress_interval_s: float = setting(
        default=0.25, gt=0, le=10, description="How often progress is published and reported."
    )
    keep_finished_s: float = setting(
        default=3600, ge=0, description="How long ended jobs stay listed before they are forgotten."
    )
    log_level: LogLevel = "INFO"
    metrics_port: MetricsPort = 0

    @property
    def state_dir(self) -> Path:
        return self.root / ".downloads"
