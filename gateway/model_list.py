"""`GET /v1/models` without the cost of the catalog's size on every request: the whole list, as the API
answers it, built once per change of the catalog and kept here.

Each request asks the catalog one small question (ListModels with the version held: "what changed
since?"), so a change made anywhere — the API, another gateway, a hand edit the catalog saw — shows in the
next answer. The answer is usually "nothing"; after a change, the models changed and the ids removed,
whose JSON replaces theirs in the kept pieces (one per model) before they are joined again; the whole
list is read only when the catalog cannot tell (it restarted, or too much changed). A page or a filter
is a join of the kept pieces. The answer's ETag is the version (and the query): a client
that sends it back in If-None-Match gets 304 until something changed.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from gateway.clients import CatalogClient
from gateway.protocol import models as convert
from jan.model.v1 import model_pb2


@dataclass(frozen=True)
class Listing:
    """One version of the catalog's list: the models in id order and each one's JSON."""

    version: str
    models: list[model_pb2.Model]
    ids: list[str]
    pieces: list[bytes]
    body: bytes  # the whole list, unfiltered: {"object": "list", "data": [...]}

    @classmethod
    def build(cls, models: list[model_pb2.Model], version: str) -> Listing:
        pieces = [orjson.dumps(entry) for entry in convert.model_list_entries(models)]
        return cls(version, models, [m.id for m in models], pieces, _join(pieces))

    def apply(self, changed: list[model_pb2.Model], removed: list[str], version: str) -> Listing:
        """This listing with the models changed or added since, and without those removed."""
        models, ids, pieces = list(self.models), list(self.ids), list(self.pieces)
        for model_id in removed:
            i = bisect.bisect_left(ids, model_id)
            if i < len(ids) and ids[i] == model_id:
                del models[i], ids[i], pieces[i]
        for model, piece in zip(
            changed, (orjson.dumps(e) for e in convert.model_list_entries(changed)), strict=True
        ):
            i = bisect.bisect_left(ids, model.id)
            if i < len(ids) and ids[i] == model.id:
                models[i], pieces[i] = model, piece
            else:
                models.insert(i, model)
                ids.insert(i, model.id)
                pieces.insert(i, piece)
        return Listing(version, models, ids, pieces, _join(pieces))

    def etag(self, query: str = "") -> str:
        tag = self.version if not query else f"{self.version}-{hashlib.sha1(query.encode()).hexdigest()[:12]}"
        return f'"{tag}"'

    def select(
        self,
        states: Sequence[int] = (),
        engines: Sequence[str] = (),
        limit: int | None = None,
        after: str | None = None,
    ) -> bytes:
        """The answer for a filter and a page (`after` an id: the models after it in id order)."""
        if not states and not engines and limit is None and after is None:
            return self.body
        indexes = range(len(self.ids))
        if states or engines:
            wanted_states, wanted_engines = set(states), set(engines)
            indexes = [  # type: ignore[assignment]
                i
                for i in indexes
                if (not wanted_states or self.models[i].state in wanted_states)
                and (not wanted_engines or self.models[i].engine in wanted_engines)
            ]
        if limit is None and after is None:
            return _join([self.pieces[i] for i in indexes])
        start = bisect.bisect_right([self.ids[i] for i in indexes], after) if after else 0
        page = list(indexes[start : start + limit] if limit is not None else indexes[start:])
        more = start + len(page) < len(indexes)
        first = self.ids[page[0]] if page else None
        last = self.ids[page[-1]] if page else None
        tail = orjson.dumps({"first_id": first, "last_id": last, "has_more": more})
        return _join([self.pieces[i] for i in page])[:-1] + b"," + tail[1:]


def _join(pieces: list[bytes]) -> bytes:
    return b'{"object":"list","data":[' + b",".join(pieces) + b"]}"


class ModelList:
    """The latest Listing of the catalog (kept in app.state)."""

    def __init__(self, catalog: CatalogClient) -> None:
        self.catalog = catalog
        self._listing: Listing | None = None
        self._lock = asyncio.Lock()

    async def current(self) -> Listing:
        """The listing of the catalog's version now, brought up to date by what changed. A delta is applied
        at once (no await in between); a whole list is read by one request at a time, the others wait."""
        held = self._listing
        if held is not None and not self._lock.locked():
            listed = await self.catalog.list_since(held.version)
            if listed is None:
                return held
            if listed.delta and self._listing is held:
                self._listing = held.apply(listed.models, listed.removed, listed.version)
                return self._listing
        async with self._lock:
            held = self._listing
            listed = await self.catalog.list_since(held.version if held is not None else "")
            if listed is None:
                assert held is not None
                return held
            if listed.delta and held is not None:
                self._listing = held.apply(listed.models, listed.removed, listed.version)
            else:
                self._listing = await asyncio.to_thread(Listing.build, listed.models, listed.version)
            return self._listing
