"""The security rules, end to end: requests through the real gateway (a uvicorn server on a loopback
port, so real HTTP parsing) to the real catalog and downloader gRPC servers on real files.

This is the one file to read to see that the rules hold from the outside: paths never leave JAN_ROOT,
archives cannot plant links or escape, the server fetches only public http(s) addresses, bodies are
bounded, and nothing a client sends can split a response header. The exhaustive cases of each rule live
beside the code (tests/unit/test_archive.py, tests/unit/test_netsafety.py); this file takes the
representative ones through every layer. Name resolution goes through a stub resolver and the only
addresses ever connected to are the loopback ones of our own servers.
"""

from __future__ import annotations

import asyncio
import io
import socket
import tarfile
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import orjson
import pytest

from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.storage import StorageSettings, make_storage
from services.downloader.settings import DownloaderSettings
from tests.harness import listening_gateway, serving_catalog, serving_downloader

MAX_BODY = 64 * 1024
# Names the stub resolver knows. The public one is only ever checked, never connected to.
NAMES = {
    "models.example": ["93.184.215.14"],
    "loopback.example": ["127.0.0.1"],
    "v6loop.example": ["::1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "mixed.example": ["93.184.215.14", "127.0.0.1"],  # one bad answer is enough to refuse
}


def stub_resolver(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError(f"unknown host {host}")
    return NAMES[host]


@dataclass
class Env:
    http: httpx.AsyncClient
    url: str
    root: Path
    imports: Path
    outside: Path  # a folder beside JAN_ROOT with a sentinel file: nothing may touch it


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    root, imports, outside = tmp_path / "jan", tmp_path / "imports", tmp_path / "outside"
    imports.mkdir()
    outside.mkdir()
    (outside / "secret.json").write_text('{"source_url": "https://models.example/secret.gguf"}')
    (outside / "secret.gguf").write_bytes(b"GGUF secret")
    storage = make_storage(StorageSettings(), root)
    catalog = Catalog(
        CatalogSettings(
            root=root,
            port=0,
            seed_models_dir=None,
            import_allowed_dirs=[imports],
            watch_debounce_ms=10,
            allow_private_networks=False,
        ),
        storage=storage,
        resolver=stub_resolver,
    )
    async with serving_catalog(catalog) as cat_address:
        dl_settings = DownloaderSettings(
            root=root,
            port=0,
            catalog_address=cat_address,
            reserve_bytes=0,
            allow_private_networks=False,
            retries=0,
        )
        async with (
            serving_downloader(dl_settings, storage, stub_resolver) as (_, dl_address),
            listening_gateway(
                catalog_address=cat_address, downloader_address=dl_address, max_body_bytes=MAX_BODY
            ) as url,
            httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http,
        ):
            yield Env(http, url, root, imports, outside)
    # Whatever the test did, the world outside JAN_ROOT is as it was.
    assert sorted(p.name for p in outside.iterdir()) == ["secret.gguf", "secret.json"]
    assert (outside / "secret.gguf").read_bytes() == b"GGUF secret"


def assert_error(resp: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, f"{resp.status_code} {resp.text}"
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


async def raw_request(url: str, request: bytes) -> bytes:
    """Sends bytes as they are (no client-side normalisation of the path) and returns the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def write_model(root: Path, model_id: str, obj: dict) -> None:
    path = root / "models" / f"{model_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(obj))


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes | None = b"{}", kind: bytes = tarfile.REGTYPE, target: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, data if kind == tarfile.REGTYPE else None


def model_files(root: Path) -> list[str]:
    """Every entry under JAN_ROOT/models, hidden staging folders included."""
    models = root / "models"
    return sorted(str(p.relative_to(models)) for p in models.rglob("*")) if models.exists() else []


# --- paths: ids and folder names never leave JAN_ROOT/models -----------------------------------------

ESCAPING_IDS = [
    "..%2F..%2Foutside%2Fsecret",  # ../../outside/secret as one encoded segment
    "%2e%2e/%2e%2e",  # encoded dot segments
    "%2E%2E%2F%2E%2E%2Foutside/secret",
    "..%5C..%5Coutside/secret",  # backslashes
    "a%00/secret",  # NUL
    "%2Ftmp%2Foutside/secret",  # absolute
    ".catalog/links",  # the catalog's own hidden folder
    "outside/secret%0d%0aX-Evil:%201",  # CR/LF
]


@pytest.mark.parametrize("model_id", ESCAPING_IDS)
async def test_model_ids_that_try_to_leave_the_root_are_refused_on_every_route(
    env: Env, model_id: str
) -> None:
    base = f"/v1/models/{model_id}"
    calls = [
        ("GET", base, None),
        ("GET", f"{base}/state", None),
        ("GET", f"{base}/metadata", None),
        ("PATCH", base, {"name": "pwned"}),
        ("DELETE", base, None),
        ("POST", f"{base}/download", None),
        ("DELETE", f"{base}/download", None),
        ("POST", f"{base}/start", {}),
    ]
    for method, path, body in calls:
        resp = await env.http.request(method, path, json=body)
        error = assert_error(resp, (400, 404))
        # Refused as an id (400, or 404 when it does not even look like '<folder>/<file>'), never looked
        # up on disk; a download job is looked up by name in memory only, and there is none.
        assert error["code"] in ("invalid_model_id", "download_not_found", None), (method, path, error)
        assert "x-evil" not in resp.headers
    unquoted = unquote(model_id)
    inputs = {
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "x"}]},
        "/v1/completions": {"prompt": "x"},
        "/v1/embeddings": {"input": "x"},
        "/v1/tokenize": {"prompt": "x"},
        "/v1/detokenize": {"tokens": [1]},
    }
    for route, fields in inputs.items():
        body = {"model": unquoted, **fields}
        assert_error(await env.http.post(route, json=body), (400, 404), "invalid_model_id")


async def test_dot_segments_sent_raw_are_not_resolved(env: Env) -> None:
    # httpx would normalise these away; send them as an attacker's client would.
    for target in (
        b"/v1/models/../../outside/secret",
        b"/v1/models/x/../../../outside/secret",
        b"/v1/folders/../export",
        b"/v1/models/%2e%2e/%2e%2e/outside/secret",
    ):
        answer = await raw_request(
            env.url, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 404), answer[:300]
        assert b"GGUF secret" not in answer and b"models.example/secret" not in answer


@pytest.mark.parametrize("folder", ["%2e%2e", "..%2F..%2Foutside", ".catalog", "a%5C..", "a%00b", "%2Ftmp"])
async def test_folder_names_that_try_to_leave_the_root_are_refused(env: Env, folder: str) -> None:
    assert_error(await env.http.get(f"/v1/folders/{folder}/export"), (400, 404))
    archive = tar_gz([member("m/m.json", b'{"source_url": "https://models.example/m.gguf"}')])
    resp = await env.http.post(f"/v1/folders/import?folder={folder}", content=archive)
    assert_error(resp, 400, "invalid_folder")
    assert model_files(env.root) == []


# --- archives: no link, no escape, nothing left behind --------------------------------------------------

HOSTILE_MEMBERS = {
    "dot-dot": [member("m/m.json"), member("../../outside/planted.json")],
    "absolute": [member("m/m.json"), member("/tmp/planted.json")],
    "symlink": [
        member("m/m.json"),
        member("m/m.gguf", kind=tarfile.SYMTYPE, target="../../../outside/secret.gguf"),
    ],
    "symlink-abs": [member("m/m.json"), member("m/m.gguf", kind=tarfile.SYMTYPE, target="/etc/passwd")],
    "hardlink": [
        member("m/m.json"),
        member("m/m.gguf", kind=tarfile.LNKTYPE, target="../outside/secret.gguf"),
    ],
    "device": [member("m/m.json"), member("m/null", kind=tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("case", list(HOSTILE_MEMBERS))
async def test_hostile_tar_members_are_refused_and_leave_nothing(env: Env, case: str) -> None:
    resp = await env.http.post("/v1/folders/import", content=tar_gz(HOSTILE_MEMBERS[case]))
    assert_error(resp, 400, "unsafe_archive")
    assert model_files(env.root) == []
    assert not (env.root.parent / "planted.json").exists() and not Path("/tmp/planted.json").exists()


@pytest.mark.parametrize(
    "name", ["..\\..\\outside\\planted.json", "C:\\planted.json", "m/../../planted.json"]
)
async def test_hostile_zip_names_are_refused(env: Env, name: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/m.json", "{}")
        zf.writestr(name, "{}")
    assert_error(await env.http.post("/v1/folders/import", content=buf.getvalue()), 400, "unsafe_archive")
    assert model_files(env.root) == []


async def test_a_symlink_in_the_import_dir_cannot_smuggle_a_file_from_outside(env: Env) -> None:
    (env.imports / "innocent.gguf").symlink_to(env.outside / "secret.gguf")
    resp = await env.http.post("/v1/models", json={"source_url": str(env.imports / "innocent.gguf")})
    assert_error(resp, 403, "import_path_not_allowed")
    for path in ("/etc/passwd", "file:///etc/passwd", f"{env.imports}/../outside/secret.gguf"):
        assert_error(await env.http.post("/v1/models", json={"source_url": path}), (400, 403))
    assert model_files(env.root) == []


# --- source URLs: public http(s) only, in the catalog and again in the downloader -----------------------

UNSAFE_URLS = [
    "ftp://models.example/m.gguf",
    "gopher://models.example/_m.gguf",
    "data:application/octet-stream;base64,R0dVRg==",
    "javascript:alert(1)",
    "dict://models.example:11211/m.gguf",
    "http://127.0.0.1/m.gguf",
    "http://127.1/m.gguf",
    "http://0x7f000001/m.gguf",
    "http://2130706433/m.gguf",
    "http://0177.0.0.1/m.gguf",
    "http://[::1]/m.gguf",
    "http://[::ffff:127.0.0.1]/m.gguf",
    "http://localhost/m.gguf",
    "http://LOCALHOST./m.gguf",
    "http://app.localhost/m.gguf",
    "http://loopback.example/m.gguf",
    "http://v6loop.example/m.gguf",
    "http://mapped.example/m.gguf",
    "http://mixed.example/m.gguf",
    "http://models.example\\@127.0.0.1/m.gguf",
    "http://models.example/m.gguf\r\nX-Evil: 1",
]


@pytest.mark.parametrize("url", UNSAFE_URLS)
async def test_source_urls_the_server_must_not_fetch_are_refused(env: Env, url: str) -> None:
    resp = await env.http.post("/v1/models", json={"source_url": url, "id": "m/m"})
    assert_error(resp, 400, "unsafe_source_url")
    assert model_files(env.root) == []


async def test_a_public_https_url_is_accepted_but_not_fetched_until_asked(env: Env) -> None:
    resp = await env.http.post("/v1/models", json={"source_url": "https://models.example/m.gguf"})
    assert resp.status_code == 201 and resp.json()["state"] == "not-downloaded"


async def test_the_downloader_checks_again_and_never_connects(env: Env) -> None:
    # A json written by hand (or imported in an archive) bypasses the catalog's check at creation: the
    # downloader refuses the address itself, before any connection. A listening socket proves it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        for i, host in enumerate((f"127.0.0.1:{port}", f"127.1:{port}", f"loopback.example:{port}")):
            write_model(env.root, f"hand/m{i}", {"source_url": f"http://{host}/m{i}.gguf"})
            resp = await env.http.post(f"/v1/models/hand/m{i}/download")
            if resp.status_code == 202:
                job = resp.json()
                for _ in range(200):
                    if job["phase"] in ("failed", "done", "cancelled"):
                        break
                    await asyncio.sleep(0.05)
                    job = (
                        await env.http.get(
                            f"/v1/models/hand/m{i}/download", headers={"accept": "application/json"}
                        )
                    ).json()
                assert job["phase"] == "failed" and job["error_code"] == "unsafe_url", job
            else:
                assert_error(resp, 400)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected


# --- bodies: bounded --------------------------------------------------------------------------------------


async def test_an_oversized_json_body_is_413_before_it_is_read(env: Env) -> None:
    big = b'{"source_url": "https://models.example/' + b"a" * MAX_BODY + b'.gguf"}'
    for route in ("/v1/models", "/v1/chat/completions", "/v1/embeddings"):
        resp = await env.http.post(route, content=big, headers={"content-type": "application/json"})
        assert_error(resp, 413, "request_too_large")
    assert model_files(env.root) == []


async def test_an_oversized_chunked_body_is_413(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"source_url": "https://models.example/'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"a" * 1024
        yield b'.gguf"}'

    resp = await env.http.post("/v1/models", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "request_too_large")
    assert model_files(env.root) == []


async def test_a_body_just_under_the_bound_is_parsed(env: Env) -> None:
    padding = "a" * (MAX_BODY - 200)
    resp = await env.http.post(
        "/v1/models", json={"source_url": "https://models.example/m.gguf", "description": padding}
    )
    assert resp.status_code == 201, resp.text


async def test_archive_imports_stream_past_the_json_bound(env: Env) -> None:
    binary = b"GGUF" + bytes(range(256)) * (2 * MAX_BODY // 256)
    archive = tar_gz([member("big/big.json", b'{"source_url": "./"}'), member("big/big.gguf", binary)])
    resp = await env.http.post("/v1/folders/import", content=archive)
    assert resp.status_code == 201, resp.text
    assert (env.root / "models" / "big" / "big.gguf").stat().st_size == len(binary)


# --- headers: nothing a client sends can split or break one -------------------------------------------


@pytest.mark.parametrize("folder", ['a"b', "a;b=c", "mod\u00e8le", "x\u0085y", "\u6a21\u578b", "sp ace"])
async def test_export_names_any_folder_in_one_well_formed_header(env: Env, folder: str) -> None:
    write_model(env.root, f"{folder}/m", {"source_url": "https://models.example/m.gguf"})
    answer = await raw_request(
        env.url,
        b"GET /v1/folders/"
        + quote(folder, safe="").encode()
        + b"/export HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 200"), head
    dispositions = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-disposition:")]
    assert len(dispositions) == 1
    value = dispositions[0].split(b":", 1)[1].strip()
    assert all(0x20 <= b < 0x7F for b in value), value  # plain ASCII, no control byte, no raw UTF-8
    assert value.count(b'"') == 2
    assert f"filename*=UTF-8''{quote(folder + '.tar.gz', safe='')}".encode() in value


@pytest.mark.parametrize(
    "injected", ["%0d%0aSet-Cookie:%20a=b", "%0aSet-Cookie:%20a=b", "%0dSet-Cookie:%20a=b"]
)
async def test_cr_lf_in_a_path_never_becomes_a_header(env: Env, injected: str) -> None:
    for path in (
        f"/v1/folders/m{injected}/export",
        f"/v1/models/m{injected}/m",
        f"/v1/models/m/m{injected}/state",
    ):
        resp = await env.http.get(path)
        assert_error(resp, (400, 404))
        assert "set-cookie" not in resp.headers
