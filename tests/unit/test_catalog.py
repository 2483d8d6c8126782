"""The catalog façade (services/catalog/core.py) against real folders: seeding at start, the periodic
rescan that catches up without the file watcher, and placement wired to the index (heartbeats make models
running, a runner that stops calling takes them with it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jan.model.v1 import model_pb2
from services.catalog.core import Catalog
from services.common import errors
from tests.harness import eventually
from tests.unit.conftest import ids, settings_for, write

STOPPED = model_pb2.MODEL_STATE_STOPPED


async def test_without_the_watcher_the_periodic_rescan_catches_up(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog(watch=False, rescan_interval_s=0.5)
    write(tmp_path / "jan" / "models" / "late" / "m.json", {})
    await eventually(lambda: "late/m" in ids(cat))


async def test_seeding_never_overwrites_and_never_resurrects(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    write(seed / "rec" / "rec.json", {"name": "Recommended"})
    write(seed / "mine" / "mine.json", {"name": "Shipped"})
    root = tmp_path / "jan"
    write(root / "models" / "mine" / "mine.json", {"name": "User's own"})
    cat = Catalog(settings_for(root, seed_models_dir=seed))
    await cat.start()
    assert (await cat.get("mine/mine")).name == "User's own"
    assert (await cat.get("rec/rec")).name == "Recommended"
    await cat.delete("rec/rec")
    await cat.close()
    again = Catalog(settings_for(root, seed_models_dir=seed))
    await again.start()
    try:
        assert "rec/rec" not in ids(again)
    finally:
        await again.close()


async def test_runner_heartbeats_drive_running_state_and_placement(make_catalog, tmp_path: Path) -> None:
    from jan.catalog.v1 import catalog_service_pb2 as catalog_pb

    models = tmp_path / "jan" / "models"
    write(models / "a" / "a.json", {})
    write(models / "a" / "a.gguf", b"x")
    write(models / "r" / "r.json", {"metadata": {"engine": "api"}})
    cat = await make_catalog(report_ttl_s=0.6)
    with pytest.raises(errors.Unavailable) as exc:
        await cat.placement.place("a/a")
    assert exc.value.code == "no_runner"
    small = catalog_pb.Runner(
        name="small", address="127.0.0.1:1", memory_budget_bytes=100, engines=["llamacpp"]
    )
    big = catalog_pb.Runner(name="big", address="127.0.0.1:2", memory_budget_bytes=1000, engines=["llamacpp"])
    interval, assignments = await cat.register_runner(small)
    assert interval > 0 and assignments == []
    await cat.register_runner(big)
    placed = await cat.placement.place("a/a")
    assert (placed.runner.name, placed.loaded) == ("big", False)
    with pytest.raises(errors.Unavailable):
        await cat.placement.place("r/r")  # nobody runs api models
    small.model_ids.append("a/a")
    await cat.register_runner(small)
    assert (await cat.get("a/a")).state == model_pb2.MODEL_STATE_RUNNING
    assert (await cat.get("a/a")).state_detail.runner == "small"
    placed = await cat.placement.place("a/a")
    assert (placed.runner.name, placed.loaded) == ("small", True)
    # The runner unloads it: the files decide again.
    del small.model_ids[:]
    await cat.register_runner(small)
    assert (await cat.get("a/a")).state == STOPPED
    # A runner that stops calling is dead: its models stop being running, it is not chosen.
    small.model_ids.append("a/a")
    await cat.register_runner(small)
    await eventually(lambda: cat.index.models["a/a"].state == STOPPED, timeout=3)
    assert cat.live_runners() == []
