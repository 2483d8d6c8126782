"""The catalog's index: the model folders as the disk has them, in memory, with what other services report
about each model (downloading, running); its queries (get, list, problems) and its changes (changes.py).

The json files are the truth. The index is refreshed per folder: after every write the catalog makes, on
every file event (inotify), on every Get (so a hand edit is never served stale), and by a periodic full
rescan that catches what events miss (network filesystems). Scans run in worker threads and are applied on
the event loop; a per-folder generation counter drops a scan result that a newer refresh has overtaken.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from jan.model.v1 import model_pb2
from services.catalog.changes import Change, ChangeFeed
from services.catalog.files import Entry, FolderIndex, list_folders, scan_folder
from services.catalog.headers import HeaderCache
from services.catalog.model import Runtime, split_id, to_pb
from services.catalog.settings import CatalogSettings
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.storage import Storage

log = logging.getLogger(__name__)

_LIVE_STATES = (model_pb2.MODEL_STATE_DOWNLOADING, model_pb2.MODEL_STATE_RUNNING)


def split_model_id(model_id: str) -> tuple[str, str]:
    """(folder, stem) of a model id; InvalidArgument for an id that is not two safe names."""
    try:
        return split_id(model_id)
    except ValueError as exc:
        raise InvalidArgument(str(exc), code="invalid_model_id", param="id") from None


def entry_of(index: FolderIndex | None, folder: str, stem: str) -> Entry:
    """The valid object `stem` of a folder's index; FailedPrecondition when its file is invalid."""
    entry = index.entries.get(stem) if index else None
    if entry is not None:
        return entry
    problem = index.problems.get(f"{stem}.json") if index else None
    if problem is not None:
        raise FailedPrecondition(
            f"{problem.path} is not a valid model object: {problem.reason}", code="invalid_model_file"
        )
    raise NotFound(f"model {folder}/{stem} not found", code="model_not_found", param="id")


