"""Settings of the storage backend (JAN_STORAGE_*) and the S3 limits they are checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from services.common.envsettings import Secret, Settings, setting
from services.common.service_settings import external_alias

PREFIX = "JAN_STORAGE_"
MiB = 1024 * 1024
# S3 limits: every part but the last must be at least 5 MiB, a part at most 5 GiB, at most 10,000 parts.
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000


def _plain_endpoint(v: str) -> str:
    v = v.strip()
    # The SDK wants host[:port]; a URL here is the commonest misconfiguration, so say what to do.
    if "://" in v or "/" in v:
        raise ValueError("s3_endpoint is host:port without scheme or path (use s3_secure for https)")
    return v


def _clean_prefix(v: str) -> str:
    v = v.strip().strip("/")
    for segment in v.split("/") if v else []:
        if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
            raise ValueError(f"s3_prefix {v!r} has an empty, '.', '..' or invalid segment")
    return v


class StorageSettings(Settings):
    """Storage backend settings (environment variables JAN_STORAGE_*, plus the usual AWS key names)."""

    env_prefix = PREFIX

    backend: Literal["local", "s3"] = setting(
        default="local",
        description="Where model binaries live: 'local' (JAN_ROOT/models) or 's3' (an S3/MinIO bucket).",
    )
    s3_endpoint: str = setting(
        default="",
        max_length=255,
        after=_plain_endpoint,
        description="S3 endpoint as host:port without scheme, e.g. 'minio:9000'.",
    )
    s3_secure: bool = setting(default=True, description="Reach the S3 endpoint over https.")
    s3_bucket: str = setting(
        default="jan-models",
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="Bucket holding the binaries; created on first use when missing.",
    )
    s3_prefix: str = setting(
        default="models",
        max_length=512,
        after=_clean_prefix,
        description="Key prefix: binaries are stored as <prefix>/<folder>/<name> ('' = bucket root).",
    )
    s3_access_key: str = setting(
        default="",
        max_length=256,
        env=external_alias(PREFIX, "s3_access_key", "AWS_ACCESS_KEY_ID"),
        description="S3 access key ('' = anonymous access).",
    )
    s3_secret_key: Secret = setting(
        default=Secret(""),
        # Secret: shown as ****** by repr and --print-settings, never in logs.
        env=external_alias(PREFIX, "s3_secret_key", "AWS_SECRET_ACCESS_KEY"),
        description="S3 secret key.",
    )
    s3_region: str = setting(
        default="",
        max_length=64,
        pattern=r"^[a-z0-9-]*$",
        description="S3 region ('' = ask the server, us-east-1 for a new bucket).",
    )
    s3_part_size: int = setting(
        default=64 * MiB,
        ge=S3_MIN_PART_SIZE,
        le=S3_MAX_PART_SIZE,
        description="Multipart upload part size in bytes; also the most memory one upload holds.",
    )
    s3_quota_bytes: int = setting(
        default=0, ge=0, description="Bucket space granted to Jan in bytes, for free_bytes() (0 = unknown)."
    )
    cache_dir: Path | None = setting(
        default=None, description="Local copies made by materialize() in S3 mode (default JAN_ROOT/cache)."
    )

    def check(self) -> None:
        if self.backend == "s3" and not self.s3_endpoint:
            raise ValueError("backend 's3' needs s3_endpoint (JAN_STORAGE_S3_ENDPOINT=host:port)")
