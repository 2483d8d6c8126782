"""The gateway's REST surface against a real catalog gRPC server on a free port."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jan.catalog.v1 import catalog_service_pb2 as pb
from jan.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from services.catalog.core import Catalog
from services.catalog.servicer import SERVICE_NAME
from services.catalog.settings import CatalogSettings
from tests.harness import serving_catalog, serving_gateway


def stub_resolver(host: str, port: int) -> list[str]:
    table = {
        "models.example": ["93.184.215.14"],
        "huggingface.co": ["93.184.215.15"],
        "intranet.example": ["192.168.1.20"],
    }
    return table[host]


@dataclass
class Env:
    http: httpx.AsyncClient
    catalog: Catalog
    root: Path
    imports: Path
    address: str


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    root, imports = tmp_path / "jan", tmp_path / "imports"
    imports.mkdir()
    settings = CatalogSettings(
        root=root, port=0, seed_models_dir=None, import_allowed_dirs=[imports], watch_debounce_ms=10
    )
    catalog = Catalog(settings, resolver=stub_resolver)
    async with (
        serving_catalog(catalog) as address,
        serving_gateway(timeout=5, catalog_address=address) as gw,
    ):
        yield Env(gw.http, catalog, root, imports, address)


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else orjson.dumps(data))
    return path


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


async def test_list_get_and_the_openai_object_shape(env: Env) -> None:
    write(
        env.root / "models" / "zephyr" / "zephyr-Q4_K_M.json",
        {
            "source_url": "https://huggingface.co/TheBloke/zephyr-7B-beta-GGUF/blob/main/zephyr-7b-beta.Q4_K_M.gguf",
            "name": "Zephyr",
            "parameters": {"ctx_len": 2048, "temperature": 0.7},
        },
    )
    await env.catalog.rescan_all()
    resp = await env.http.get("/v1/models")
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model == {
        "id": "zephyr/zephyr-Q4_K_M",
        "object": "model",
        "created": model["created"],
        "owned_by": "TheBloke",
        "name": "Zephyr",
        "description": "",
        "state": "not-downloaded",
        "parameters": {"ctx_len": 2048, "temperature": 0.7},
        "metadata": {"engine": "llamacpp", "capabilities": ["completion"]},
    }
    assert isinstance(model["created"], int) and model["created"] > 1_600_000_000
    for path in ("/v1/models/zephyr/zephyr-Q4_K_M", "/v1/models/zephyr%2Fzephyr-Q4_K_M"):
        resp = await env.http.get(path)
        assert resp.status_code == 200 and resp.json() == model
    state = (await env.http.get("/v1/models/zephyr/zephyr-Q4_K_M/state")).json()
    assert state["state"] == "not-downloaded" and "zephyr-7b-beta.Q4_K_M.gguf" in state["reason"]
    meta = (await env.http.get("/v1/models/zephyr/zephyr-Q4_K_M/metadata")).json()
    assert meta["binaries"][0]["url"].endswith("/resolve/main/zephyr-7b-beta.Q4_K_M.gguf")
    assert meta["binaries"][0]["present"] is False


async def test_filters(env: Env) -> None:
    write(env.root / "models" / "remote" / "gpt.json", {"metadata": {"engine": "api"}})
    write(env.root / "models" / "local" / "m.json", {})
    await env.catalog.rescan_all()
    stopped = (await env.http.get("/v1/models", params={"state": "stopped"})).json()["data"]
    assert [m["id"] for m in stopped] == ["remote/gpt"]
    llama = (await env.http.get("/v1/models", params={"engine": "llamacpp"})).json()["data"]
    assert [m["id"] for m in llama] == ["local/m"]
    assert_error(await env.http.get("/v1/models", params={"state": "sleeping"}), 422)


async def test_the_list_is_paged_as_openai_lists_are(env: Env) -> None:
    for i in range(5):
        write(
            env.root / "models" / f"m{i}" / "m.json", {"metadata": {"engine": "api" if i % 2 else "llamacpp"}}
        )
    await env.catalog.rescan_all()
    first = (await env.http.get("/v1/models", params={"limit": 2})).json()
    assert [m["id"] for m in first["data"]] == ["m0/m", "m1/m"]
    assert (first["first_id"], first["last_id"], first["has_more"]) == ("m0/m", "m1/m", True)
    rest = (await env.http.get("/v1/models", params={"limit": 2, "after": first["last_id"]})).json()
    assert [m["id"] for m in rest["data"]] == ["m2/m", "m3/m"] and rest["has_more"] is True
    last = (await env.http.get("/v1/models", params={"after": "m3/m"})).json()
    assert [m["id"] for m in last["data"]] == ["m4/m"] and last["has_more"] is False
    api = (await env.http.get("/v1/models", params={"engine": "api", "limit": 1, "after": "m1/m"})).json()
    assert [m["id"] for m in api["data"]] == ["m3/m"] and api["has_more"] is False
    empty = (await env.http.get("/v1/models", params={"after": "zzz"})).json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    whole = (await env.http.get("/v1/models")).json()
    assert set(whole) == {"object", "data"} and len(whole["data"]) == 5  # unpaged: OpenAI's shape
    assert_error(await env.http.get("/v1/models", params={"limit": 0}), 422)


async def test_the_list_answers_304_until_the_catalog_changes(env: Env) -> None:
    write(env.root / "models" / "a" / "a.json", {"name": "A"})
    await env.catalog.rescan_all()
    first = await env.http.get("/v1/models")
    etag = first.headers["etag"]
    assert first.status_code == 200 and etag.startswith('"')
    again = await env.http.get("/v1/models", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert (await env.http.get("/v1/models", headers={"If-None-Match": f'"x", W/{etag}'})).status_code == 304
    paged = await env.http.get("/v1/models", params={"limit": 1}, headers={"If-None-Match": etag})
    assert paged.status_code == 200 and paged.headers["etag"] != etag  # another query, another tag

    # A change through the API, and one by hand on disk: each shows in the next answer, with a new tag.
    assert (await env.http.patch("/v1/models/a/a", json={"name": "A2"})).status_code == 200
    changed = await env.http.get("/v1/models", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["data"][0]["name"] == "A2"
    assert changed.headers["etag"] != etag
    write(env.root / "models" / "b" / "b.json", {"name": "B"})
    await env.catalog.refresh_folder("b")
    listed = await env.http.get("/v1/models", headers={"If-None-Match": changed.headers["etag"]})
    assert [m["name"] for m in listed.json()["data"]] == ["A2", "B"]


async def test_create_patch_delete_through_rest(env: Env) -> None:
    original = write(env.imports / "tiny.Q4_0.gguf", b"GGUF" * 10)
    resp = await env.http.post(
        "/v1/models", json={"source_url": str(original), "id": "tiny/chat", "parameters": {"ctx_len": 512}}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["state"] == "stopped"
    assert resp.json()["metadata"]["quantization"] == "Q4_0"
    assert_error(
        await env.http.post("/v1/models", json={"source_url": str(original), "id": "tiny/chat"}), 409
    )

    resp = await env.http.patch(
        "/v1/models/tiny/chat", json={"description": "hi", "parameters": {"ctx_len": None, "top_k": 20}}
    )
    assert resp.status_code == 200
    assert resp.json()["description"] == "hi" and resp.json()["parameters"] == {"top_k": 20}

    resp = await env.http.delete("/v1/models/tiny/chat")
    assert resp.json() == {"id": "tiny/chat", "object": "model", "deleted": True}
    assert original.exists()
    assert_error(await env.http.get("/v1/models/tiny/chat"), 404, "model_not_found")
    assert_error(await env.http.delete("/v1/models/tiny/chat"), 404, "model_not_found")


async def test_errors_use_one_shape_and_the_right_status(env: Env) -> None:
    write(env.root / "models" / "bad" / "b.json", b'{"metadata": {"engine": 7}}')
    await env.catalog.rescan_all()
    assert_error(await env.http.get("/v1/models/bad/b"), 422, "invalid_model_file")
    problems = (await env.http.get("/v1/catalog/problems")).json()["data"]
    assert problems == [{"path": "models/bad/b.json", "id": "bad/b", "reason": problems[0]["reason"]}]
    assert_error(await env.http.get("/v1/models/.hidden/x"), 400, "invalid_model_id")
    assert_error(await env.http.get("/v1/models/..%2F..%2Fetc%2Fpasswd"), 404, "invalid_model_id")
    assert_error(await env.http.get("/v1/models/only-one-part"), 400, "invalid_model_id")
    outside = write(env.root.parent / "outside.gguf", b"x")
    assert_error(await env.http.post("/v1/models", json={"source_url": str(outside)}), 403)
    err = assert_error(
        await env.http.post("/v1/models", json={"source_url": "http://intranet.example/m.gguf"}), 400
    )
    assert err["code"] == "unsafe_source_url" and err["param"] == "source_url"
    assert_error(await env.http.post("/v1/models", json={"source_url": "x", "bogus": 1}), 422)
    assert_error(
        await env.http.post("/v1/models", content=b"{not json", headers={"content-type": "application/json"}),
        422,
    )
    assert_error(await env.http.get("/v1/nothing-here"), 404)
    # A whole repository goes to the downloader, which is not running here.
    assert_error(
        await env.http.post("/v1/models", json={"source_url": "https://huggingface.co/TheBloke/x-GGUF"}),
        503,
        "downloader_unavailable",
    )


async def test_archive_export_and_import_over_http(env: Env) -> None:
    write(env.root / "models" / "tiny" / "tiny.json", {"name": "Tiny"})
    write(env.root / "models" / "tiny" / "tiny.gguf", b"w" * 5000)
    await env.catalog.rescan_all()
    resp = await env.http.get("/v1/folders/tiny/export")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/gzip"
    archive = resp.content
    resp = await env.http.post("/v1/folders/import", params={"folder": "tiny2"}, content=archive)
    assert resp.status_code == 201, resp.text
    assert [m["id"] for m in resp.json()["data"]] == ["tiny2/tiny"]
    assert resp.json()["data"][0]["state"] == "stopped"
    assert_error(await env.http.post("/v1/folders/import", params={"folder": "tiny2"}, content=archive), 409)
    assert_error(await env.http.get("/v1/folders/missing/export"), 404, "folder_not_found")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x/link.gguf")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    assert_error(await env.http.post("/v1/folders/import", content=buf.getvalue()), 400, "unsafe_archive")
    assert_error(await env.http.post("/v1/folders/import", content=b"not an archive"), 400, "unsafe_archive")


async def test_openapi_declares_the_error_shape(env: Env) -> None:
    doc = (await env.http.get("/openapi.json")).json()
    responses = doc["paths"]["/v1/models/{folder}/{file}"]["get"]["responses"]
    assert responses["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert (await env.http.get("/docs")).status_code == 200


async def test_health_and_reflection_on_the_grpc_server(env: Env) -> None:
    async with aio.insecure_channel(env.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = refl.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
        stub = pb_grpc.CatalogServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as exc:
            await stub.GetModel(pb.GetModelRequest(id="../x"))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(exc.value.trailing_metadata())["jan-error-code"] == "invalid_model_id"


async def test_catalog_down_gives_503_not_a_hang(tmp_path: Path) -> None:
    async with serving_gateway(timeout=5, catalog_address="127.0.0.1:1", rpc_timeout_s=2) as gw:
        assert_error(await gw.http.get("/v1/models"), 503, "catalog_unavailable")
        assert (await gw.http.get("/healthz")).status_code == 503
