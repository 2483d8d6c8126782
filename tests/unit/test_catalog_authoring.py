"""Writing model objects (services/catalog/authoring.py): create from a local file, update by merge patch,
delete of the json and the binaries only it uses."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from jan.model.v1 import model_pb2
from services.common import errors
from tests.unit.conftest import write

STOPPED = model_pb2.MODEL_STATE_STOPPED


async def test_create_from_a_local_file_links_it_and_delete_keeps_the_original(
    make_catalog, tmp_path: Path
) -> None:
    original = tmp_path / "imports" / "tiny-Q4_K_M.gguf"
    original.write_bytes(b"GGUF" + b"\0" * 100)
    cat = await make_catalog()
    model = await cat.create(source_url=str(original), name="Tiny")
    assert model.id == "tiny-Q4_K_M/tiny-Q4_K_M"
    assert model.state == STOPPED
    assert orjson.loads(model.metadata_json)["quantization"] == "Q4_K_M"
    placed = tmp_path / "jan" / "models" / "tiny-Q4_K_M" / "tiny-Q4_K_M.gguf"
    assert placed.stat().st_ino == original.stat().st_ino  # a hard link on the same filesystem
    with pytest.raises(errors.AlreadyExists):
        await cat.create(source_url=str(original))
    removed = await cat.delete(model.id)
    assert "models/tiny-Q4_K_M/tiny-Q4_K_M.gguf" in removed
    assert original.read_bytes().startswith(b"GGUF")
    assert not placed.parent.exists()


async def test_update_merges_and_keeps_unknown_properties(make_catalog, tmp_path: Path) -> None:
    path = write(
        tmp_path / "jan" / "models" / "m" / "m.json",
        {
            "x-custom": [1, 2],
            "parameters": {"temperature": 0.7, "top_k": 40},
            "metadata": {"quantization": "Q4_0"},
        },
    )
    cat = await make_catalog()
    created_before = (await cat.get("m/m")).created
    model = await cat.update(
        "m/m",
        name="Renamed",
        parameters_patch={"top_k": None, "ctx_len": 4096},
        metadata_patch={"size": "7B"},
    )
    assert model.name == "Renamed"
    assert orjson.loads(model.parameters_json) == {"temperature": 0.7, "ctx_len": 4096}
    on_disk = orjson.loads(path.read_bytes())
    assert on_disk["x-custom"] == [1, 2]
    assert on_disk["metadata"] == {"quantization": "Q4_0", "size": "7B"}
    assert on_disk["created"] == created_before
    with pytest.raises(errors.InvalidArgument):
        await cat.update("m/m", metadata_patch={"engine": "nonsense"})
    assert orjson.loads(path.read_bytes()) == on_disk
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


async def test_delete_keeps_binaries_other_objects_share(make_catalog, tmp_path: Path) -> None:
    folder = tmp_path / "jan" / "models" / "llava"
    write(folder / "llava-Q4_K_M.json", {})
    write(folder / "llava-Q5_K_M.json", {})
    for name in ("llava.Q4_K_M.gguf", "llava.Q5_K_M.gguf", "mmproj-f16.gguf"):
        write(folder / name, b"x")
    cat = await make_catalog()
    assert (await cat.get("llava/llava-Q4_K_M")).state == STOPPED
    removed = await cat.delete("llava/llava-Q4_K_M")
    assert sorted(removed) == ["models/llava/llava-Q4_K_M.json", "models/llava/llava.Q4_K_M.gguf"]
    assert sorted(os.listdir(folder)) == ["llava-Q5_K_M.json", "llava.Q5_K_M.gguf", "mmproj-f16.gguf"]
