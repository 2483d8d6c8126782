"""The change feed (services/catalog/changes.py) as the catalog's watchers and listings see it: the
changes streamed, and what changed since a version."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jan.model.v1 import model_pb2
from services.catalog.model import Runtime
from tests.harness import eventually
from tests.unit.conftest import write


async def test_watch_streams_changes(make_catalog, tmp_path: Path) -> None:
    models = tmp_path / "jan" / "models"
    write(models / "a" / "a.json", {})
    cat = await make_catalog()
    events: list[tuple[str, str]] = []

    async def consume() -> None:
        async for change in cat.watch(include_initial=True):
            events.append((change.kind, change.id))

    task = asyncio.create_task(consume())
    await eventually(lambda: ("added", "a/a") in events)
    write(models / "b" / "b.json", {})
    await eventually(lambda: ("added", "b/b") in events)
    await cat.update("a/a", name="new")
    await eventually(lambda: ("updated", "a/a") in events)
    write(models / "b" / "b.json", b"[]")
    await eventually(lambda: ("invalid", "b/b") in events)
    await cat.report_runtime("a/a", Runtime(state=model_pb2.MODEL_STATE_RUNNING, runner="r1"))
    assert (await cat.get("a/a")).state == model_pb2.MODEL_STATE_RUNNING
    await cat.delete("a/a")
    await eventually(lambda: ("removed", "a/a") in events)
    task.cancel()


async def test_what_changed_since_a_version(make_catalog, tmp_path: Path) -> None:
    models = tmp_path / "jan" / "models"
    write(models / "a" / "a.json", {})
    write(models / "b" / "b.json", {})
    cat = await make_catalog()
    start = cat.version
    assert cat.changed_since(start) == ([], [])
    await cat.update("a/a", name="A")
    await cat.delete("b/b")
    changed, removed = cat.changed_since(start)  # type: ignore[misc]
    assert [m.id for m in changed] == ["a/a"] and changed[0].name == "A" and removed == ["b/b"]
    assert cat.version != start
    assert cat.changed_since("another-start-0") is None
    assert cat.changed_since(start.rsplit("-", 1)[0] + "-999999") is None  # a version it never had
