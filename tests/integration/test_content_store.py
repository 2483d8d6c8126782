"""One copy per content: identical binaries the catalog owns (copied imports, downloads, imported archives)
share one inode through the content store (services/common/storage/content.py), a delete frees the bytes
only when no other folder uses them, a download of bytes already stored moves nothing over the network (the
fake Hub counts what it sends), a repository URL on the HF_ENDPOINT host (a mirror) is a repository, and
GET /v1/storage says what all this saved. The S3 variant runs against a real S3 server (moto)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from services.common.storage import StorageSettings, make_storage
from tests.fakes.hub import FakeHub
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import hub_stack, wait_download

MiB = 1024 * 1024


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """Two files with the same bytes and a third with other bytes, in an allowed import directory."""
    src = tmp_path / "src"
    write_tiny_gguf(src / "a.gguf", seed=1)
    shutil.copyfile(src / "a.gguf", src / "b.gguf")
    write_tiny_gguf(src / "c.gguf", seed=2)
    return src


def stored(root: Path) -> list[Path]:
    store = root / "models" / ".store" / "sha256"
    return sorted(store.iterdir()) if store.is_dir() else []


async def test_identical_copies_share_one_inode_and_a_delete_frees_only_unused_bytes(
    tmp_path: Path, hub: FakeHub, sources: Path
) -> None:
    root = tmp_path / "jan"
    async with hub_stack(root, hub.url, catalog={"import_allowed_dirs": [sources]}) as s:
        for model_id, name in (("one/a", "a"), ("two/b", "b"), ("three/c", "c")):
            body = {"source_url": str(sources / f"{name}.gguf"), "id": model_id, "import_mode": "copy"}
            resp = await s.http.post("/v1/models", json=body)
            assert resp.status_code == 201, resp.text
        a, b, c = (root / "models" / f for f in ("one/a.gguf", "two/b.gguf", "three/c.gguf"))
        size = a.stat().st_size
        # Copies, not links to the user's files; the two identical ones are one inode (+ the store's link).
        assert not a.is_symlink() and a.stat().st_ino != (sources / "a.gguf").stat().st_ino
        assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 3
        assert c.stat().st_ino != a.stat().st_ino
        assert len(stored(root)) == 2

        usage = (await s.http.get("/v1/storage")).json()
        assert usage["backend"] == "local"
        assert usage["stored_bytes"] == size + c.stat().st_size
        assert usage["binary_bytes"] == 2 * size + c.stat().st_size
        assert usage["contents"] == 2 and usage["binaries"] == 3 and usage["models"] == 3
        assert usage["saved_bytes"] == size and usage["linked_bytes"] == 0

        assert (await s.http.delete("/v1/models/one/a")).status_code == 200
        assert not a.exists() and b.stat().st_nlink == 2  # the bytes two/b uses stay
        assert len(stored(root)) == 2
        assert (await s.http.delete("/v1/models/two/b")).status_code == 200
        assert len(stored(root)) == 1  # no folder uses them any more: freed
        assert (await s.http.get("/v1/models/three/c")).json()["state"] == "stopped"


async def test_a_folder_removed_by_hand_frees_its_bytes_at_the_next_rescan(
    tmp_path: Path, hub: FakeHub, sources: Path
) -> None:
    root = tmp_path / "jan"
    async with hub_stack(root, hub.url, catalog={"import_allowed_dirs": [sources]}) as s:
        body = {"source_url": str(sources / "c.gguf"), "id": "gone/c", "import_mode": "copy"}
        assert (await s.http.post("/v1/models", json=body)).status_code == 201
        assert len(stored(root)) == 1
        shutil.rmtree(root / "models" / "gone")
        await s.catalog.rescan_all()
        assert stored(root) == []


async def test_an_imported_archive_shares_the_bytes_already_stored(
    tmp_path: Path, hub: FakeHub, sources: Path
) -> None:
    root = tmp_path / "jan"
    async with hub_stack(root, hub.url, catalog={"import_allowed_dirs": [sources]}) as s:
        body = {"source_url": str(sources / "a.gguf"), "id": "orig/a", "import_mode": "copy"}
        assert (await s.http.post("/v1/models", json=body)).status_code == 201
        archive = (await s.http.get("/v1/folders/orig/export")).content
        resp = await s.http.post(
            "/v1/folders/import?folder=again", content=archive, headers={"content-type": "application/gzip"}
        )
        assert resp.status_code == 201, resp.text
        again, orig = root / "models/again/a.gguf", root / "models/orig/a.gguf"
        assert again.stat().st_ino == orig.stat().st_ino
        assert (await s.http.get("/v1/models/again/a")).json()["state"] == "stopped"
        assert len(stored(root)) == 1


async def test_a_download_of_stored_bytes_moves_nothing_and_a_mirror_url_is_a_repository(
    tmp_path: Path, hub: FakeHub
) -> None:
    hub.add_repo("org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": (3 * MiB + 17, 7), "README.md": b"# tiny"})
    repo_url = f"{hub.url}/org/Tiny-GGUF"  # the HF_ENDPOINT host: a mirror of the Hub
    root = tmp_path / "jan"
    async with hub_stack(root, hub.url) as s:
        resp = await s.http.post("/v1/models", json={"source_url": repo_url, "id": "first"})
        assert resp.status_code == 201, resp.text
        listed = resp.json()
        assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["first/tiny-Q4_K_M"]
        assert (await s.http.post("/v1/models/first/tiny-Q4_K_M/download")).status_code in (200, 201, 202)
        assert (await wait_download(s.http, "first/tiny-Q4_K_M"))["phase"] == "done"
        sent = hub.bytes_sent
        assert sent >= 3 * MiB

        # The same repository again, in another folder: its listing names the digest, which is stored.
        resp = await s.http.post("/v1/models", json={"source_url": repo_url, "id": "second"})
        assert resp.status_code == 201, resp.text
        assert (await s.http.post("/v1/models/second/tiny-Q4_K_M/download")).status_code in (200, 201, 202)
        job = await wait_download(s.http, "second/tiny-Q4_K_M")
        assert job["phase"] == "done" and job["bytes_done"] == 3 * MiB + 17
        assert hub.bytes_sent == sent  # not a byte of the file over the network
        first, second = root / "models/first/tiny-Q4_K_M.gguf", root / "models/second/tiny-Q4_K_M.gguf"
        assert first.stat().st_ino == second.stat().st_ino
        assert (await s.http.get("/v1/models/second/tiny-Q4_K_M")).json()["state"] == "stopped"


async def test_s3_stores_one_object_per_content(
    tmp_path: Path, hub: FakeHub, sources: Path, moto_s3: str
) -> None:
    settings = StorageSettings(
        backend="s3",
        s3_endpoint=moto_s3,
        s3_secure=False,
        s3_bucket=f"dedupe-{os.getpid()}",
        s3_access_key="test",
        s3_secret_key="test",  # type: ignore[arg-type]
        s3_region="us-east-1",
    )
    root = tmp_path / "jan"
    storage = make_storage(settings, root)
    async with hub_stack(root, hub.url, storage=storage, catalog={"import_allowed_dirs": [sources]}) as s:
        for model_id, name in (("one/a", "a"), ("two/b", "b")):
            body = {"source_url": str(sources / f"{name}.gguf"), "id": model_id}
            assert (await s.http.post("/v1/models", json=body)).status_code == 201
        size = (sources / "a.gguf").stat().st_size
        usage = (await s.http.get("/v1/storage")).json()
        assert usage["backend"] == "s3"
        assert usage["stored_bytes"] == size and usage["contents"] == 1
        assert usage["binary_bytes"] == 2 * size and usage["saved_bytes"] == size
        assert (await s.http.delete("/v1/models/one/a")).status_code == 200
        assert (await s.http.get("/v1/storage")).json()["stored_bytes"] == size  # two/b still uses it
        assert (await s.http.delete("/v1/models/two/b")).status_code == 200
        assert (await s.http.get("/v1/storage")).json()["stored_bytes"] == 0
