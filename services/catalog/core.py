"""The catalog core: its rooms wired together, their life cycle (start, the background loops, close) and
the one door the servicer calls. Knows nothing about gRPC; raises the domain errors of
services.common.errors.

The rooms, each one concept: index.py (the models as the disk has them; queries; runtime reports),
changes.py (the change feed), sources.py (where a model may come from), binaries.py (binaries into and
out of storage), authoring.py (create, update, delete), directories.py (directories imported in place),
remote_imports.py (a remote API's models), folders.py (folder export and archive import), placement.py
(runners and placement; depends on the index, never the reverse), watched.py (watched directories).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from services.catalog.authoring import Authoring
from services.catalog.binaries import Binaries
from services.catalog.changes import ChangeFeed
from services.catalog.directories import DirectoryImporter
from services.catalog.files import LinkRegistry, seed_models
from services.catalog.folders import Folders
from services.catalog.index import Index
from services.catalog.placement import Placement
from services.catalog.remote_imports import RemoteImports
from services.catalog.settings import CatalogSettings
from services.catalog.sources import Sources
from services.catalog.watched import WatchedDirs
from services.common import netsafety
from services.common.storage import LocalStorage, Storage, StorageUsage

log = logging.getLogger(__name__)


class Catalog:
    def __init__(
        self,
        settings: CatalogSettings,
        resolver: netsafety.Resolver = netsafety.default_resolver,
        storage: Storage | None = None,
    ):
        self.settings = settings
        self.models_dir = settings.models_dir
        self.links = LinkRegistry(settings.state_dir / "links.json", self.models_dir)
        self.binaries = Binaries(
            storage if storage is not None else LocalStorage(self.models_dir), self.links
        )
        self.changes = ChangeFeed()
        self.index = Index(settings, self.binaries.storage, self.changes)
        self.sources = Sources(settings, resolver)
        self.authoring = Authoring(self.models_dir, self.index, self.sources, self.binaries)
        self.directories = DirectoryImporter(self.models_dir, self.index, self.sources, self.links)
        self.remote = RemoteImports(settings, self.index, self.authoring)
        self.folders = Folders(settings, self.index, self.binaries, self.links)
        self.placement = Placement(settings.report_ttl_s, self.index.get, self.index.report_runtime)
        self.watched = WatchedDirs(self, settings.watch_dirs, settings.state_dir / "watched.json")
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

        # The operations one room answers alone, by the names the servicer, the watched directories and
        # the tests call them here.
        self.get = self.index.get
        self.list_models = self.index.list_models
        self.problems = self.index.problems
        self.changed_since = self.index.changed_since
        self.watch = self.index.watch
        self.refresh_folder = self.index.refresh_folder
        self.report_runtime = self.index.report_runtime
        self.source_directory = self.sources.directory
        self.create = self.authoring.create
        self.update = self.authoring.update
        self.import_directory = self.directories.import_directory
        self.import_remote = self.remote.import_remote
        self.export_folder = self.folders.export_folder
        self.new_upload_file = self.folders.new_upload_file
        self.import_archive = self.folders.import_archive
        self.register_runner = self.placement.register
        self.live_runners = self.placement.live
        self.release = self.placement.release

    # --- the operations that are more than one room's (and the version, a property) ---------------------

    @property
    def version(self) -> str:
        return self.changes.version

    async def rescan_all(self) -> None:
        await self.binaries.sweep()
        await self.index.rescan_all()

    async def delete(self, model_id: str) -> list[str]:
        removed = await self.authoring.delete(model_id)
        self.placement.forget(model_id)
        return removed

    async def storage_usage(self) -> tuple[StorageUsage, int, int]:
        """What the binaries take (services/common/storage), and the sum of the models' sizes and their
        number: a binary two objects use counts for each."""
        usage = await self.binaries.usage()
        return usage, self.index.model_bytes(), len(self.index.models)

    # --- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        await self._seed()
        started = time.perf_counter()
        await self.rescan_all()
        log.info("indexed %d models in %.2f s", len(self.index.models), time.perf_counter() - started)
        await self.watched.sync_all()
        if self.settings.watch:
            self._run("catalog-watch", self.index.follow_disk(self._stop))
            self._run("catalog-watch-dirs", self.watched.watch(self._stop))
        self._run("catalog-rescan", self._every(self.settings.rescan_interval_s, self._rescan))
        self._run("catalog-report-expiry", self._every(self.settings.report_ttl_s / 3, self._expire_reports))

    async def _seed(self) -> None:
        seed_dir = self.settings.seed_models_dir
        if seed_dir is not None and seed_dir.is_dir():
            added = await asyncio.to_thread(
                seed_models, seed_dir, self.models_dir, self.settings.state_dir / "seeded.json"
            )
            if added:
                log.info("seeded %d recommended model objects", len(added))

    def _run(self, name: str, loop: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(loop, name=name))

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        """Runs `step` every `interval_s` until the catalog closes."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval_s)
                return
            await step()

    async def _rescan(self) -> None:
        """The safety net for file events missed (network filesystems), in the models and watched folders."""
        try:
            await self.rescan_all()
            await self.watched.sync_all()
        except Exception:
            log.exception("periodic rescan failed")

    async def _expire_reports(self) -> None:
        """Runners and downloads that stopped reporting are gone: placement first, as a runner's models'
        runtime says where they run."""
        await self.placement.expire()
        await self.index.expire_reports()

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.changes.close()
