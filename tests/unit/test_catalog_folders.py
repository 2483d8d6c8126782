"""Whole folders in and out (services/catalog/folders.py): export then import round-trips a folder; an
unsafe archive is refused and leaves nothing."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import orjson
import pytest

from jan.model.v1 import model_pb2
from services.common import errors
from tests.unit.conftest import write

STOPPED = model_pb2.MODEL_STATE_STOPPED


async def test_export_then_import_round_trips_a_folder(make_catalog, tmp_path: Path) -> None:
    folder = tmp_path / "jan" / "models" / "tiny"
    write(folder / "tiny.json", {"name": "Tiny", "x-keep": True})
    write(folder / "tiny.gguf", b"weights" * 1000)
    write(folder / ".tiny.gguf.part", b"half")  # hidden partial: never exported
    (folder / "stolen.gguf").symlink_to(write(tmp_path / "secret.gguf", b"secret"))  # not made by the catalog
    cat = await make_catalog()
    data = b"".join(cat.export_folder("tiny"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == ["tiny/tiny.gguf", "tiny/tiny.json"]
    upload = cat.new_upload_file()
    upload.write_bytes(data)
    name, models, problems = await cat.import_archive(upload, folder="tiny-copy")
    assert name == "tiny-copy" and not problems
    assert [m.id for m in models] == ["tiny-copy/tiny"] and models[0].state == STOPPED
    imported = tmp_path / "jan" / "models" / "tiny-copy"
    assert orjson.loads((imported / "tiny.json").read_bytes())["x-keep"] is True
    with pytest.raises(errors.AlreadyExists):
        await cat.import_archive(upload)  # "tiny" exists
    with pytest.raises(errors.NotFound):
        cat.export_folder("nope")
    with pytest.raises(errors.InvalidArgument):
        cat.export_folder("..")


async def test_an_unsafe_archive_is_refused_and_leaves_nothing(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    upload = cat.new_upload_file()
    upload.write_bytes(buf.getvalue())
    with pytest.raises(errors.InvalidArgument) as exc:
        await cat.import_archive(upload, folder="x")
    assert exc.value.code == "unsafe_archive"
    assert not (tmp_path / "evil.json").exists()
    assert os.listdir(tmp_path / "jan" / "models") == []
