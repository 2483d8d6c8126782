"""Where a model may come from (services/catalog/sources.py): local files only from the allowed directories,
URLs only to public addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from jan.model.v1 import model_pb2
from services.common import errors
from tests.unit.conftest import write

NOT_DOWNLOADED = model_pb2.MODEL_STATE_NOT_DOWNLOADED


async def test_local_imports_only_from_allowed_directories(make_catalog, tmp_path: Path) -> None:
    outside = write(tmp_path / "elsewhere" / "x.gguf", b"x")
    cat = await make_catalog()
    with pytest.raises(errors.PermissionDenied):
        await cat.create(source_url=str(outside))
    sneaky = tmp_path / "imports" / "link.gguf"
    sneaky.symlink_to(outside)  # resolves outside the allowed directory
    with pytest.raises(errors.PermissionDenied):
        await cat.create(source_url=str(sneaky))
    with pytest.raises(errors.InvalidArgument):
        await cat.create(source_url="relative/x.gguf")
    assert not any((tmp_path / "jan" / "models").iterdir())


async def test_create_from_a_url_is_not_downloaded_and_private_addresses_are_refused(make_catalog) -> None:
    cat = await make_catalog()
    model = await cat.create(source_url="https://models.example/files/m.Q8_0.gguf")
    assert model.id == "m.Q8_0/m.Q8_0"
    assert model.state == NOT_DOWNLOADED
    for url in ("https://internal.example/x.gguf", "http://127.0.0.1/x.gguf", "http://[::1]/x.gguf"):
        with pytest.raises(errors.InvalidArgument) as exc:
            await cat.create(source_url=url)
        assert exc.value.code == "unsafe_source_url"
    with pytest.raises(errors.InvalidArgument):
        await cat.create(source_url="ftp://models.example/x.gguf")
