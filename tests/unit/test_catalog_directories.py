"""Directories imported in place through the catalog (services/catalog/directories.py): objects whose
binaries link to the user's files, a re-import that adds nothing twice, and the request checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import errors
from tests.fakes.tiny_gguf import write_tiny_gguf


async def test_a_directory_becomes_linked_objects_once(make_catalog, tmp_path: Path) -> None:
    original = write_tiny_gguf(tmp_path / "imports" / "ggufs" / "Tiny-Chat-Q4_K_M.gguf")
    cat = await make_catalog()
    directory = cat.source_directory(str(tmp_path / "imports" / "ggufs"))
    assert directory is not None
    imported = await cat.import_directory(directory)
    assert len(imported.created_ids) == 1 and imported.folders == [imported.created_ids[0].split("/")[0]]
    model = imported.models[0]
    link = tmp_path / "jan" / model.path.rsplit("/", 1)[0] / original.name
    assert link.is_symlink() and link.resolve() == original.resolve()
    again = await cat.import_directory(directory)
    assert again.created_ids == [] and [m.id for m in again.models] == [model.id]


async def test_what_only_a_single_file_takes_is_refused(make_catalog, tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "imports" / "ggufs" / "Tiny-Chat-Q4_K_M.gguf")
    cat = await make_catalog()
    directory = tmp_path / "imports" / "ggufs"
    with pytest.raises(errors.InvalidArgument) as exc:
        await cat.import_directory(directory, refused=["name"])
    assert (exc.value.code, exc.value.param) == ("not_for_directories", "name")
    with pytest.raises(errors.InvalidArgument):
        await cat.import_directory(directory, folder="a/b")
    with pytest.raises(errors.PermissionDenied):
        cat.source_directory(str(tmp_path))  # not an allowed directory
    assert list((tmp_path / "jan" / "models").iterdir()) == []
