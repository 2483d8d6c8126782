"""Watched directories (JAN_CATALOG_WATCH_DIRS): folders whose GGUF models appear in the catalog by
themselves, imported in place (services/catalog/directories.py), and disappear when deleted there.

A directory is synced when the catalog starts, after its files change (inotify through `watchfiles`, once
the changes have settled, so a file still being copied in is not taken half-written), and at every
periodic rescan (the safety net for missed events, as for the models folder). A sync imports what is new
and deletes the objects of this directory whose files are gone. Which objects came from which watched
directory is recorded in the catalog's state (`watched.json`), so a model the user imported by hand is
never removed by a watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Protocol

import orjson

from jan.model.v1 import model_pb2
from services.catalog.directories import DirectoryImport
from services.common.errors import JanError, NotFound
from services.common.filesafety import write_atomic

log = logging.getLogger(__name__)

# Quiet time after the last change before a sync (a large file being copied keeps changing), and the
# longest a sync waits for that quiet.
SETTLE_MS = 1500
MAX_WAIT_MS = 60_000


class Importer(Protocol):
    """What a watched directory needs of the catalog."""

    async def import_directory(self, directory: Path, folder: str = "") -> DirectoryImport: ...

    async def get(self, model_id: str) -> model_pb2.Model: ...

    async def delete(self, model_id: str) -> list[str]: ...


class WatchedDirs:
    def __init__(self, importer: Importer, dirs: list[Path], record: Path) -> None:
        self.importer = importer
        self.dirs = dirs
        self.record = record
        self._ids: dict[str, str] = {}  # model id -> the watched directory it came from
        with contextlib.suppress(OSError, orjson.JSONDecodeError, AttributeError):
            loaded = orjson.loads(record.read_bytes())
            self._ids = {str(k): str(v) for k, v in loaded.items()}
        self._lock = asyncio.Lock()

    async def sync_all(self) -> None:
        for directory in self.dirs:
            await self.sync(directory)

    async def sync(self, directory: Path) -> None:
        """Imports what is new in `directory`; deletes the objects that came from it whose files are gone."""
        async with self._lock:
            if directory.is_dir():
                try:
                    imported = await self.importer.import_directory(directory)
                except JanError as exc:
                    log.warning("watched directory %s: %s", directory, exc)
                    return
                for model in imported.models:
                    self._ids[model.id] = str(directory)
                if imported.created_ids:
                    log.info("watched %s: %d new models", directory, len(imported.created_ids))
            for model_id in [i for i, d in self._ids.items() if d == str(directory)]:
                await self._drop_if_gone(model_id)
            await asyncio.to_thread(self._save)

    async def _drop_if_gone(self, model_id: str) -> None:
        try:
            model = await self.importer.get(model_id)
        except NotFound:
            self._ids.pop(model_id, None)  # deleted through the API: the next sync brings it back
            return
        if model.binaries and all(b.present for b in model.binaries):
            return
        log.info("watched model %s: its files are gone; removing it", model_id)
        with contextlib.suppress(NotFound):
            await self.importer.delete(model_id)
        self._ids.pop(model_id, None)

    def _save(self) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.record, orjson.dumps(self._ids, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    async def watch(self, stop: asyncio.Event) -> None:
        """Syncs each directory after its files change, until `stop` is set."""
        import watchfiles

        dirs = [d for d in self.dirs if d.is_dir()]
        missing = [d for d in self.dirs if d not in dirs]
        if missing:
            log.warning(
                "watched directories not found (synced at each rescan): %s", ", ".join(map(str, missing))
            )
        if not dirs:
            return
        try:
            async for changes in watchfiles.awatch(
                *dirs,
                watch_filter=None,
                step=SETTLE_MS,
                debounce=MAX_WAIT_MS,
                stop_event=stop,
                ignore_permission_denied=True,
            ):
                touched = {
                    d for _, path in changes for d in dirs if d == Path(path) or d in Path(path).parents
                }
                for directory in sorted(touched):
                    await self.sync(directory)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching %s stopped; changes there show up at each rescan only", dirs)
