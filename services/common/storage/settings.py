"""Settings of the storage backend (JAN_STORAGE_*) and the S3 limits they are checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.service_settings import external_alias, none_if_empty

PREFIX = "JAN_STORAGE_"
MiB = 1024 * 1024
# S3 limits: every part but the last must be at least 5 MiB, a part at most 5 GiB, at most 10,000 parts.
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000


class StorageSettings(BaseSettings):
    """Storage backend settings (environment variables JAN_STORAGE_*, plus the usual AWS key names)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", populate_by_name=True)

    backend: Literal["local", "s3"] = Field(
        default="local",
        description="Where model binaries live: 'local' (JAN_ROOT/models) or 's3' (an S3/MinIO bucket).",
    )
    s3_endpoint: str = Field(
        default="", max_length=255, description="S3 endpoint as host:port without scheme, e.g. 'minio:9000'."
    )
    s3_secure: bool = Field(default=True, description="Reach the S3 endpoint over https.")
    s3_bucket: str = Field(
        default="jan-models",
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="Bucket holding the binaries; created on first use when missing.",
    )
    s3_prefix: str = Field(
        default="models",
        max_length=512,
        description="Key prefix: binaries are stored as <prefix>/<folder>/<name> ('' = bucket root).",
    )
    s3_access_key: str = Field(
        default="",
        max_length=256,
        validation_alias=external_alias(PREFIX, "s3_access_key", "AWS_ACCESS_KEY_ID"),
        description="S3 access key ('' = anonymous access).",
    )
    s3_secret_key: SecretStr = Field(
        default=SecretStr(""),
        # SecretStr: shown as ****** by repr and --print-settings, never in logs.
        validation_alias=external_alias(PREFIX, "s3_secret_key", "AWS_SECRET_ACCESS_KEY"),
        description="S3 secret key.",
    )
    s3_region: str = Field(
        default="",
        max_length=64,
        pattern=r"^[a-z0-9-]*$",
        description="S3 region ('' = ask the server, us-east-1 for a new bucket).",
    )
    s3_part_size: int = Field(
        default=64 * MiB,
        ge=S3_MIN_PART_SIZE,
        le=S3_MAX_PART_SIZE,
        description="Multipart upload part size in bytes; also the most memory one upload holds.",
    )
    s3_quota_bytes: int = Field(
        default=0, ge=0, description="Bucket space granted to Jan in bytes, for free_bytes() (0 = unknown)."
    )
    cache_dir: Path | None = Field(
        default=None, description="Local copies made by materialize() in S3 mode (default JAN_ROOT/cache)."
    )

    @field_validator("s3_endpoint", mode="after")
    @classmethod
    def _plain_endpoint(cls, v: str) -> str:
        v = v.strip()
        # The SDK wants host[:port]; a URL here is the commonest misconfiguration, so say what to do.
        if "://" in v or "/" in v:
            raise ValueError("s3_endpoint is host:port without scheme or path (use s3_secure for https)")
        return v

    @field_validator("s3_prefix", mode="after")
    @classmethod
    def _clean_prefix(cls, v: str) -> str:
        v = v.strip().strip("/")
        for segment in v.split("/") if v else []:
            if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
                raise ValueError(f"s3_prefix {v!r} has an empty, '.', '..' or invalid segment")
        return v

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_means_none(cls, v: object) -> object:
        return none_if_empty(v)

    @model_validator(mode="after")
    def _s3_needs_endpoint(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_endpoint:
            raise ValueError("backend 's3' needs s3_endpoint (JAN_STORAGE_S3_ENDPOINT=host:port)")
        return self
