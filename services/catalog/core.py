"""The catalog core: an in-memory index of the model folders kept true to the disk, and the operations on
model objects. Knows nothing about gRPC; raises the domain errors of services.common.errors.

The json files are the truth. The index is refreshed per folder: after every write made here, on every
file event (inotify), on every Get (so a hand edit is never served stale), and by a periodic full rescan
that catches what events miss (network filesystems). Scans run in worker threads and are applied on the
event loop; a per-folder generation counter drops a scan result that a newer refresh has overtaken.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from services.catalog import archive, directories, importers, local_scan
from services.catalog.directories import DirectoryImport
from services.catalog.files import (
    FolderIndex,
    LinkRegistry,
    list_folders,
    merge_patch,
    place_file,
    read_json_nofollow,
    scan_folder,
    seed_models,
    write_atomic,
)
from services.catalog.model import (
    REMOTE_ENGINES,
    ModelFileError,
    Runtime,
    check_name,
    dump_json,
    file_name_from_url,
    hf_author,
    hf_resolve_url,
    is_binary_name,
    is_remote_url,
    parse_model,
    quant_tag,
    split_id,
    to_pb,
)
from services.catalog.placement import Placement
from services.catalog.settings import CatalogSettings
from services.catalog.watched import WatchedDirs
from services.common import netsafety
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from services.common.storage import LocalStorage, Storage, StorageError, StorageUsage
from services.common.storage.fileops import hash_file

log = logging.getLogger(__name__)

IMPORT_MODES = ("link", "copy", "symlink")
# Ids of the latest changes kept: a listing at most this many changes old is brought up to date by them.
CHANGE_LOG = 4096
# Where a model found in a Hugging Face cache can be fetched again: the Hub itself.
HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class Change:
    """One change of the catalog, as WatchModels streams it."""

    kind: str  # "added" | "updated" | "removed" | "invalid"
    id: str
    model: model_pb2.Model | None = None
    problem: model_pb2.Problem | None = None


_OVERFLOW = Change("overflow", "")


class Catalog:
    def __init__(
        self,
        settings: CatalogSettings,
        resolver: netsafety.Resolver = netsafety.default_resolver,
        storage: Storage | None = None,
    ):
        self.settings = settings
        self.root = settings.root
        self.models_dir = settings.models_dir
        # The binaries' backend (each content stored once), and the bucket when binaries are not beside
        # the json files (None: in the model folders).
        self.backend = storage if storage is not None else LocalStorage(self.models_dir)
        self.storage = self.backend if self.backend.kind != "local" else None
        self._resolver = resolver
        self._folders: dict[str, FolderIndex] = {}
        self._gen: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._runtime: dict[str, Runtime] = {}
        self._reported_at: dict[str, float] = {}
        self._sorted: list[str] | None = None
        self._by_id: dict[str, model_pb2.Model] = {}
        # Serialised form of each model as a `repeated Model models = 1` element, made once per change.
        self._wire: dict[str, tuple[model_pb2.Model, bytes]] = {}
        self._subscribers: set[asyncio.Queue[Change | None]] = set()
        # Changes published since start, under a name of this start: what a listing's version says; the
        # ids of the latest ones (what changed since a recent version).
        self._boot = secrets.token_hex(4)
        self._changes = 0
        self._changed: collections.deque[str] = collections.deque(maxlen=CHANGE_LOG)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.links = LinkRegistry(settings.state_dir / "links.json", self.models_dir)
        self.watched = WatchedDirs(self, settings.watch_dirs, settings.state_dir / "watched.json")
        self.placement = Placement(settings.report_ttl_s, self.get, self.report_runtime)

    # --- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        seed_dir = self.settings.seed_models_dir
        if seed_dir is not None and seed_dir.is_dir():
            added = await asyncio.to_thread(
                seed_models, seed_dir, self.models_dir, self.settings.state_dir / "seeded.json"
            )
            if added:
                log.info("seeded %d recommended model objects", len(added))
        started = time.perf_counter()
        await self.rescan_all()
        log.info("indexed %d models in %.2f s", len(self._by_id), time.perf_counter() - started)
        await self.watched.sync_all()
        if self.settings.watch:
            self._tasks.append(asyncio.create_task(self._watch_loop(), name="catalog-watch"))
            self._tasks.append(asyncio.create_task(self.watched.watch(self._stop), name="catalog-watch-dirs"))
        self._tasks.append(asyncio.create_task(self._rescan_loop(), name="catalog-rescan"))
        self._tasks.append(asyncio.create_task(self._expire_reports_loop(), name="catalog-report-expiry"))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for q in list(self._subscribers):
            q.put_nowait(None)

    # --- index --------------------------------------------------------------------------------------------

    async def rescan_all(self) -> None:
        if isinstance(self.backend, LocalStorage):
            # Contents of folders removed by hand (rm -r) are freed here.
            freed = await asyncio.to_thread(self.backend.content.sweep)
            if freed:
                log.info("freed %d bytes no model folder uses any more", freed)
        folders = set(self._folders) | set(await asyncio.to_thread(list_folders, self.models_dir))
        gens = {f: self._gen.get(f, 0) for f in folders}
        previous = dict(self._folders)
        runtime = dict(self._runtime)

        def scan() -> dict[str, FolderIndex | None]:
            stored = self.storage.list_all() if self.storage is not None else None
            return {
                f: scan_folder(
                    self.root, f, previous.get(f), runtime, None if stored is None else stored.get(f, {})
                )
                for f in sorted(folders)
            }

        results = await asyncio.to_thread(scan)
        for folder, index in results.items():
            if self._gen.get(folder, 0) == gens[folder]:
                self._apply(folder, index)

    async def refresh_folder(self, folder: str) -> FolderIndex | None:
        async with self._lock(folder):
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
        return scan_folder(self.root, folder, previous, runtime, stored)

    def _lock(self, folder: str) -> asyncio.Lock:
        return self._locks.setdefault(folder, asyncio.Lock())

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
        old_problems = old.problems if old else {}
        new_problems = index.problems if index else {}
        changes: list[Change] = []
        for stem, entry in new_entries.items():
            prev = old_entries.get(stem)
            if prev is None:
                changes.append(Change("added", entry.obj.id, model=entry.pb))
            elif prev.pb is not entry.pb and prev.pb != entry.pb:
                changes.append(Change("updated", entry.obj.id, model=entry.pb))
            self._by_id[entry.obj.id] = entry.pb
        for stem, entry in old_entries.items():
            if stem not in new_entries:
                self._by_id.pop(entry.obj.id, None)
                self._wire.pop(entry.obj.id, None)
                if not any(p.id == entry.obj.id for p in new_problems.values()):
                    changes.append(Change("removed", entry.obj.id))
        for name, problem in new_problems.items():
            if old_problems.get(name) != problem:
                changes.append(Change("invalid", problem.id, problem=problem))
        new_ids = {e.obj.id for e in new_entries.values()}
        for name, problem in old_problems.items():
            if name not in new_problems and problem.id not in new_ids:
                changes.append(Change("removed", problem.id))
        if set(old_entries) != set(new_entries):
            self._sorted = None
        for change in changes:
            self._publish(change)

    @property
    def version(self) -> str:
        """Changes with every change a watcher is told of, and with every start of the catalog."""
        return f"{self._boot}-{self._changes}"

    def changed_since(self, version: str) -> tuple[list[model_pb2.Model], list[str]] | None:
        """The models changed or added since `version` (in id order) and the ids gone since; None when
        this catalog cannot tell (another start's version, or more changes since than it keeps)."""
        boot, _, count = version.partition("-")
        if boot != self._boot or not count.isdigit() or int(count) > self._changes:
            return None
        behind = self._changes - int(count)
        if behind > len(self._changed):
            return None
        ids = set(list(self._changed)[len(self._changed) - behind :]) if behind else set()
        models = [self._by_id[i] for i in sorted(ids) if i in self._by_id]
        return models, sorted(i for i in ids if i not in self._by_id)

    def _publish(self, change: Change) -> None:
        self._changes += 1
        self._changed.append(change.id)
        for q in list(self._subscribers):
            try:
                q.put_nowait(change)
            except asyncio.QueueFull:
                # A watcher that does not keep up is dropped rather than slowing the catalog down;
                # it is told so, and can watch again with include_initial to resynchronise.
                self._subscribers.discard(q)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(_OVERFLOW)

    def _ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._by_id)
        return self._sorted

    async def _watch_loop(self) -> None:
        import watchfiles

        step = self.settings.watch_debounce_ms
        try:
            async for changes in watchfiles.awatch(
                self.models_dir,
                watch_filter=None,
                step=step,
                debounce=max(step * 10, 200),
                stop_event=self._stop,
                ignore_permission_denied=True,
            ):
                folders = set()
                for _, path in changes:
                    rel = (
                        Path(path).relative_to(self.models_dir).parts if path != str(self.models_dir) else ()
                    )
                    if rel and not rel[0].startswith("."):
                        # An event on a hidden temp file inside a folder still means: look at the folder.
                        folders.add(rel[0])
                for folder in sorted(folders):
                    await self.refresh_folder(folder)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("file watching stopped; changes show up by the periodic rescan only")

    async def _rescan_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.rescan_interval_s)
                return
            try:
                await self.rescan_all()
                await self.watched.sync_all()
            except Exception:
                log.exception("periodic rescan failed")

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
        after = ""
        if page_token:
            try:
                after = base64.urlsafe_b64decode(page_token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument(
                    "page_token is not one this service issued", param="page_token"
                ) from None
        ids = self._ids()
        by_id = self._by_id
        if not states and not engines:
            start = bisect.bisect_right(ids, after) if after else 0
            page = [by_id[i] for i in ids[start : start + size]]
            total = len(ids)
            more = start + size < len(ids)
        else:
            wanted_states = set(states or [])
            wanted_engines = set(engines or [])
            matching = [
                i
                for i in ids
                if (not wanted_states or by_id[i].state in wanted_states)
                and (not wanted_engines or by_id[i].engine in wanted_engines)
            ]
            start = bisect.bisect_right(matching, after) if after else 0
            page = [by_id[i] for i in matching[start : start + size]]
            total = len(matching)
            more = start + size < len(matching)
        token = base64.urlsafe_b64encode(page[-1].id.encode()).decode() if more and page else ""
        return page, token, total

    def encode_models(self, models: list[model_pb2.Model]) -> bytes:
        """The wire bytes of `repeated Model models = 1` for these models, from a per-model cache.

        Listing 10,000 models is dominated by copying messages into the response; parsing the cached
        bytes into it is several times cheaper (see bench/catalog).
        """
        parts = []
        for m in models:
            cached = self._wire.get(m.id)
            if cached is None or cached[0] is not m:
                data = m.SerializeToString()
                cached = (m, b"\x0a" + _varint(len(data)) + data)
                self._wire[m.id] = cached
            parts.append(cached[1])
        return b"".join(parts)

    async def get(self, model_id: str) -> model_pb2.Model:
        folder, stem = self._split(model_id)
        index = await self.refresh_folder(folder)
        return self._entry_or_raise(index, folder, stem).pb

    def problems(self) -> list[model_pb2.Problem]:
        return sorted((p for f in self._folders.values() for p in f.problems.values()), key=lambda p: p.path)

    def _split(self, model_id: str) -> tuple[str, str]:
        try:
            return split_id(model_id)
        except ValueError as exc:
            raise InvalidArgument(str(exc), code="invalid_model_id", param="id") from None

    def _entry_or_raise(self, index: FolderIndex | None, folder: str, stem: str) -> Any:
        entry = index.entries.get(stem) if index else None
        if entry is not None:
            return entry
        problem = index.problems.get(f"{stem}.json") if index else None
        if problem is not None:
            raise FailedPrecondition(
                f"{problem.path} is not a valid model object: {problem.reason}", code="invalid_model_file"
            )
        raise NotFound(f"model {folder}/{stem} not found", code="model_not_found", param="id")

    # --- reports from other services ----------------------------------------------------------------------

    async def report_runtime(self, model_id: str, runtime: Runtime) -> model_pb2.Model:
        """Records what a downloader or runner says about a model, looks at its files again (a download
        that just ended changed them) and republishes it."""
        folder, stem = self._split(model_id)
        if runtime == Runtime():
            self._runtime.pop(model_id, None)
            self._reported_at.pop(model_id, None)
        else:
            self._runtime[model_id] = runtime
            self._reported_at[model_id] = time.monotonic()
        index = await self.refresh_folder(folder)
        entry = self._entry_or_raise(index, folder, stem)
        pb = to_pb(entry.obj, entry.binaries, runtime, self.root)
        if pb != entry.pb:
            entry.pb = pb
            self._by_id[model_id] = pb
            self._publish(Change("updated", model_id, model=pb))
        return entry.pb

    # --- runners and placement (services/catalog/placement.py; PlaceModel calls self.placement) ---------

    async def register_runner(self, runner: catalog_pb.Runner) -> tuple[float, list[catalog_pb.Assignment]]:
        """A runner's heartbeat: where its models run now, and the replicas it should load."""
        return await self.placement.register(runner)

    def live_runners(self) -> list[catalog_pb.Runner]:
        return self.placement.live()

    def release(self, model_id: str) -> None:
        self.placement.release(model_id)

    async def _expire_reports_loop(self) -> None:
        """A download or a runner that stops reporting (its process died) no longer makes a model
        downloading or running: after report_ttl_s without a report the files decide again."""
        ttl = self.settings.report_ttl_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), ttl / 3)
                return
            await self.placement.expire()
            now = time.monotonic()
            for model_id, runtime in list(self._runtime.items()):
                if runtime.runners:
                    continue  # where replicas run: the runners' heartbeats decide (placement.expire)
                live = runtime.state in (model_pb2.MODEL_STATE_DOWNLOADING, model_pb2.MODEL_STATE_RUNNING)
                if live and now - self._reported_at.get(model_id, now) > ttl:
                    what = "download" if runtime.state == model_pb2.MODEL_STATE_DOWNLOADING else "runner"
                    log.warning("no report about %s for %.0f s: its %s is gone", model_id, ttl, what)
                    reason = f"the {what} stopped reporting ({runtime.runner or 'process gone'})"
                    with contextlib.suppress(Exception):
                        await self.report_runtime(model_id, Runtime(reason=reason))

    # --- writes -------------------------------------------------------------------------------------------

    async def create(
        self,
        *,
        source_url: str,
        model_id: str = "",
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        import_mode: str = "link",
        owned_by: str | None = None,
    ) -> model_pb2.Model:
        source_url = source_url.strip()
        if not source_url:
            raise InvalidArgument(
                "source_url is required: an http(s) URL or a local file path", param="source_url"
            )
        if import_mode not in IMPORT_MODES:
            raise InvalidArgument(
                f"import_mode must be one of {', '.join(IMPORT_MODES)}", param="import_mode"
            )
        metadata = dict(metadata or {})
        data: dict[str, Any] = {}
        local: Path | None = None
        if metadata.get("engine") in REMOTE_ENGINES:
            # Runs elsewhere (a remote API, a Triton server): nothing to fetch or place; the runner checks
            # the address against the URL rules when it connects.
            file_name = importers.remote_model_name(source_url, metadata["engine"], parameters or {})
            data["source_url"] = source_url
        elif is_remote_url(source_url):
            await self._check_url(source_url)
            url = hf_resolve_url(source_url)
            file_name = file_name_from_url(url)
            if hf_author(url) and "/resolve/" not in url and "binaries" not in metadata:
                raise Unimplemented(
                    "importing a whole Hugging Face repository needs the downloader service; "
                    "give the URL of one file (…/resolve/main/<file>.gguf)",
                    code="hf_repo_import_unavailable",
                    param="source_url",
                )
            if not file_name:
                raise InvalidArgument("source_url names no file", param="source_url")
            data["source_url"] = url
        elif source_url == "./" and metadata.get("binaries"):
            # A second object over binaries already in its folder (Ollama's copy): nothing to import;
            # delete keeps the binaries another object of the folder still uses.
            first = metadata["binaries"][0]
            file_name = first if isinstance(first, str) else str(first.get("name", ""))
            data["source_url"] = "./"
        else:
            local = self._check_local(source_url)
            file_name = local.name
            data["source_url"] = "./"
            metadata.setdefault("binaries", [file_name])
        if model_id:
            folder, stem = self._split(model_id)
        else:
            remote = metadata.get("engine") in REMOTE_ENGINES  # "gpt-3.5-turbo" has no extension
            stem = (file_name if remote else os.path.splitext(file_name)[0]).lstrip(".") or "model"
            folder = stem
            try:
                check_name(folder, "folder")
            except ValueError as exc:
                raise InvalidArgument(f"cannot derive an id from {file_name!r}: {exc}", param="id") from None
        tag = quant_tag(file_name)
        if tag:
            metadata.setdefault("quantization", tag)
        if name is not None:
            data["name"] = name
        if description is not None:
            data["description"] = description
        if owned_by:
            data["owned_by"] = owned_by
        data["created"] = int(time.time())
        if parameters:
            data["parameters"] = parameters
        if metadata:
            data["metadata"] = metadata
        raw = dump_json(data)
        folder_dir = self.models_dir / folder
        json_path = folder_dir / f"{stem}.json"
        try:
            parse_model(folder, stem, json_path, raw, self.models_dir)
        except ModelFileError as exc:
            raise InvalidArgument(f"the model object would be invalid: {exc}") from None

        async with self._lock(folder):
            if local is not None and self.storage is not None:
                await asyncio.to_thread(self._create_stored, folder_dir, json_path, raw, local, file_name)
            else:
                await asyncio.to_thread(
                    self._create_files, folder_dir, json_path, raw, local, file_name, import_mode
                )
        index = await self.refresh_folder(folder)
        return self._entry_or_raise(index, folder, stem).pb

    async def import_directory(
        self,
        directory: Path,
        folder: str = "",
        *,
        parameters: dict[str, Any] | None = None,
        refused: list[str] | None = None,
    ) -> DirectoryImport:
        """Every GGUF model in a local directory (recursively; a Hugging Face cache is recognised),
        imported in place: links to the user's files, one folder per model family or repository, one
        object per quantization. `folder` puts them all into that folder (one family only); `parameters`
        go into every new object. `refused`: fields of the request that only make sense for one file."""
        for param in refused or []:
            what = "copies" if param == "import_mode" else f"takes no {param}"
            raise InvalidArgument(
                f"a directory is imported in place, one object per model: it {what} "
                f"({param} is for a single file)",
                code="not_for_directories",
                param=param,
            )
        if "/" in folder:
            raise InvalidArgument(
                "a directory's id is a folder name only: its objects are named after their files", param="id"
            )
        try:
            plan = await asyncio.to_thread(
                local_scan.plan_directory, directory, self._import_roots(), hub_url=HUB_URL
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc), code="source_not_found", param="source_url") from None
        if folder:
            try:
                check_name(folder, "folder")
            except ValueError as exc:
                raise InvalidArgument(str(exc), code="invalid_folder", param="id") from None
            if len(plan.folders) > 1:
                names = ", ".join(f.folder for f in plan.folders)
                raise InvalidArgument(
                    f"{directory} holds {len(plan.folders)} model families ({names}): import it without an "
                    "id to get one folder each",
                    code="several_families",
                    param="id",
                )
        result = DirectoryImport(folders=[], models=[], created_ids=[], skipped=list(plan.skipped))
        for planned in plan.folders:
            name = folder or planned.folder
            async with self._lock(name):
                placed = await asyncio.to_thread(
                    directories.place_folder, self.models_dir, name, planned, self.links, parameters or {}
                )
            index = await self.refresh_folder(name)
            result.skipped.extend(placed.skipped)
            result.created_ids.extend(f"{name}/{stem}" for stem in placed.created)
            entries = index.entries if index else {}
            models = [entries[s].pb for s in [*placed.created, *placed.existing] if s in entries]
            if models:
                result.folders.append(name)
                result.models.extend(sorted(models, key=lambda m: m.id))
        if result.created_ids:
            log.info("imported %d models in place from %s", len(result.created_ids), directory)
        return result

    async def storage_usage(self) -> tuple[StorageUsage, int, int]:
        """What the binaries take (services/common/storage), and the sum of the models' sizes and their
        number: a binary two objects use counts for each."""
        with _storage_errors():
            usage = await asyncio.to_thread(self.backend.usage)
        model_bytes = sum(
            b.size_on_disk
            for index in self._folders.values()
            for e in index.entries.values()
            for b in e.binaries
        )
        return usage, model_bytes, len(self._by_id)

    async def import_remote(
        self,
        importer: str,
        base_url: str,
        api_key: str = "",
        *,
        folder: str = "",
        models: list[str] | None = None,
        api_version: str = "",
    ) -> tuple[str, list[model_pb2.Model]]:
        """Objects of the api engine for a remote's models (services/catalog/importers.py), in one folder;
        models that exist already are left as they are and returned too."""
        if importer not in importers.IMPORTERS:
            raise InvalidArgument(
                f"importer must be one of {', '.join(importers.IMPORTERS)}", param="importer"
            )
        host = urlsplit(base_url).hostname
        if urlsplit(base_url).scheme not in ("http", "https") or not host:
            raise InvalidArgument("base_url must be an http(s) URL", param="base_url")
        names = list(models or [])
        if importer == "openai":
            if not names:
                if api_key.startswith(("env:", "file:")):
                    raise InvalidArgument(
                        "with a key reference the remote cannot be listed here: name the models",
                        param="models",
                    )
                names = await importers.list_openai_models(
                    base_url, api_key, allow_private=self.settings.allow_private_networks
                )
            objects = importers.openai_objects(base_url, api_key, names)
        else:
            if not names:
                raise InvalidArgument(
                    "Azure OpenAI cannot list a resource's deployments with its key: name them in models",
                    param="models",
                )
            objects = importers.azure_objects(base_url, api_key, names, api_version)
        folder = folder or importers.safe_name(host.split(".")[0] if importer == "azure_openai" else host)
        try:
            check_name(folder, "folder")
        except ValueError as exc:
            raise InvalidArgument(str(exc), code="invalid_model_id", param="folder") from None
        result = []
        for obj in objects:
            model_id = f"{folder}/{obj.stem}"
            try:
                result.append(
                    await self.create(
                        source_url=obj.source_url,
                        model_id=model_id,
                        name=obj.name,
                        parameters=obj.parameters,
                        metadata=obj.metadata,
                    )
                )
            except AlreadyExists:
                result.append(await self.get(model_id))
        return folder, result

    def _create_files(
        self, folder_dir: Path, json_path: Path, raw: bytes, local: Path | None, file_name: str, mode: str
    ) -> None:
        if folder_dir.is_symlink():
            raise FailedPrecondition(f"models/{folder_dir.name} is a symbolic link", code="invalid_folder")
        folder_dir.mkdir(parents=True, exist_ok=True)
        if json_path.exists() or json_path.is_symlink():
            raise AlreadyExists(
                f"model {folder_dir.name}/{json_path.stem} already exists", code="model_exists"
            )
        placed = False
        binary = folder_dir / file_name
        if local is not None:
            if binary.exists() or binary.is_symlink():
                if not (binary.exists() and os.path.samefile(binary, local)):
                    raise AlreadyExists(
                        f"models/{folder_dir.name}/{file_name} already exists and is another file",
                        code="binary_exists",
                    )
            elif mode == "copy":
                # The catalog's own copy: stored once, whatever other folder holds the same bytes.
                self._upload(folder_dir.name, file_name, local)
                placed = True
            else:
                how = place_file(local, binary, mode)
                placed = True
                if how == "symlink":
                    self.links.add(binary, local)
        try:
            with open(json_path, "xb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            if placed:
                self.links.remove(binary)
                self.backend.delete(folder_dir.name, file_name)
            raise

    def _create_stored(
        self, folder_dir: Path, json_path: Path, raw: bytes, local: Path, file_name: str
    ) -> None:
        """A local import when binaries live in a bucket: the file goes into the bucket (the runners
        read it from there; the folder keeps the json only), then the json is written."""
        assert self.storage is not None
        folder = folder_dir.name
        if json_path.exists() or json_path.is_symlink():
            raise AlreadyExists(f"model {folder}/{json_path.stem} already exists", code="model_exists")
        with _storage_errors():
            if self.storage.stat(folder, file_name) is not None:
                raise AlreadyExists(
                    f"the bucket already holds {folder}/{file_name}", code="binary_exists", param="id"
                )
        self._upload(folder, file_name, local)
        try:
            self._create_files(folder_dir, json_path, raw, None, file_name, "copy")
        except BaseException:
            with contextlib.suppress(Exception):
                self.storage.delete(folder, file_name)
            raise

    def _upload(self, folder: str, name: str, source: Path) -> None:
        """Copies `source` into the backend as binary `name` of `folder`, with the sha256 of what was
        read (stored once per content; the runners verify their copy against it)."""
        partial = self.backend.partial_path(folder, name)
        digest = hashlib.sha256()
        buf = bytearray(4 * 1024 * 1024)
        view = memoryview(buf)
        try:
            with open(source, "rb") as src, open(partial, "wb") as dst:
                while n := src.readinto(buf):
                    digest.update(view[:n])
                    dst.write(view[:n])
            with _storage_errors():
                self.backend.commit(folder, name, sha256=digest.hexdigest())
        finally:
            for leftover in partial.parent.glob(f"{partial.name}*"):  # the partial and any upload state
                leftover.unlink(missing_ok=True)

    def _upload_folder(self, folder: str, staging: Path) -> None:
        """An imported archive's binaries, when binaries live in a bucket: each goes up and leaves the
        folder, which keeps its json files. Nothing stays half done: on a failure the ones already up
        are removed again."""
        assert self.storage is not None
        uploaded: list[str] = []
        try:
            for path in sorted(staging.iterdir()):
                if path.name.startswith(".") or path.suffix == ".json" or not path.is_file():
                    continue
                self._upload(folder, path.name, path)
                uploaded.append(path.name)
                path.unlink()
        except BaseException:
            for name in uploaded:
                with contextlib.suppress(Exception):
                    self.storage.delete(folder, name)
            raise

    def source_directory(self, source_url: str) -> Path | None:
        """The local directory a source_url names, checked against the directories allowed for import;
        None when it names no directory (a file, a URL)."""
        source = source_url.strip()
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", source)
        if not source or source == "./" or (scheme and scheme.group(1).lower() != "file"):
            return None  # a URL (http, triton ...): `create` decides what it is
        path = self._local_path(source)
        if not path.is_dir():
            return None
        return self._allowed(path)

    def _local_path(self, source: str) -> Path:
        # Any other URL (ftp:, gopher:, data:, ...) is refused as such, not taken for a relative path.
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", source)
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
        allowed = self._import_roots()
        if not any(resolved == d or d in resolved.parents for d in allowed):
            raise PermissionDenied(
                f"{path} is outside the directories allowed for import "
                f"(JAN_IMPORT_ALLOWED_DIRS: {', '.join(map(str, self.settings.import_allowed_dirs))})",
                code="import_path_not_allowed",
                param="source_url",
            )
        return resolved

    def _import_roots(self) -> list[Path]:
        return [*self.settings.import_allowed_dirs, *self.settings.watch_dirs]

    def _store_folder(self, staging: Path) -> None:
        """An imported archive's binaries, in local mode: each is stored once (a content already stored
        replaces it by a link, its own bytes are freed)."""
        assert isinstance(self.backend, LocalStorage)
        for path in sorted(staging.iterdir()):
            if path.name.startswith(".") or path.suffix == ".json" or path.is_symlink() or not path.is_file():
                continue
            hasher, _ = hash_file(path)
            self.backend.content.adopt(path, hasher.hexdigest())

    def _check_local(self, source: str) -> Path:
        path = self._local_path(source)
        resolved = self._allowed(path)
        if not resolved.is_file():
            raise InvalidArgument(f"{path} is not a file", code="source_not_found", param="source_url")
        if not is_binary_name(resolved.name):
            raise InvalidArgument(
                f"{resolved.name} does not look like a model binary (.gguf, .bin, ...)", param="source_url"
            )
        return resolved

    async def _check_url(self, url: str) -> None:
        try:
            await asyncio.to_thread(
                netsafety.check_source_url,
                url,
                allow_private=self.settings.allow_private_networks,
                resolver=self._resolver,
            )
        except netsafety.UnsafeURLError as exc:
            raise InvalidArgument(str(exc), code="unsafe_source_url", param="source_url") from None

    async def update(
        self,
        model_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters_patch: Any = None,
        metadata_patch: Any = None,
    ) -> model_pb2.Model:
        folder, stem = self._split(model_id)
        for label, patch in (("parameters", parameters_patch), ("metadata", metadata_patch)):
            if patch is not None and not isinstance(patch, dict):
                raise InvalidArgument(f"{label} must be a JSON object (a merge patch)", param=label)
        async with self._lock(folder):
            await asyncio.to_thread(
                self._update_file, folder, stem, name, description, parameters_patch, metadata_patch
            )
        index = await self.refresh_folder(folder)
        return self._entry_or_raise(index, folder, stem).pb

    def _update_file(
        self, folder: str, stem: str, name: str | None, description: str | None, params: Any, meta: Any
    ) -> None:
        path = self.models_dir / folder / f"{stem}.json"
        try:
            raw = read_json_nofollow(path)
            obj = parse_model(folder, stem, path, raw, self.models_dir)
        except FileNotFoundError:
            raise NotFound(f"model {folder}/{stem} not found", code="model_not_found", param="id") from None
        except (ModelFileError, OSError) as exc:
            raise FailedPrecondition(
                f"models/{folder}/{stem}.json is not a valid model object: {exc}", code="invalid_model_file"
            ) from None
        data = dict(obj.data)
        if name is not None:
            data["name"] = name
        if description is not None:
            data["description"] = description
        if params is not None:
            data["parameters"] = merge_patch(data.get("parameters") or {}, params)
        if meta is not None:
            data["metadata"] = merge_patch(data.get("metadata") or {}, meta)
        # The rewrite makes a new file, so keep its original creation time as a property.
        data.setdefault("created", obj.created)
        new_raw = dump_json(data)
        try:
            parse_model(folder, stem, path, new_raw, self.models_dir)
        except ModelFileError as exc:
            raise InvalidArgument(f"the change would make the model invalid: {exc}") from None
        write_atomic(path, new_raw)

    async def delete(self, model_id: str) -> list[str]:
        folder, stem = self._split(model_id)
        await self.refresh_folder(folder)
        async with self._lock(folder):
            index = self._folders.get(folder)
            entry = index.entries.get(stem) if index else None
            invalid = index is not None and f"{stem}.json" in index.problems
            if entry is None and not invalid:
                raise NotFound(f"model {folder}/{stem} not found", code="model_not_found", param="id")
            owned: list[str] = []
            if entry is not None and index is not None:
                shared = {
                    b.spec.name
                    for other in index.entries.values()
                    if other is not entry
                    for b in other.binaries
                    if not b.spec.external_path
                }
                owned = [
                    b.spec.name
                    for b in entry.binaries
                    if not b.spec.external_path and b.spec.name not in shared
                ]
            removed = await asyncio.to_thread(self._delete_files, folder, stem, owned)
        self.placement.forget(model_id)
        await self.refresh_folder(folder)
        return removed

    def _delete_files(self, folder: str, stem: str, binaries: list[str]) -> list[str]:
        folder_dir = self.models_dir / folder
        removed = []
        json_path = folder_dir / f"{stem}.json"
        json_path.unlink(missing_ok=True)
        removed.append(f"models/{folder}/{stem}.json")
        for name in binaries:
            if self.storage is not None:
                self.storage.delete(folder, name)
                removed.append(f"{self.storage.kind}:{folder}/{name}")
            path = folder_dir / name
            # unlink removes a link itself, never the user's original it points to; a stored content is
            # freed only when no other folder links to it.
            if path.is_symlink():
                path.unlink(missing_ok=True)
                self.links.remove(path)
                removed.append(f"models/{folder}/{name}")
            elif path.exists():
                if self.storage is None:
                    self.backend.delete(folder, name)
                else:
                    path.unlink(missing_ok=True)
                removed.append(f"models/{folder}/{name}")
            for leftover in folder_dir.glob(f".{name}.*"):
                leftover.unlink(missing_ok=True)
        remaining = [n for n in os.listdir(folder_dir) if not n.startswith(".")]
        if not remaining:
            shutil.rmtree(folder_dir, ignore_errors=True)
        return removed

    # --- watch --------------------------------------------------------------------------------------------

    async def watch(self, include_initial: bool = False) -> AsyncIterator[Change]:
        queue: asyncio.Queue[Change | None] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(queue)
        try:
            if include_initial:
                for model_id in list(self._ids()):
                    pb = self._by_id.get(model_id)
                    if pb is not None:
                        yield Change("added", model_id, model=pb)
                for problem in self.problems():
                    yield Change("invalid", problem.id, problem=problem)
            while True:
                change = await queue.get()
                if change is _OVERFLOW:
                    raise ResourceExhausted("watcher fell too far behind; watch again", code="watch_overflow")
                if change is None:
                    return
                yield change
        finally:
            self._subscribers.discard(queue)

    # --- archives -----------------------------------------------------------------------------------------

    def _folder_dir(self, folder: str) -> Path:
        try:
            check_name(folder, "folder")
        except ValueError as exc:
            raise InvalidArgument(str(exc), code="invalid_folder", param="folder") from None
        path = self.models_dir / folder
        if path.is_symlink() or not path.is_dir():
            raise NotFound(f"model folder {folder} not found", code="folder_not_found", param="folder")
        return path

    def export_folder(self, folder: str) -> Iterator[bytes]:
        path = self._folder_dir(folder)
        extra: list[archive.Member] = []
        if self.storage is not None:
            # Binaries in a bucket travel with the folder: the archive stays standalone.
            storage = self.storage
            with _storage_errors():
                stored = storage.list_folder(folder)
            here = set(os.listdir(path))
            extra = [
                (name, size, functools.partial(storage.iter_binary, folder, name))
                for name, size in sorted(stored.items())
                if name not in here
            ]
        return archive.iter_export(path, arcname=folder, follow_symlink=self.links.is_ours, extra=extra)

    def new_upload_file(self) -> Path:
        """A hidden temp file on the models filesystem to receive an uploaded archive."""
        tmp = self.settings.state_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".archive", dir=tmp)
        os.close(fd)
        return Path(name)

    async def import_archive(
        self, archive_path: Path, folder: str = ""
    ) -> tuple[str, list[model_pb2.Model], list[model_pb2.Problem]]:
        if folder:
            try:
                check_name(folder, "folder")
            except ValueError as exc:
                raise InvalidArgument(str(exc), code="invalid_folder", param="folder") from None
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.models_dir))
        try:
            limits = archive.ArchiveLimits(max_total_bytes=self.settings.import_max_bytes)
            try:
                extracted = await asyncio.to_thread(
                    archive.extract_archive, archive_path, staging, limits=limits
                )
            except archive.ArchiveError as exc:
                raise InvalidArgument(f"archive refused: {exc}", code="unsafe_archive") from None
            if not any(f.endswith(".json") for f in extracted.files):
                raise InvalidArgument("the archive holds no model json file", code="no_model_in_archive")
            name = folder or extracted.top_folder or ""
            if not name:
                raise InvalidArgument(
                    "the archive has no top folder: name the folder to import into", param="folder"
                )
            try:
                check_name(name, "folder")
            except ValueError as exc:
                raise InvalidArgument(f"archive top folder: {exc}", param="folder") from None
            async with self._lock(name):
                target = self.models_dir / name
                if target.exists() or target.is_symlink():
                    raise AlreadyExists(
                        f"model folder {name} already exists", code="folder_exists", param="folder"
                    )
                if self.storage is not None:
                    await asyncio.to_thread(self._upload_folder, name, staging)
                else:
                    await asyncio.to_thread(self._store_folder, staging)
                os.rename(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        index = await self.refresh_folder(name)
        models = sorted((e.pb for e in index.entries.values()), key=lambda m: m.id) if index else []
        problems = list(index.problems.values()) if index else []
        return name, models, problems


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """A bucket that fails (unreachable, refusing) is the operator's to fix: 503 with what failed."""
    try:
        yield
    except StorageError as exc:
        raise Unavailable(f"the model storage failed: {exc}", code="storage_unavailable") from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def parse_json_object(text: str, param: str) -> Any:
    """JSON text from a request (empty = None), or InvalidArgument naming the field."""
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{param} is not valid JSON: {exc}", param=param) from None
