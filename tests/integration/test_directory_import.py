"""Directories imported in place: every GGUF model of a folder (recursively, through symbolic links) or of a
Hugging Face cache filled by the real `huggingface_hub` client becomes objects whose binaries are links to
the user's files (inode checks: not a byte copied); a re-import adds only what is new; watched directories
(JAN_CATALOG_WATCH_DIRS) follow files added and deleted there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.hub import FakeHub
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import eventually, hub_stack

pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub(cdn_hub: FakeHub) -> FakeHub:
    # Its CDN on another host name, as the real Hub's: huggingface_hub needs that to fill its cache.
    return cdn_hub


def regular_files(models: Path) -> list[Path]:
    """Files the catalog holds as bytes of its own (not links, not its json objects)."""
    return [
        p
        for p in models.rglob("*")
        if p.is_file() and not p.is_symlink() and p.suffix != ".json" and ".store" not in p.parts
    ]


async def ids(http: httpx.AsyncClient) -> set[str]:
    return {m["id"] for m in (await http.get("/v1/models")).json()["data"]}


async def test_a_folder_is_imported_in_place_one_folder_per_family(tmp_path: Path, hub: FakeHub) -> None:
    src = tmp_path / "ggufs"
    write_tiny_gguf(src / "Tiny-Chat-Q4_K_M.gguf", seed=1)
    write_tiny_gguf(src / "Tiny-Chat-Q8_0.gguf", seed=2)
    write_tiny_gguf(tmp_path / "ggufs-elsewhere" / "deep" / "Other-Model-F16.gguf", seed=3)
    (src / "more").symlink_to(tmp_path / "ggufs-elsewhere")  # a linked directory, inside the allowed ones
    (src / "README.md").write_text("not a model")
    (src / "broken.gguf").write_bytes(b"not a gguf at all")
    write_tiny_gguf(tmp_path / "outside" / "Secret-Q4_K_M.gguf", seed=4)
    (src / "escape.gguf").symlink_to(tmp_path / "outside" / "Secret-Q4_K_M.gguf")
    originals = {
        p.name: p.stat() for p in src.rglob("*.gguf") if p.resolve().is_relative_to(tmp_path / "ggufs")
    }
    allowed = [src, tmp_path / "ggufs-elsewhere"]

    root = tmp_path / "jan"
    async with hub_stack(root, hub.url, catalog={"import_allowed_dirs": allowed}) as s:
        resp = await s.http.post("/v1/models", json={"source_url": str(src)})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["object"] == "list"
        assert sorted(body["folders"]) == ["Other-Model", "Tiny-Chat"]
        expected = {"Tiny-Chat/Tiny-Chat-Q4_K_M", "Tiny-Chat/Tiny-Chat-Q8_0", "Other-Model/Other-Model-F16"}
        assert {m["id"] for m in body["data"]} == expected and set(body["created"]) == expected
        skipped = {Path(x["path"]).name: x["reason"] for x in body["skipped"]}
        assert "not a GGUF" in skipped["broken.gguf"]
        assert "allowed" in skipped["escape.gguf"] or "allowed" in skipped.get("Secret-Q4_K_M.gguf", "")
        assert "README.md" not in skipped

        # In place: each binary is a link to the user's file, the same inode; nothing was copied.
        link = root / "models" / "Tiny-Chat" / "Tiny-Chat-Q4_K_M.gguf"
        assert link.is_symlink() and link.stat().st_ino == originals["Tiny-Chat-Q4_K_M.gguf"].st_ino
        assert regular_files(root / "models") == []
        assert (src / "Tiny-Chat-Q4_K_M.gguf").stat().st_nlink == 1

        model = (await s.http.get("/v1/models/Tiny-Chat/Tiny-Chat-Q8_0")).json()
        assert model["state"] == "stopped" and model["metadata"]["quantization"] == "Q8_0"
        assert model["metadata"]["engine"] == "llamacpp"
        usage = (await s.http.get("/v1/storage")).json()
        assert usage["stored_bytes"] == 0 and usage["linked_bytes"] == usage["binary_bytes"] > 0

        # A re-import adds only what is new.
        write_tiny_gguf(src / "Tiny-Chat-Q5_K_M.gguf", seed=5)
        again = (await s.http.post("/v1/models", json={"source_url": str(src)})).json()
        assert again["created"] == ["Tiny-Chat/Tiny-Chat-Q5_K_M"]
        assert len(again["data"]) == 4

        # A delete removes the link, never the user's file.
        assert (await s.http.delete("/v1/models/Tiny-Chat/Tiny-Chat-Q4_K_M")).status_code == 200
        assert (src / "Tiny-Chat-Q4_K_M.gguf").is_file() and not link.is_symlink()


async def test_directory_import_refusals(tmp_path: Path, hub: FakeHub) -> None:
    src = tmp_path / "ggufs"
    write_tiny_gguf(src / "A-Q4_K_M.gguf", seed=1)
    write_tiny_gguf(src / "B-Q4_K_M.gguf", seed=2)
    root = tmp_path / "jan"
    async with hub_stack(root, hub.url, catalog={"import_allowed_dirs": [src]}) as s:
        for field, value in (("name", "x"), ("metadata", {"a": 1}), ("import_mode", "copy")):
            resp = await s.http.post("/v1/models", json={"source_url": str(src), field: value})
            assert resp.status_code == 400 and resp.json()["error"]["param"] == field, resp.text
        resp = await s.http.post("/v1/models", json={"source_url": str(src), "id": "both"})
        assert resp.status_code == 400 and "2 model families" in resp.json()["error"]["message"]
        resp = await s.http.post("/v1/models", json={"source_url": str(tmp_path)})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "import_path_not_allowed"
        # parameters go into every new object
        resp = await s.http.post("/v1/models", json={"source_url": str(src), "parameters": {"ctx_len": 256}})
        assert resp.status_code == 201
        assert all(m["parameters"]["ctx_len"] == 256 for m in resp.json()["data"])


def fill_hf_cache(hub: FakeHub, cache: Path, repo_id: str, files: list[str]) -> None:
    """Downloads with the real huggingface_hub client into `cache` (its hub cache layout)."""
    code = (
        "import sys\n"
        "from huggingface_hub import hf_hub_download\n"
        "for name in sys.argv[3:]:\n"
        "    hf_hub_download(sys.argv[2], name, cache_dir=sys.argv[1])\n"
    )
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
    env.pop("HF_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", code, str(cache), repo_id, *files], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.parametrize("point_at", ["hub", "repository", "hf_home"])
async def test_a_hugging_face_cache_is_recognised(tmp_path: Path, hub: FakeHub, point_at: str) -> None:
    files: dict[str, Any] = {
        "Tiny-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "t1.gguf", seed=1).read_bytes(),
        "Tiny-Q8_0.gguf": write_tiny_gguf(tmp_path / "t2.gguf", seed=2).read_bytes(),
        "mmproj-Tiny-F16.gguf": write_tiny_gguf(tmp_path / "t3.gguf", seed=3).read_bytes(),
    }
    commit = hub.add_repo("someorg/Tiny-GGUF", files)
    home = tmp_path / "huggingface"
    cache = home / "hub"
    fill_hf_cache(hub, cache, "someorg/Tiny-GGUF", sorted(files))
    repo_dir = cache / "models--someorg--Tiny-GGUF"
    assert (repo_dir / "snapshots" / commit).is_dir()  # the real client's layout
    source = {"hub": cache, "repository": repo_dir, "hf_home": home}[point_at]

    root = tmp_path / "jan"
    async with hub_stack(root, hub.url, catalog={"import_allowed_dirs": [home]}) as s:
        resp = await s.http.post("/v1/models", json={"source_url": str(source)})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["folders"] == ["Tiny-GGUF"]
        assert sorted(m["id"] for m in body["data"]) == ["Tiny-GGUF/Tiny-Q4_K_M", "Tiny-GGUF/Tiny-Q8_0"]
        model = next(m for m in body["data"] if m["id"] == "Tiny-GGUF/Tiny-Q4_K_M")
        assert model["owned_by"] == "someorg" and model["state"] == "stopped"
        binaries = {b["name"]: b for b in model["metadata"]["binaries"]}
        assert set(binaries) == {"Tiny-Q4_K_M.gguf", "mmproj-Tiny-F16.gguf"}  # the projector attached
        gguf = binaries["Tiny-Q4_K_M.gguf"]
        assert gguf["sha256"] == hub.sha256_of("someorg/Tiny-GGUF", "Tiny-Q4_K_M.gguf")
        assert gguf["url"] == f"https://huggingface.co/someorg/Tiny-GGUF/resolve/{commit}/Tiny-Q4_K_M.gguf"

        # Linked in place: the model's file is the cache's blob.
        link = root / "models" / "Tiny-GGUF" / "Tiny-Q4_K_M.gguf"
        blob = repo_dir / "blobs" / gguf["sha256"]
        assert link.is_symlink() and link.stat().st_ino == blob.stat().st_ino
        assert regular_files(root / "models") == []


async def test_watched_directories_follow_their_files(tmp_path: Path, hub: FakeHub) -> None:
    watched = tmp_path / "watched"
    write_tiny_gguf(watched / "First-Q4_K_M.gguf", seed=1)
    root = tmp_path / "jan"
    async with hub_stack(root, hub.url, catalog={"watch_dirs": [watched], "import_allowed_dirs": []}) as s:
        assert "First/First-Q4_K_M" in await ids(s.http)  # synced at start

        write_tiny_gguf(watched / "sub" / "Second-Q8_0.gguf", seed=2)

        async def second_appears() -> bool:
            return "Second/Second-Q8_0" in await ids(s.http)

        await eventually(second_appears, what="Second in the list")
        (watched / "First-Q4_K_M.gguf").unlink()

        async def first_disappears() -> bool:
            return "First/First-Q4_K_M" not in await ids(s.http)

        await eventually(first_disappears, what="First gone from the list")
        assert not (root / "models" / "First").exists()
        assert "Second/Second-Q8_0" in await ids(s.http)
