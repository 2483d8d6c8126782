"""Binaries into and out of the catalog's storage (services/catalog/binaries.py): a user's file linked or
copied in, and a user's original never deleted with the link to it."""

from __future__ import annotations

from pathlib import Path

from jan.model.v1 import model_pb2
from tests.unit.conftest import write

STOPPED = model_pb2.MODEL_STATE_STOPPED


async def test_create_by_symlink_and_by_copy(make_catalog, tmp_path: Path) -> None:
    original = tmp_path / "imports" / "w.gguf"
    original.write_bytes(b"weights")
    cat = await make_catalog()
    linked = await cat.create(source_url=str(original), model_id="w/linked", import_mode="symlink")
    link = tmp_path / "jan" / "models" / "w" / "w.gguf"
    assert link.is_symlink() and cat.links.is_ours(link)
    assert linked.state == STOPPED
    await cat.delete("w/linked")
    assert original.exists() and not link.exists()
    copied = await cat.create(source_url=str(original), model_id="c/copied", import_mode="copy")
    copy = tmp_path / "jan" / "models" / "c" / "w.gguf"
    assert copied.state == STOPPED and not copy.is_symlink() and copy.stat().st_ino != original.stat().st_ino


async def test_a_user_original_behind_a_hand_made_symlink_is_never_deleted(
    make_catalog, tmp_path: Path
) -> None:
    original = write(tmp_path / "precious.gguf", b"mine")
    folder = tmp_path / "jan" / "models" / "m"
    write(folder / "m.json", {})
    (folder / "m.gguf").symlink_to(original)
    cat = await make_catalog()
    assert (await cat.get("m/m")).state == STOPPED
    await cat.delete("m/m")
    assert original.read_bytes() == b"mine"
