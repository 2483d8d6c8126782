"""The downloader against real parts: the catalog and downloader gRPC servers on free ports, the gateway
over ASGI, a loopback fake of the Hugging Face Hub and its CDN (real sockets, real HTTP), a real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from services.catalog.core import Catalog
from services.common.storage import Storage, StorageSettings, make_storage
from services.downloader.core import Downloader
from tests.fakes.hub import FakeHub, Faults
from tests.harness import hub_stack

MiB = 1024 * 1024


@dataclass
class Env:
    http: httpx.AsyncClient
    hub: FakeHub
    root: Path
    catalog: Catalog
    downloader: Downloader
    storage: Storage


def stub_resolver(host: str, port: int) -> list[str]:
    table = {
        "127.0.0.1": ["127.0.0.1"],
        "internal.example": ["10.20.30.40"],
        "public.example": ["93.184.215.14"],
    }
    if host not in table:
        raise OSError(f"unknown host {host}")
    return table[host]


@pytest.fixture
def make_env(tmp_path: Path, hub: FakeHub) -> Callable[..., AsyncIterator[Env]]:
    async def make(
        storage_settings: StorageSettings | None = None, **downloader_kw: object
    ) -> AsyncIterator[Env]:
        root = tmp_path / "jan"
        storage = make_storage(storage_settings or StorageSettings(), root)
        values: dict[str, object] = {"hf_token": hub.token, "min_split_bytes": MiB, **downloader_kw}
        async with hub_stack(root, hub.url, storage=storage, resolver=stub_resolver, **values) as s:
            yield Env(s.http, hub, root, s.catalog, s.downloader, s.storage)

    return make


def write_model(root: Path, model_id: str, obj: dict) -> Path:
    path = root / "models" / f"{model_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(obj))
    return path


async def wait_job(
    http: httpx.AsyncClient, model_id: str, phases: tuple[str, ...], timeout: float = 30
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await http.get(f"/v1/models/{model_id}/download", headers={"accept": "application/json"})
        job = resp.json()
        if resp.status_code == 200 and job["phase"] in phases:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job stuck: {job}"
        await asyncio.sleep(0.05)


async def state(http: httpx.AsyncClient, model_id: str) -> dict:
    return (await http.get(f"/v1/models/{model_id}/state")).json()


def partials(root: Path) -> list[str]:
    """Hidden files left in the model folders (the content store's own files are not leftovers)."""
    models = root / "models"
    return sorted(
        str(p.relative_to(root)) for p in models.rglob(".*") if p.is_file() and ".store" not in p.parts
    )


async def test_hugging_face_file_download_is_verified_and_written_back(make_env, hub: FakeHub) -> None:
    hub.add_repo("TheBloke/tiny-GGUF", {"tiny.Q4_K_M.gguf": (3 * MiB + 123, 7)})
    async for env in make_env():
        url = f"{hub.url}/TheBloke/tiny-GGUF/resolve/main/tiny.Q4_K_M.gguf"
        path = write_model(env.root, "tiny/tiny-q4", {"source_url": url})
        await env.catalog.rescan_all()
        assert (await state(env.http, "tiny/tiny-q4"))["state"] == "not-downloaded"
        resp = await env.http.post("/v1/models/tiny/tiny-q4/download")
        assert resp.status_code == 202 and resp.json()["model_id"] == "tiny/tiny-q4"
        job = await wait_job(env.http, "tiny/tiny-q4", ("done", "failed"))
        assert job["phase"] == "done", job
        sha = hub.sha256_of("TheBloke/tiny-GGUF", "tiny.Q4_K_M.gguf")
        assert job["files"][0]["sha256"] == sha
        binary = env.root / "models" / "tiny" / "tiny.Q4_K_M.gguf"
        assert hashlib.sha256(binary.read_bytes()).hexdigest() == sha
        assert partials(env.root) == []
        assert (await state(env.http, "tiny/tiny-q4"))["state"] == "stopped"
        written = orjson.loads(path.read_bytes())
        assert written["metadata"]["binaries"] == [
            {"name": "tiny.Q4_K_M.gguf", "url": url, "sha256": sha, "size": 3 * MiB + 123}
        ]
        # The Hub's CDN was reached through the redirect, with ranges over several connections.
        ranged = [r for r in hub.requests if r[1].startswith("/cdn/") and r[2] and r[2] != "bytes=0-0"]
        assert len(ranged) >= 3


async def test_resume_after_cuts_and_a_stall(make_env, hub: FakeHub) -> None:
    hub.add_file("/files/cut.gguf", (5 * MiB, 3))
    hub.faults["/files/cut.gguf"] = Faults(cut_after=700_000, cut_times=3, stall_at=100_000, stall_seconds=3)
    async for env in make_env(connections=1):
        write_model(env.root, "cut/cut", {"source_url": f"{hub.url}/files/cut.gguf"})
        await env.catalog.rescan_all()
        await env.http.post("/v1/models/cut/cut/download")
        job = await wait_job(env.http, "cut/cut", ("done", "failed"))
        assert job["phase"] == "done", job
        data = (env.root / "models" / "cut" / "cut.gguf").read_bytes()
        assert hashlib.sha256(data).hexdigest() == hub.sha256_of_file("/files/cut.gguf")
        resumed = [r[2] for r in hub.requests if r[1] == "/files/cut.gguf" and r[2] and r[2] != "bytes=0-0"]
        assert resumed and all(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in resumed)


async def test_a_server_without_range_support_restarts_cleanly(make_env, hub: FakeHub) -> None:
    hub.add_file("/files/norange.gguf", (2 * MiB, 5))
    hub.faults["/files/norange.gguf"] = Faults(ignore_range=True, cut_after=MiB, cut_times=1)
    async for env in make_env():
        write_model(env.root, "nr/nr", {"source_url": f"{hub.url}/files/norange.gguf"})
        await env.catalog.rescan_all()
        await env.http.post("/v1/models/nr/nr/download")
        job = await wait_job(env.http, "nr/nr", ("done", "failed"))
        assert job["phase"] == "done", job
        data = (env.root / "models" / "nr" / "norange.gguf").read_bytes()
        assert hashlib.sha256(data).hexdigest() == hub.sha256_of_file("/files/norange.gguf")


async def test_a_digest_mismatch_fails_and_removes_the_bytes(make_env, hub: FakeHub) -> None:
    hub.add_repo("org/liar-GGUF", {"liar.Q8_0.gguf": (MiB, 9)})
    hub.faults["org/liar-GGUF/liar.Q8_0.gguf"] = Faults(wrong_digest=True)
    async for env in make_env():
        write_model(
            env.root, "liar/liar", {"source_url": f"{hub.url}/org/liar-GGUF/resolve/main/liar.Q8_0.gguf"}
        )
        await env.catalog.rescan_all()
        await env.http.post("/v1/models/liar/liar/download")
        job = await wait_job(env.http, "liar/liar", ("done", "failed"))
        assert job["phase"] == "failed" and job["error_code"] == "digest_mismatch"
        assert not (env.root / "models" / "liar" / "liar.Q8_0.gguf").exists()
        assert partials(env.root) == []
        st = await state(env.http, "liar/liar")
        assert (
            st["state"] == "not-downloaded" and "download failed" in st["reason"] and "sha256" in st["reason"]
        )


async def test_expected_digest_from_the_model_object_is_checked(make_env, hub: FakeHub) -> None:
    hub.add_file("/files/plain.gguf", (MiB, 2))
    async for env in make_env():
        write_model(
            env.root,
            "p/p",
            {"source_url": f"{hub.url}/files/plain.gguf", "metadata": {"sha256": "0" * 64}},
        )
        await env.catalog.rescan_all()
        await env.http.post("/v1/models/p/p/download")
        job = await wait_job(env.http, "p/p", ("done", "failed"))
        assert job["error_code"] == "digest_mismatch"


async def test_cancel_pause_resume_and_join(make_env, hub: FakeHub) -> None:
    hub.add_file("/files/slow.gguf", (4 * MiB, 4))
    hub.faults["/files/slow.gguf"] = Faults(stall_at=MiB, stall_seconds=0.8)
    async for env in make_env(connections=1, stall_timeout_s=5):
        write_model(env.root, "s/s", {"source_url": f"{hub.url}/files/slow.gguf"})
        await env.catalog.rescan_all()
        first = (await env.http.post("/v1/models/s/s/download")).json()
        # The catalog knows as soon as the request is answered: downloading, not "missing".
        assert (await state(env.http, "s/s"))["state"] == "downloading"
        again = await env.downloader.start_download("s/s")
        assert again[1] is False  # joined
        await wait_job(env.http, "s/s", ("downloading",))
        await asyncio.sleep(0.2)
        paused = (await env.http.post("/v1/models/s/s/download/pause")).json()
        assert paused["phase"] == "paused"
        assert (await state(env.http, "s/s"))["state"] == "not-downloaded"
        resumed = (await env.http.post("/v1/models/s/s/download/resume")).json()
        assert resumed["phase"] in ("queued", "connecting", "downloading")
        done = await wait_job(env.http, "s/s", ("done",))
        assert done["created"] == first["created"]

        hub.add_file("/files/big.gguf", (8 * MiB, 8))
        hub.faults["/files/big.gguf"] = Faults(stall_at=2 * MiB, stall_seconds=3)
        write_model(env.root, "b/b", {"source_url": f"{hub.url}/files/big.gguf"})
        await env.catalog.rescan_all()
        await env.http.post("/v1/models/b/b/download")
        await wait_job(env.http, "b/b", ("downloading",))
        cancelled = (await env.http.delete("/v1/models/b/b/download")).json()
        assert cancelled["phase"] == "cancelled"
        assert partials(env.root) == []
        st = await state(env.http, "b/b")
        assert st["state"] == "not-downloaded" and st["reason"] == "download cancelled"


async def test_progress_as_server_sent_events(make_env, hub: FakeHub) -> None:
    hub.add_file("/files/sse.gguf", (3 * MiB, 1))
    hub.faults["/files/sse.gguf"] = Faults(stall_at=MiB, stall_seconds=0.3)
    async for env in make_env(connections=1, stall_timeout_s=5):
        write_model(env.root, "e/e", {"source_url": f"{hub.url}/files/sse.gguf"})
        await env.catalog.rescan_all()
        await env.http.post("/v1/models/e/e/download")
        events = []
        async with env.http.stream("GET", "/v1/models/e/e/download") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        jobs = [orjson.loads(e) for e in events[:-1]]
        assert jobs[-1]["phase"] == "done" and jobs[-1]["bytes_done"] == 3 * MiB
        assert [j["bytes_done"] for j in jobs] == sorted(j["bytes_done"] for j in jobs)
        assert (await env.http.get("/v1/models/nope/nope/download")).status_code == 404


async def test_refusals_before_any_byte(make_env, hub: FakeHub) -> None:
    hub.add_file("/files/huge.gguf", (2 * MiB, 1))
    async for env in make_env(reserve_bytes=10**18, allow_private_networks=False):
        write_model(env.root, "h/h", {"source_url": f"{hub.url}/files/huge.gguf"})
        write_model(env.root, "i/i", {"source_url": "http://internal.example/m.gguf"})
        write_model(env.root, "l/l", {"source_url": "http://127.0.0.1:1/m.gguf"})
        write_model(
            env.root, "r/r", {"source_url": "https://api.example/v1/models/x", "metadata": {"engine": "api"}}
        )
        write_model(env.root, "n/n", {})
        await env.catalog.rescan_all()
        before = len(hub.requests)
        for model_id, status, code in (
            ("i/i", 400, "unsafe_source_url"),
            ("l/l", 400, "unsafe_source_url"),
            ("r/r", 409, "nothing_to_download"),
            ("n/n", 409, "nothing_to_download"),
        ):
            resp = await env.http.post(f"/v1/models/{model_id}/download")
            assert resp.status_code == status, resp.text
            assert resp.json()["error"]["code"] == code
        assert len(hub.requests) == before
    async for env in make_env(reserve_bytes=10**18):
        write_model(
            env.root,
            "h/h",
            {
                "source_url": f"{hub.url}/files/huge.gguf",
                "metadata": {"binaries": [{"url": f"{hub.url}/files/huge.gguf", "size": 2 * MiB}]},
            },
        )
        await env.catalog.rescan_all()
        resp = await env.http.post("/v1/models/h/h/download")
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "insufficient_space"


async def test_hugging_face_repository_import_with_split_files_and_mmproj(make_env, hub: FakeHub) -> None:
    hub.add_repo(
        "mys/llava-GGUF",
        {
            "README.md": b"# llava",
            "llava.Q4_K_M.gguf": (MiB, 1),
            "Q8_0/llava.Q8_0-00001-of-00002.gguf": (MiB, 2),
            "Q8_0/llava.Q8_0-00002-of-00002.gguf": (MiB // 2, 3),
            "mmproj-model-f16.gguf": (MiB // 4, 4),
        },
    )
    async for env in make_env():
        resp = await env.http.post("/v1/models", json={"source_url": "https://huggingface.co/mys/llava-GGUF"})
        # The fake Hub stands at HF_ENDPOINT; a huggingface.co URL names the repository.
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["folder"] == "llava-GGUF"
        by_quant = {m["metadata"]["quantization"]: m for m in body["data"]}
        assert set(by_quant) == {"Q4_K_M", "Q8_0"}
        assert all(m["state"] == "not-downloaded" and m["owned_by"] == "mys" for m in body["data"])
        q8 = by_quant["Q8_0"]
        meta = (await env.http.get(f"/v1/models/{q8['id']}/metadata")).json()
        names = [b["name"] for b in meta["binaries"]]
        assert (
            len(names) == 3
            and any("mmproj" in n for n in names)
            and all(b["sha256"] for b in meta["binaries"])
        )
        await env.http.post(f"/v1/models/{q8['id']}/download")
        job = await wait_job(env.http, q8["id"], ("done", "failed"))
        assert job["phase"] == "done", job
        assert (await state(env.http, q8["id"]))["state"] == "stopped"
        # The mmproj is shared: the Q4 model still misses only its own file.
        q4 = await state(env.http, by_quant["Q4_K_M"]["id"])
        assert q4["state"] == "not-downloaded" and "mmproj" not in q4["reason"]
        resp = await env.http.post("/v1/models", json={"source_url": "https://huggingface.co/nobody/nothing"})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "hf_repo_not_found"


async def test_gated_repository_needs_the_token(make_env, hub: FakeHub) -> None:
    hub.add_repo("meta/gated-GGUF", {"g.Q4_0.gguf": (MiB, 1)}, gated=True)
    async for env in make_env(hf_token=""):
        resp = await env.http.post(
            "/v1/models", json={"source_url": "https://huggingface.co/meta/gated-GGUF"}
        )
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "hf_gated"
    async for env in make_env():
        resp = await env.http.post(
            "/v1/models", json={"source_url": "https://huggingface.co/meta/gated-GGUF"}
        )
        assert resp.status_code == 201
        model_id = resp.json()["data"][0]["id"]
        await env.http.post(f"/v1/models/{model_id}/download")
        assert (await wait_job(env.http, model_id, ("done", "failed")))["phase"] == "done"
        assert [r for r in hub.requests if r[1].startswith("/cdn/")]  # fetched through the Hub's redirect


async def test_s3_backend_end_to_end(make_env, hub: FakeHub, moto_s3: str, tmp_path: Path) -> None:
    hub.add_file("/files/s3.gguf", (6 * MiB + 5, 6))
    settings = StorageSettings(
        backend="s3",
        s3_endpoint=moto_s3,
        s3_secure=False,
        s3_bucket="jan-test-e2e",
        s3_access_key="test",
        s3_secret_key="test",
        s3_region="us-east-1",
        s3_part_size=5 * MiB,
        cache_dir=tmp_path / "cache",
    )
    async for env in make_env(storage_settings=settings):
        write_model(env.root, "s3/m", {"source_url": f"{hub.url}/files/s3.gguf"})
        await env.catalog.rescan_all()
        assert (await state(env.http, "s3/m"))["state"] == "not-downloaded"
        await env.http.post("/v1/models/s3/m/download")
        job = await wait_job(env.http, "s3/m", ("done", "failed"))
        assert job["phase"] == "done", job
        assert env.storage.stat("s3", "s3.gguf") == 6 * MiB + 5
        assert not (env.root / "models" / "s3" / "s3.gguf").exists()  # in the bucket, not on disk
        assert not list((env.root / ".downloads").rglob("*.part"))
        assert (await state(env.http, "s3/m"))["state"] == "stopped"
        local = env.storage.materialize("s3", "s3.gguf", sha256=job["files"][0]["sha256"])
        assert hashlib.sha256(local.read_bytes()).hexdigest() == hub.sha256_of_file("/files/s3.gguf")
        await env.http.delete("/v1/models/s3/m")
        assert env.storage.stat("s3", "s3.gguf") is None


async def test_pause_mid_write_never_leaves_a_hole(make_env, hub: FakeHub) -> None:
    # Many pauses at random moments while writes are queued; no sha256 known in advance, so only a
    # correct resume gives the right bytes.
    hub.add_file("/files/holes.gguf", (24 * MiB + 3, 12))
    async for env in make_env(connections=2, chunk_bytes=64 * 1024):
        write_model(env.root, "h/h", {"source_url": f"{hub.url}/files/holes.gguf"})
        await env.catalog.rescan_all()
        await env.http.post("/v1/models/h/h/download")
        for delay in (0.01, 0.03, 0.02, 0.05, 0.01):
            await asyncio.sleep(delay)
            job = (await env.http.post("/v1/models/h/h/download/pause")).json()
            if job["phase"] == "done":
                break
            await env.http.post("/v1/models/h/h/download/resume")
        job = await wait_job(env.http, "h/h", ("done", "failed"))
        assert job["phase"] == "done", job
        data = (env.root / "models" / "h" / "holes.gguf").read_bytes()
        assert hashlib.sha256(data).hexdigest() == hub.sha256_of_file("/files/holes.gguf")
        # Asking again for a complete model keeps the record of the download that made it.
        again = (await env.http.post("/v1/models/h/h/download")).json()
        assert again["phase"] == "done" and again["bytes_done"] == 24 * MiB + 3