class Index:
    def __init__(self, settings: CatalogSettings, storage: Storage | None, changes: ChangeFeed) -> None:
        self.settings = settings
        self.root = settings.root
        self.models_dir = settings.models_dir
        # The bucket when binaries live in one: what it holds decides which binaries are present.
        self.storage = storage
        self.changes = changes
        self._folders: dict[str, FolderIndex] = {}
        self._gen: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._runtime: dict[str, Runtime] = {}
        self._reported_at: dict[str, float] = {}
        self._sorted: list[str] | None = None
        self._by_id: dict[str, model_pb2.Model] = {}
        # GGUF header traits of the binaries, read once per file version by the scans (never by a list).
        self.headers = HeaderCache()

    # --- what it holds ------------------------------------------------------------------------------------

    @property
    def models(self) -> Mapping[str, model_pb2.Model]:
        """Every valid model by id as the index holds it now (read-only; no look at the disk)."""
        return MappingProxyType(self._by_id)

    def folder(self, name: str) -> FolderIndex | None:
        """A folder's index as it stands (no look at the disk)."""
        return self._folders.get(name)

    def lock(self, folder: str) -> asyncio.Lock:
        """Held by whoever writes into the folder, so a write and its refresh are not interleaved."""
        return self._locks.setdefault(folder, asyncio.Lock())

    def model_bytes(self) -> int:
        """The sum of the models' binaries on disk: a binary two objects use counts for each."""
        return sum(
            b.size_on_disk
            for index in self._folders.values()
            for e in index.entries.values()
            for b in e.binaries
        )

    # --- kept true to the disk ----------------------------------------------------------------------------

    async def rescan_all(self) -> None:
        folders = set(self._folders) | set(await asyncio.to_thread(list_folders, self.models_dir))
        gens = {f: self._gen.get(f, 0) for f in folders}
        results = await asyncio.to_thread(
            self._scan_all, sorted(folders), dict(self._folders), dict(self._runtime)
        )
        for folder, index in results.items():
            if self._gen.get(folder, 0) == gens[folder]:
                self._apply(folder, index)

    def _scan_all(
        self, folders: list[str], previous: dict[str, FolderIndex], runtime: dict[str, Runtime]
    ) -> dict[str, FolderIndex | None]:
        stored = self.storage.list_all() if self.storage is not None else None
        return {
            f: scan_folder(
                self.root,
                f,
                previous.get(f),
                runtime,
                None if stored is None else stored.get(f, {}),
                self.headers,
            )
            for f in folders
        }

    async def refresh_folder(self, folder: str) -> FolderIndex | None:
        async with self.lock(folder):
            gen = self._gen.get(folder, 0)
            index = await asyncio.to_thread(
                self._scan_one, folder, self._folders.get(folder), dict(self._runtime)
            )
            if self._gen.get(folder, 0) == gen:
                self._apply(folder, index)
            return self._folders.get(folder)

    def _scan_one(
        self, folder: str, previous: FolderIndex | None, runtime: dict[str, Runtime]
    ) -> FolderIndex | None:
        stored = self.storage.list_folder(folder) if self.storage is not None else None
        return scan_folder(self.root, folder, previous, runtime, stored, self.headers)

    def _apply(self, folder: str, index: FolderIndex | None) -> None:
        """Swaps a folder's index in and tells watchers what changed."""
        old = self._folders.get(folder)
        self._gen[folder] = self._gen.get(folder, 0) + 1
        if index is None:
            self._folders.pop(folder, None)
        else:
            self._folders[folder] = index
        old_entries = old.entries if old else {}
        new_entries = index.entries if index else {}
        for entry in new_entries.values():
            self._by_id[entry.obj.id] = entry.pb
        for stem, entry in old_entries.items():
            if stem not in new_entries:
                self._by_id.pop(entry.obj.id, None)
        if set(old_entries) != set(new_entries):
            self._sorted = None
        for change in folder_changes(old, index):
            self.changes.publish(change)

    async def follow_disk(self, stop: asyncio.Event) -> None:
        """Refreshes each folder whose files change (inotify through `watchfiles`) until `stop` is set."""
        import watchfiles

        step = self.settings.watch_debounce_ms
        try:
            async for events in watchfiles.awatch(
                self.models_dir,
                watch_filter=None,
                step=step,
                debounce=max(step * 10, 200),
                stop_event=stop,
                ignore_permission_denied=True,
            ):
                for folder in sorted(self._touched(events)):
                    await self.refresh_folder(folder)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("file watching stopped; changes show up by the periodic rescan only")

    def _touched(self, events: Iterable[tuple[object, str]]) -> set[str]:
        folders = set()
        for _, path in events:
            rel = Path(path).relative_to(self.models_dir).parts if path != str(self.models_dir) else ()
            if rel and not rel[0].startswith("."):
                # An event on a hidden temp file inside a folder still means: look at the folder.
                folders.add(rel[0])
        return folders

    # --- queries ------------------------------------------------------------------------------------------

    def list_models(
        self,
        page_size: int = 0,
        page_token: str = "",
        states: list[int] | None = None,
        engines: list[str] | None = None,
    ) -> tuple[list[model_pb2.Model], str, int]:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", param="page_size")
        size = min(page_size or self.settings.default_page_size, self.settings.max_page_size)
        after = _decode_token(page_token)
        ids = self._matching(states or [], engines or [])
        start = bisect.bisect_right(ids, after) if after else 0
        page = [self._by_id[i] for i in ids[start : start + size]]
        more = start + size < len(ids)
        token = base64.urlsafe_b64encode(page[-1].id.encode()).decode() if more and page else ""
        return page, token, len(ids)

    def _matching(self, states: list[int], engines: list[str]) -> list[str]:
        ids = self._ids()
        if not states and not engines:
            return ids
        wanted_states, wanted_engines = set(states), set(engines)
        by_id = self._by_id
        return [
            i
            for i in ids
            if (not wanted_states or by_id[i].state in wanted_states)
            and (not wanted_engines or by_id[i].engine in wanted_engines)
        ]

    def _ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._by_id)
        return self._sorted

    async def get(self, model_id: str) -> model_pb2.Model:
        folder, stem = split_model_id(model_id)
        index = await self.refresh_folder(folder)
        return entry_of(index, folder, stem).pb

    def problems(self) -> list[model_pb2.Problem]:
        return sorted((p for f in self._folders.values() for p in f.problems.values()), key=lambda p: p.path)

    # --- changes ------------------------------------------------------------------------------------------

    def changed_since(self, version: str) -> tuple[list[model_pb2.Model], list[str]] | None:
        """The models changed or added since `version` (in id order) and the ids gone since; None when
        this catalog cannot tell (another start's version, or more changes since than it keeps)."""
        ids = self.changes.ids_since(version)
        if ids is None:
            return None
        models = [self._by_id[i] for i in sorted(ids) if i in self._by_id]
        return models, sorted(i for i in ids if i not in self._by_id)

    async def watch(self, include_initial: bool = False) -> AsyncIterator[Change]:
        watcher = self.changes.subscribe()
        try:
            if include_initial:
                for change in self._initial():
                    yield change
            async for change in self.changes.follow(watcher):
                yield change
        finally:
            self.changes.unsubscribe(watcher)

    def _initial(self) -> Iterator[Change]:
        for model_id in list(self._ids()):
            pb = self._by_id.get(model_id)
            if pb is not None:
                yield Change("added", model_id, model=pb)
        for problem in self.problems():
            yield Change("invalid", problem.id, problem=problem)

    # --- reports from other services ----------------------------------------------------------------------

    async def report_runtime(self, model_id: str, runtime: Runtime) -> model_pb2.Model:
        """Records what a downloader or runner says about a model, looks at its files again (a download
        that just ended changed them) and republishes it."""
        folder, stem = split_model_id(model_id)
        self._record(model_id, runtime)
        index = await self.refresh_folder(folder)
        entry = entry_of(index, folder, stem)
        pb = to_pb(entry.obj, entry.binaries, runtime, self.root, entry.traits)
        if pb != entry.pb:
            entry.pb = pb
            self._by_id[model_id] = pb
            self.changes.publish(Change("updated", model_id, model=pb))
        return entry.pb

    def _record(self, model_id: str, runtime: Runtime) -> None:
        if runtime == Runtime():
            self._runtime.pop(model_id, None)
            self._reported_at.pop(model_id, None)
        else:
            self._runtime[model_id] = runtime
            self._reported_at[model_id] = time.monotonic()

    async def expire_reports(self) -> None:
        """A download or a runner that stops reporting (its process died) no longer makes a model
        downloading or running: after report_ttl_s without a report the files decide again."""
        ttl = self.settings.report_ttl_s
        now = time.monotonic()
        for model_id, runtime in list(self._runtime.items()):
            if runtime.runners:
                continue  # where replicas run: the runners' heartbeats decide (placement.expire)
            if runtime.state in _LIVE_STATES and now - self._reported_at.get(model_id, now) > ttl:
                await self._expire(model_id, runtime)

    async def _expire(self, model_id: str, runtime: Runtime) -> None:
        what = "download" if runtime.state == model_pb2.MODEL_STATE_DOWNLOADING else "runner"
        log.warning(
            "no report about %s for %.0f s: its %s is gone", model_id, self.settings.report_ttl_s, what
        )
        reason = f"the {what} stopped reporting ({runtime.runner or 'process gone'})"
        with contextlib.suppress(Exception):
            await self.report_runtime(model_id, Runtime(reason=reason))


