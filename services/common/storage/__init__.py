"""Where model binaries (GGUF files, often several GB) are kept: a shared local folder or an S3/MinIO bucket.

The model json objects always stay in JAN_ROOT/models (the catalog owns them); only binaries go through
this module. Both backends share one life cycle:

* the downloader writes a binary into the hidden LOCAL file `partial_path(folder, name)`, verifies it,
  then calls `commit`, which makes it visible in one atomic step (a rename on disk, a completed multipart
  upload in S3 - resumable after a crash, see `S3Storage.commit`);
* the catalog asks `stat` / `list_folder` / `list_all` which binaries exist;
* a runner that needs a real file for llama.cpp calls `materialize` (local: the file itself; S3: a
  verified copy in a local cache, downloaded once, resumable with ranged GETs).

Every folder and name is checked to be a single, non-hidden path component, so nothing can be written
outside JAN_ROOT or the bucket prefix. All methods are blocking: async callers run them in threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.filesafety import check_name
from services.common.storage.base import ProgressCallback, Storage, StorageError, StorageUsage
from services.common.storage.local import LocalStorage
from services.common.storage.settings import MiB, StorageSettings

if TYPE_CHECKING:
    from services.common.storage.s3 import S3Storage

__all__ = [
    "LocalStorage",
    "MiB",
    "ProgressCallback",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageSettings",
    "StorageUsage",
    "check_name",
    "make_storage",
]


def __getattr__(name: str) -> Any:
    # The S3 client library costs every process ~20 MB resident: imported only where a bucket is used.
    if name == "S3Storage":
        from services.common.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_storage(settings: StorageSettings, root: Path) -> Storage:
    """The configured backend for Jan root `root` (JAN_ROOT)."""
    if settings.backend == "s3":
        from services.common.storage.s3 import S3Storage

        return S3Storage(
            settings,
            staging_dir=root / ".downloads" / "staging",
            cache_dir=settings.cache_dir or root / "cache",
        )
    return LocalStorage(root / "models")
