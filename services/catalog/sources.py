"""Where a model may come from: a local path inside the directories allowed for import (or a watched one),
or an http(s) URL that resolves to addresses the URL rules allow (services/common/netsafety.py)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from services.catalog.model import is_binary_name
from services.catalog.settings import CatalogSettings
from services.common import netsafety
from services.common.errors import InvalidArgument, PermissionDenied

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


class Sources:
    def __init__(self, settings: CatalogSettings, resolver: netsafety.Resolver) -> None:
        self.settings = settings
        self._resolver = resolver

    def roots(self) -> list[Path]:
        """The directories local files may be imported from."""
        return [*self.settings.import_allowed_dirs, *self.settings.watch_dirs]

    def directory(self, source_url: str) -> Path | None:
        """The local directory a source_url names, checked against the directories allowed for import;
        None when it names no directory (a file, a URL)."""
        source = source_url.strip()
        scheme = _SCHEME.match(source)
        if not source or source == "./" or (scheme and scheme.group(1).lower() != "file"):
            return None  # a URL (http, triton ...): `create` decides what it is
        path = self._local_path(source)
        if not path.is_dir():
            return None
        return self._allowed(path)

    def local_file(self, source: str) -> Path:
        """The model binary a local source_url names, resolved, when it lies where imports may come from."""
        path = self._local_path(source)
        resolved = self._allowed(path)
        if not resolved.is_file():
            raise InvalidArgument(f"{path} is not a file", code="source_not_found", param="source_url")
        if not is_binary_name(resolved.name):
            raise InvalidArgument(
                f"{resolved.name} does not look like a model binary (.gguf, .bin, ...)", param="source_url"
            )
        return resolved

    async def check_url(self, url: str) -> None:
        """InvalidArgument unless `url` is http(s) and resolves to addresses the URL rules allow."""
        allow_private = self.settings.allow_private_networks
        await asyncio.to_thread(
            netsafety.require_safe_url, url, allow_private=allow_private, resolver=self._resolver
        )

    def _local_path(self, source: str) -> Path:
        # Any other URL (ftp:, gopher:, data:, ...) is refused as such, not taken for a relative path.
        scheme = _SCHEME.match(source)
        if scheme and scheme.group(1).lower() != "file":
            raise InvalidArgument(
                f"URL scheme {scheme.group(1).lower()!r} is not allowed; use http(s) or a local path",
                code="unsafe_source_url",
                param="source_url",
            )
        if source.startswith("file://"):
            source = source[len("file://") :]
        path = Path(os.path.expanduser(source))
        if not path.is_absolute():
            raise InvalidArgument("a local source_url must be an absolute path", param="source_url")
        return path

    def _allowed(self, path: Path) -> Path:
        """`path` resolved, when it lies in a directory allowed for import (or a watched one)."""
        resolved = path.resolve()
        if not any(resolved == d or d in resolved.parents for d in self.roots()):
            raise PermissionDenied(
                f"{path} is outside the directories allowed for import "
                f"(JAN_IMPORT_ALLOWED_DIRS: {', '.join(map(str, self.settings.import_allowed_dirs))})",
                code="import_path_not_allowed",
                param="source_url",
            )
        return resolved
