"""The servicer's wire-bytes cache (services/catalog/wire.py): the bytes it joins are the bytes protobuf
gives, a model's bytes are made again after it changed, and a removed model's are not kept."""

from __future__ import annotations

from pathlib import Path

from jan.catalog.v1 import catalog_service_pb2 as catalog_pb
from jan.model.v1 import model_pb2
from services.catalog.changes import Change
from services.catalog.wire import WireCache
from tests.unit.conftest import write


def test_the_cached_bytes_are_those_of_the_message() -> None:
    models = [model_pb2.Model(id=f"f/m{i}", name="x" * i * 40) for i in range(8)]  # lengths past one byte
    wire = WireCache()
    expected = catalog_pb.ListModelsResponse(models=models).SerializeToString()
    assert wire.encode(models) == expected
    assert wire.encode(models) == expected  # from the cache
    assert catalog_pb.ListModelsResponse.FromString(wire.encode(models[2:3])).models[0].id == "f/m2"


def test_a_changed_model_is_encoded_again() -> None:
    wire = WireCache()
    before = model_pb2.Model(id="f/m", name="before")
    wire.encode([before])
    after = model_pb2.Model(id="f/m", name="after")
    assert catalog_pb.ListModelsResponse.FromString(wire.encode([after])).models[0].name == "after"
    assert wire.size == 1
    wire.forget(Change("removed", "f/m"))
    assert wire.size == 0


async def test_a_listing_follows_the_catalogs_changes(make_catalog, tmp_path: Path) -> None:
    write(tmp_path / "jan" / "models" / "a" / "a.json", {"name": "A"})
    cat = await make_catalog()
    wire = WireCache()
    cat.changes.listen(wire.forget)
    first = wire.encode(cat.list_models()[0])
    await cat.update("a/a", name="A2")
    listed = catalog_pb.ListModelsResponse.FromString(wire.encode(cat.list_models()[0]))
    assert [m.name for m in listed.models] == ["A2"] and wire.encode(cat.list_models()[0]) != first
    await cat.delete("a/a")
    assert wire.size == 0  # a removed model's bytes are not kept