def _decode_token(page_token: str) -> str:
    """The last id of the page before; "" for the first page."""
    if not page_token:
        return ""
    try:
        return base64.urlsafe_b64decode(page_token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this service issued", param="page_token") from None


def folder_changes(old: FolderIndex | None, new: FolderIndex | None) -> list[Change]:
    """What watchers are told when a folder's index `old` becomes `new`."""
    old_entries = old.entries if old else {}
    new_entries = new.entries if new else {}
    old_problems = old.problems if old else {}
    new_problems = new.problems if new else {}
    changes = _entry_changes(old_entries, new_entries)
    # An object whose file turned invalid is reported invalid, not removed.
    invalid_ids = {p.id for p in new_problems.values()}
    changes += [
        Change("removed", e.obj.id)
        for stem, e in old_entries.items()
        if stem not in new_entries and e.obj.id not in invalid_ids
    ]
    changes += [
        Change("invalid", p.id, problem=p) for name, p in new_problems.items() if old_problems.get(name) != p
    ]
    new_ids = {e.obj.id for e in new_entries.values()}
    changes += [
        Change("removed", p.id)
        for name, p in old_problems.items()
        if name not in new_problems and p.id not in new_ids
    ]
    return changes


def _entry_changes(old: dict[str, Entry], new: dict[str, Entry]) -> list[Change]:
    changes = []
    for stem, entry in new.items():
        prev = old.get(stem)
        if prev is None:
            changes.append(Change("added", entry.obj.id, model=entry.pb))
        elif prev.pb is not entry.pb and prev.pb != entry.pb:
            changes.append(Change("updated", entry.obj.id, model=entry.pb))
    return changes
