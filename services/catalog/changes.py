"""The catalog's change feed: every change of the index, numbered into a version, kept for a while (what
changed since a version) and streamed to watchers (WatchModels)."""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from jan.model.v1 import model_pb2
from services.common.errors import ResourceExhausted

# Ids of the latest changes kept: a listing at most this many changes old is brought up to date by them.
CHANGE_LOG = 4096
# Changes a watcher may have waiting before it is dropped.
WATCHER_BACKLOG = 10_000


@dataclass(frozen=True)
class Change:
    """One change of the catalog, as WatchModels streams it."""

    kind: str  # "added" | "updated" | "removed" | "invalid"
    id: str
    model: model_pb2.Model | None = None
    problem: model_pb2.Problem | None = None


_OVERFLOW = Change("overflow", "")

Watcher = asyncio.Queue[Change | None]


class ChangeFeed:
    def __init__(self) -> None:
        # Changes published since start, under a name of this start: what a listing's version says; the
        # ids of the latest ones (what changed since a recent version).
        self._boot = secrets.token_hex(4)
        self._count = 0
        self._recent: collections.deque[str] = collections.deque(maxlen=CHANGE_LOG)
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[Change], None]] = []

    @property
    def version(self) -> str:
        """Changes with every change a watcher is told of, and with every start of the catalog."""
        return f"{self._boot}-{self._count}"

    def ids_since(self, version: str) -> set[str] | None:
        """The ids changed since `version`; None when this feed cannot tell (another start's version, or
        more changes since than it keeps)."""
        boot, _, count = version.partition("-")
        if boot != self._boot or not count.isdigit() or int(count) > self._count:
            return None
        behind = self._count - int(count)
        if behind > len(self._recent):
            return None
        return set(list(self._recent)[len(self._recent) - behind :]) if behind else set()

    def listen(self, callback: Callable[[Change], None]) -> None:
        """Calls `callback` with every change, as it is published (a cache kept beside the index)."""
        self._listeners.append(callback)

    def publish(self, change: Change) -> None:
        self._count += 1
        self._recent.append(change.id)
        for callback in self._listeners:
            callback(change)
        for watcher in list(self._watchers):
            self._tell(watcher, change)

    def _tell(self, watcher: Watcher, change: Change) -> None:
        try:
            watcher.put_nowait(change)
        except asyncio.QueueFull:
            # A watcher that does not keep up is dropped rather than slowing the catalog down; it is told
            # so, and can watch again with include_initial to resynchronise.
            self._watchers.discard(watcher)
            while not watcher.empty():
                watcher.get_nowait()
            watcher.put_nowait(_OVERFLOW)

    def subscribe(self) -> Watcher:
        """A new watcher's queue: every change from now on goes into it (until `unsubscribe`)."""
        watcher: Watcher = asyncio.Queue(maxsize=WATCHER_BACKLOG)
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    async def follow(self, watcher: Watcher) -> AsyncIterator[Change]:
        """The changes put into `watcher`, until the feed closes; ResourceExhausted when it fell behind."""
        while (change := await watcher.get()) is not None:
            if change is _OVERFLOW:
                raise ResourceExhausted("watcher fell too far behind; watch again", code="watch_overflow")
            yield change

    def close(self) -> None:
        """Ends every watcher's stream."""
        for watcher in list(self._watchers):
            watcher.put_nowait(None)
