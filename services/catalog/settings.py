"""Settings of the catalog service (environment variables JAN_CATALOG_*, a few shared JAN_* names)."""

from __future__ import annotations

from pathlib import Path

from services.common.envsettings import setting
from services.common.service_settings import (
    GrpcHost,
    GrpcPort,
    GrpcServiceSettings,
    LogLevel,
    MetricsPort,
    absolute_all,
    root_field,
    shared_alias,
)

PREFIX = "JAN_CATALOG_"

# The recommended models shipped with the project (json only), seeded into a new JAN_ROOT.
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"


class CatalogSettings(GrpcServiceSettings):
    env_prefix = PREFIX

    root: Path = root_field(PREFIX, "Jan's root folder; model objects live in <root>/models.")
    host: GrpcHost = "127.0.0.1"
    port: GrpcPort = 13370
    import_allowed_dirs: list[Path] = setting(
        default_factory=lambda: [Path.home()],
        env=shared_alias(PREFIX, "import_allowed_dirs"),
        after=absolute_all,
        description="Directories (separated by ',' or ':') under which local files may be imported.",
    )
    watch_dirs: list[Path] = setting(
        default_factory=list,
        env=shared_alias(PREFIX, "watch_dirs"),
        after=absolute_all,
        description="Directories (separated by ',' or ':') whose GGUF models appear in the catalog by "
        "themselves, linked in place, and disappear when deleted there.",
    )
    allow_private_networks: bool = setting(
        default=False,
        env=shared_alias(PREFIX, "allow_private_networks"),
        description="Accept source URLs on loopback, private or link-local addresses.",
    )
    seed_models_dir: Path | None = setting(
        default=SHIPPED_MODELS,
        description="Recommended model objects copied into a new root, never overwriting (empty: none).",
    )
    watch: bool = setting(default=True, description="Watch the models folder with inotify for hand edits.")
    watch_debounce_ms: int = setting(
        default=30, ge=1, le=10_000, description="Batching window of file events."
    )
    rescan_interval_s: float = setting(
        default=30.0, ge=0.5, le=86_400, description="Full rescan period: the safety net for missed events."
    )
    report_ttl_s: float = setting(
        default=10.0,
        ge=0.3,
        le=3600,
        description="A download report or runner heartbeat older than this is stale (the process is gone).",
    )
    default_page_size: int = setting(default=1000, ge=1, le=100_000, description="ListModels page size.")
    max_page_size: int = setting(
        default=10_000, ge=1, le=100_000, description="Largest page a client may ask."
    )
    import_max_bytes: int = setting(
        default=512 * 1024**3, ge=1, description="Largest total size an imported archive may extract to."
    )
    log_level: LogLevel = "INFO"
    metrics_port: MetricsPort = 0

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def state_dir(self) -> Path:
        """The catalog's own bookkeeping (links it made, seeded ids, temp files); hidden from scans."""
        return self.root / ".catalog"
