"""Settings of the catalog service (environment variables JAN_CATALOG_*, a few shared JAN_* names)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The recommended models shipped with the project (json only), seeded into a new JAN_ROOT.
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"


class CatalogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JAN_CATALOG_", extra="ignore", populate_by_name=True)

    root: Path = Field(
        default=Path("~/jan"),
        validation_alias=AliasChoices("JAN_CATALOG_ROOT", "JAN_ROOT"),
        description="Jan's root folder; model objects live in <root>/models.",
    )
    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(default=13370, ge=0, le=65535, description="gRPC port (0 = any free port).")
    import_allowed_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path.home()],
        validation_alias=AliasChoices("JAN_CATALOG_IMPORT_ALLOWED_DIRS", "JAN_IMPORT_ALLOWED_DIRS"),
        description="Directories (separated by ',' or ':') under which local files may be imported.",
    )
    watch_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("JAN_CATALOG_WATCH_DIRS", "JAN_WATCH_DIRS"),
        description="Directories (separated by ',' or ':') whose GGUF models appear in the catalog by "
        "themselves, linked in place, and disappear when deleted there.",
    )
    allow_private_networks: bool = Field(
        default=False,
        validation_alias=AliasChoices("JAN_CATALOG_ALLOW_PRIVATE_NETWORKS", "JAN_ALLOW_PRIVATE_NETWORKS"),
        description="Accept source URLs on loopback, private or link-local addresses.",
    )
    seed_models_dir: Path | None = Field(
        default=SHIPPED_MODELS,
        description="Recommended model objects copied into a new root, never overwriting (empty: none).",
    )
    watch: bool = Field(default=True, description="Watch the models folder with inotify for hand edits.")
    watch_debounce_ms: int = Field(default=30, ge=1, le=10_000, description="Batching window of file events.")
    rescan_interval_s: float = Field(
        default=30.0, ge=0.5, le=86_400, description="Full rescan period: the safety net for missed events."
    )
    report_ttl_s: float = Field(
        default=10.0,
        ge=0.3,
        le=3600,
        description="A download report or runner heartbeat older than this is stale (the process is gone).",
    )
    default_page_size: int = Field(default=1000, ge=1, le=100_000, description="ListModels page size.")
    max_page_size: int = Field(default=10_000, ge=1, le=100_000, description="Largest page a client may ask.")
    import_max_bytes: int = Field(
        default=512 * 1024**3, ge=1, description="Largest total size an imported archive may extract to."
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Log level.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics server on host (0 = off)."
    )

    @field_validator("root", mode="after")
    @classmethod
    def _expand_root(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("seed_models_dir", mode="before")
    @classmethod
    def _empty_means_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("import_allowed_dirs", "watch_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, v: object) -> object:
        if isinstance(v, str):
            parts = [p.strip() for chunk in v.split(",") for p in chunk.split(os.pathsep)]
            return [p for p in parts if p]
        return v

    @field_validator("import_allowed_dirs", "watch_dirs", mode="after")
    @classmethod
    def _expand_dirs(cls, v: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in v]

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def state_dir(self) -> Path:
        """The catalog's own bookkeeping (links it made, seeded ids, temp files); hidden from scans."""
        return self.root / ".catalog"
