"""Tests for services.downloader.hf (repo URLs, listing, import plans) and for the FakeHub they run against.

Everything talks to tests.fakes.FakeHub over loopback: nothing here reaches the internet.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.downloader.hf import (
    HubError,
    HubFile,
    RepoRef,
    list_repo_files,
    parse_repo_url,
    plan_models,
    quantization_of,
    resolve_url,
)

# tests/unit has no __init__.py, so `pytest` (unlike `python -m pytest`) puts only this folder on sys.path;
# the fakes live in the `tests` package at the repository root.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.fakes import FakeHub, Faults  # noqa: E402

MiB = 1024 * 1024
EP = "https://huggingface.co"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# ---------------------------------------------------------------------------------------------------------
# parse_repo_url / resolve_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://huggingface.co/TheBloke/zephyr-7B-beta-GGUF", RepoRef("TheBloke", "zephyr-7B-beta-GGUF")),
        ("https://huggingface.co/TheBloke/zephyr-7B-beta-GGUF/", RepoRef("TheBloke", "zephyr-7B-beta-GGUF")),
        ("https://hf.co/org/repo", RepoRef("org", "repo")),
        ("https://www.huggingface.co/org/repo?x=1#readme", RepoRef("org", "repo")),
        ("http://huggingface.co/org/repo", RepoRef("org", "repo")),
        ("huggingface.co/org/repo", RepoRef("org", "repo")),
        ("org/repo", RepoRef("org", "repo")),
        ("  org/re.po_1-x  ", RepoRef("org", "re.po_1-x")),
        ("https://huggingface.co/org/repo/tree/dev", RepoRef("org", "repo", "dev")),
        ("https://huggingface.co/org/repo/tree/main/Q4_K_M", RepoRef("org", "repo", "main")),
        ("https://huggingface.co/org/repo/tree/refs%2Fpr%2F3", RepoRef("org", "repo", "refs/pr/3")),
        (
            "https://huggingface.co/TheBloke/zephyr-7B-beta-GGUF/blob/main/zephyr-7b-beta.Q4_K_M.gguf",
            RepoRef("TheBloke", "zephyr-7B-beta-GGUF", "main"),
        ),
        (
            "https://huggingface.co/org/repo/resolve/a1b2c3/sub/x.gguf?download=true",
            RepoRef("org", "repo", "a1b2c3"),
        ),
    ],
)
def test_parse_repo_url_accepts(url: str, expected: RepoRef) -> None:
    assert parse_repo_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "gpt2",
        "https://huggingface.co/gpt2",
        "https://huggingface.co/datasets/org/repo",
        "https://huggingface.co/spaces/org/repo",
        "https://huggingface.co/api/models/org/repo",
        "https://example.com/org/repo",
        "https://huggingface.co.evil.com/org/repo",
        "https://user:pw@huggingface.co/org/repo",
        "https://huggingface.co:8443/org/repo",
        "ftp://huggingface.co/org/repo",
        "https://huggingface.co/org/repo/discussions/1",
        "https://huggingface.co/org/repo/blob/main",
        "https://huggingface.co/org/repo/tree",
        "org/re po",
        "org/-repo",
        "org/repo.",
        "org/re..po",
        "o--rg/repo",
        "org/repo.git",
        "../etc/passwd",
    ],
)
def test_parse_repo_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_repo_url(url)


def test_resolve_url_quotes_path_segments_and_revision() -> None:
    ref = RepoRef("org", "repo", "refs/pr/1")
    assert resolve_url(EP + "/", ref, "Q4 K/a#b?c%.gguf") == (
        "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F1/Q4%20K/a%23b%3Fc%25.gguf"
    )
    assert resolve_url(EP, RepoRef("o", "r"), "x.gguf") == "https://huggingface.co/o/r/resolve/main/x.gguf"
    assert resolve_url(EP, RepoRef("o", "r"), "é.gguf").endswith("/resolve/main/%C3%A9.gguf")


# ---------------------------------------------------------------------------------------------------------
# list_repo_files


async def test_list_repo_files_follows_link_pagination(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.page_size = 2
    hub.add_repo(
        "org/split",
        {
            "README.md": b"# hi",
            ".gitattributes": b"*.gguf filter=lfs",
            "Q4_K_M/x-00001-of-00002.gguf": b"part1",
            "Q4_K_M/x-00002-of-00002.gguf": b"part2",
            "big.bin": (11_000_000, 3),
        },
    )
    files = await list_repo_files(session, hub.url, RepoRef("org", "split"))
    by_path = {f.path: f for f in files}
    assert set(by_path) == {
        "README.md",
        ".gitattributes",
        "Q4_K_M/x-00001-of-00002.gguf",
        "Q4_K_M/x-00002-of-00002.gguf",
        "big.bin",
    }
    assert by_path["README.md"] == HubFile("README.md", 4, "")  # in git, not LFS: no sha256
    part = by_path["Q4_K_M/x-00001-of-00002.gguf"]
    assert part.size == 5 and part.sha256 == hashlib.sha256(b"part1").hexdigest()
    assert by_path["big.bin"].sha256 == hub.sha256_of("org/split", "big.bin")  # > 10 MB: LFS
    pages = [r for r in hub.requests if r[1] == "/api/models/org/split/tree/main"]
    assert len(pages) == 3  # 5 files + 1 directory entry, 2 per page


async def test_list_repo_files_gated_needs_token(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.token = "hf_secret"
    hub.add_repo("meta/gated", {"m.Q4_K_M.gguf": b"weights"}, gated=True)
    ref = RepoRef("meta", "gated")
    for token in ("", "hf_wrong"):
        with pytest.raises(HubError) as err:
            await list_repo_files(session, hub.url, ref, token=token)
        assert err.value.code == "hf_gated" and err.value.status == 401
        assert "HF_TOKEN" in err.value.message
    files = await list_repo_files(session, hub.url, ref, token="hf_secret")
    assert [f.path for f in files] == ["m.Q4_K_M.gguf"]


async def test_list_repo_files_errors(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_repo("org/repo", {"a.gguf": b"a"})
    with pytest.raises(HubError) as err:
        await list_repo_files(session, hub.url, RepoRef("org", "missing"))
    assert err.value.code == "hf_repo_not_found" and err.value.status == 404
    with pytest.raises(HubError) as err:
        await list_repo_files(session, hub.url, RepoRef("org", "repo", "nope"))
    assert err.value.code == "hf_revision_not_found"
    # A plain route shadowing a tree URL stands in for a Hub that fails or answers garbage.
    hub.add_file("/api/models/org/broken/tree/main", b"[]")
    hub.faults["/api/models/org/broken/tree/main"] = Faults(status=503)
    with pytest.raises(HubError) as err:
        await list_repo_files(session, hub.url, RepoRef("org", "broken"))
    assert err.value.code == "hf_error" and err.value.status == 503
    hub.add_file("/api/models/org/garbage/tree/main", b"<html>")
    with pytest.raises(HubError) as err:
        await list_repo_files(session, hub.url, RepoRef("org", "garbage"))
    assert err.value.code == "hf_error"


async def test_list_repo_files_refuses_next_page_on_another_host(session: aiohttp.ClientSession) -> None:
    async def tree(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer hf_tok"
        link = '<http://203.0.113.9/api/models/o/r/tree/main?cursor=x>; rel="next"'
        return web.json_response([], headers={"Link": link})

    app = web.Application()
    app.router.add_get("/api/models/o/r/tree/main", tree)
    async with TestServer(app, host="127.0.0.1") as server:
        with pytest.raises(HubError, match="leaves"):
            await list_repo_files(session, str(server.make_url("")), RepoRef("o", "r"), token="hf_tok")


# ---------------------------------------------------------------------------------------------------------
# plan_models


def _f(path: str, size: int = 100, sha: str | None = None) -> HubFile:
    return HubFile(path, size, hashlib.sha256(path.encode()).hexdigest() if sha is None else sha)


THEBLOKE_QUANTS = ["Q2_K", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q4_0", "Q4_K_M", "Q4_K_S"]
THEBLOKE_QUANTS += ["Q5_0", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0"]


def test_plan_thebloke_repo() -> None:
    ref = RepoRef("TheBloke", "zephyr-7B-beta-GGUF")
    files = [_f(f"zephyr-7b-beta.{q}.gguf", 1000 + i) for i, q in enumerate(THEBLOKE_QUANTS)]
    files += [HubFile("README.md", 50, ""), HubFile("config.json", 30, ""), HubFile(".gitattributes", 9, "")]
    models = plan_models(EP, ref, files)
    assert [m.quantization for m in models] == sorted(THEBLOKE_QUANTS)
    assert [m.stem for m in models] == [f"zephyr-7b-beta.{q}" for q in sorted(THEBLOKE_QUANTS)]
    q4 = next(m for m in models if m.quantization == "Q4_K_M")
    assert q4.name == "zephyr-7B-beta Q4_K_M"
    assert len(q4.binaries) == 1
    binary = q4.binaries[0]
    assert binary.name == "zephyr-7b-beta.Q4_K_M.gguf"
    assert binary.url == f"{EP}/TheBloke/zephyr-7B-beta-GGUF/resolve/main/zephyr-7b-beta.Q4_K_M.gguf"
    assert binary.sha256 == hashlib.sha256(b"zephyr-7b-beta.Q4_K_M.gguf").hexdigest()
    assert q4.size == binary.size == 1000 + THEBLOKE_QUANTS.index("Q4_K_M")


def test_plan_split_repo_groups_parts_and_skips_incomplete() -> None:
    ref = RepoRef("org", "big-GGUF", "v2")
    files = [
        _f("Q4_K_M/x-00002-of-00002.gguf", 20),
        _f("Q4_K_M/x-00001-of-00002.gguf", 10),
        _f("Q5_K_M/x-00001-of-00003.gguf", 10),  # part 2 is missing: skipped
        _f("Q5_K_M/x-00003-of-00003.gguf", 10),
        _f("Q8_0/big-Q8_0-00001-of-00002.gguf", 30),
        _f("Q8_0/big-Q8_0-00002-of-00002.gguf", 40),
        HubFile("README.md", 10, ""),
    ]
    models = plan_models(EP, ref, files)
    assert [(m.stem, m.quantization, m.size) for m in models] == [
        ("Q4_K_M-x", "Q4_K_M", 30),
        ("big-Q8_0", "Q8_0", 70),
    ]
    q4 = models[0]
    assert [b.name for b in q4.binaries] == ["x-00001-of-00002.gguf", "x-00002-of-00002.gguf"]
    assert q4.binaries[0].url == f"{EP}/org/big-GGUF/resolve/v2/Q4_K_M/x-00001-of-00002.gguf"
    assert [b.name for b in models[1].binaries] == [
        "big-Q8_0-00001-of-00002.gguf",
        "big-Q8_0-00002-of-00002.gguf",
    ]


def test_plan_llava_repo_attaches_mmproj_to_every_model() -> None:
    ref = RepoRef("mys", "ggml_llava-v1.5-7b")
    files = [
        _f("ggml-model-q4_k.gguf", 4000),
        _f("ggml-model-q5_k.gguf", 5000),
        _f("ggml-model-f16.gguf", 14000),
        _f("mmproj-model-f16.gguf", 600),
        HubFile("README.md", 10, ""),
    ]
    models = plan_models(EP, ref, files)
    assert [(m.stem, m.quantization, m.size) for m in models] == [
        ("ggml-model-f16", "F16", 14600),
        ("ggml-model-q4_k", "Q4_K", 4600),
        ("ggml-model-q5_k", "Q5_K", 5600),
    ]
    for m in models:
        assert [b.name for b in m.binaries][1:] == ["mmproj-model-f16.gguf"]
        assert m.binaries[1].url.endswith("/resolve/main/mmproj-model-f16.gguf")
    assert models[1].name == "ggml_llava-v1.5-7b Q4_K"


def test_plan_name_collisions_prefix_the_subfolder() -> None:
    ref = RepoRef("org", "repo")
    files = [
        _f("Q4_K_M/model-00001-of-00002.gguf"),
        _f("Q4_K_M/model-00002-of-00002.gguf"),
        _f("Q5_K_M/model-00001-of-00002.gguf"),
        _f("Q5_K_M/model-00002-of-00002.gguf"),
        _f("a/m.Q6_K.gguf"),
        _f("b/m.Q6_K.gguf"),
        _f("a/mmproj-f16.gguf"),
        _f("b/mmproj-f16.gguf"),
    ]
    models = plan_models(EP, ref, files)
    assert [m.stem for m in models] == ["Q4_K_M-model", "Q5_K_M-model", "a-m.Q6_K", "b-m.Q6_K"]
    assert [b.name for b in models[0].binaries] == [
        "Q4_K_M-model-00001-of-00002.gguf",
        "Q4_K_M-model-00002-of-00002.gguf",
        "a-mmproj-f16.gguf",
        "b-mmproj-f16.gguf",
    ]
    assert models[2].binaries[0].name == "a-m.Q6_K.gguf"
    all_names = [b.name.lower() for m in models for b in m.binaries[:-2]]
    assert len(all_names) == len(set(all_names))


def test_plan_edge_cases() -> None:
    ref = RepoRef("o", "r")
    assert plan_models(EP, ref, [HubFile("README.md", 1, ""), _f("model.safetensors")]) == []
    assert plan_models(EP, ref, [_f("mmproj-only.gguf")]) == []
    models = plan_models(
        EP, ref, [_f("Weird Name (1).Q4_K_M.GGUF"), _f("plain.gguf"), _f(".hidden.Q8_0.gguf")]
    )
    assert [(m.stem, m.quantization) for m in models] == [
        ("Weird_Name__1_.Q4_K_M", "Q4_K_M"),
        ("hidden.Q8_0", "Q8_0"),
        ("plain", ""),
    ]
    assert models[0].binaries[0].name == "Weird_Name__1_.Q4_K_M.GGUF"
    assert models[0].binaries[0].url.endswith("/Weird%20Name%20%281%29.Q4_K_M.GGUF")
    assert models[2].name == "plain"


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("zephyr-7b-beta.Q4_K_M", "Q4_K_M"),
        ("Meta-Llama-3-8B-Instruct-IQ3_XXS", "IQ3_XXS"),
        ("qwen2.5-7b-instruct-q4_k_m", "Q4_K_M"),
        ("Llama-3.2-1B-Instruct-UD-Q4_K_XL", "Q4_K_XL"),
        ("gemma-2b.Q4_0_4_4", "Q4_0_4_4"),
        ("model-bf16", "BF16"),
        ("ggml-model-f32", "F32"),
        ("model_Q5_K_S_imatrix", "Q5_K_S"),
        ("phi-2.Q8_0", "Q8_0"),
        ("llama-2-7b", ""),
        ("Qwen2-7B", ""),
        ("modelQ4_K_M", ""),
    ],
)
def test_quantization_of(name: str, tag: str) -> None:
    assert quantization_of(name) == tag


# ---------------------------------------------------------------------------------------------------------
# FakeHub itself


async def test_fake_resolve_redirects_to_cdn_with_linked_etag(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    size = 3 * MiB + 123
    commit = hub.add_repo("o/r", {"m.Q4_K_M.gguf": (size, 7), "README.md": b"readme"})
    url = f"{hub.url}/o/r/resolve/main/m.Q4_K_M.gguf"
    async with session.head(url, allow_redirects=False) as resp:
        assert resp.status == 302
        linked = resp.headers["X-Linked-Etag"].strip('"')
        assert resp.headers["X-Linked-Size"] == str(size)
        assert resp.headers["X-Repo-Commit"] == commit
        assert resp.headers["ETag"] == f'"{linked}"'
        assert resp.headers["Location"] == f"{hub.url}/cdn/{linked}"
    async with session.get(url) as resp:
        assert resp.status == 200 and resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"] == f'"{linked}"'
        assert int(resp.headers["Content-Length"]) == size
        body = await resp.read()
    assert hashlib.sha256(body).hexdigest() == linked == hub.sha256_of("o/r", "m.Q4_K_M.gguf")
    assert body == hub.bytes_of("o/r", "m.Q4_K_M.gguf")
    # Small git files are served in place with a git blob ETag.
    async with session.get(f"{hub.url}/o/r/resolve/{commit}/README.md", allow_redirects=False) as resp:
        assert resp.status == 200 and await resp.read() == b"readme"
        assert resp.headers["ETag"] == f'"{hashlib.sha1(b"blob 6" + bytes(1) + b"readme").hexdigest()}"'
    async with session.get(f"{hub.url}/o/r/resolve/main/nope.gguf") as resp:
        assert resp.status == 404 and resp.headers["X-Error-Code"] == "EntryNotFound"
    async with session.get(f"{hub.url}/o/missing/resolve/main/x.gguf") as resp:
        assert resp.status == 404 and resp.headers["X-Error-Code"] == "RepoNotFound"
        assert "error" in await resp.json()


async def test_fake_model_info_and_tree_shapes(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    commit = hub.add_repo("o/r", {"sub/m.gguf": b"gg", "README.md": b"r"}, gated=True)
    async with session.get(f"{hub.url}/api/models/o/r", params={"blobs": "true"}) as resp:
        info = await resp.json()
    assert info["id"] == "o/r" and info["sha"] == commit and info["gated"] == "manual"
    lfs = next(s for s in info["siblings"] if s["rfilename"] == "sub/m.gguf")["lfs"]
    assert (
        lfs["sha256"] == hashlib.sha256(b"gg").hexdigest() and lfs["size"] == 2 and lfs["pointerSize"] > 100
    )
    async with session.get(f"{hub.url}/api/models/o/r/tree/main") as resp:
        assert resp.status == 401 and resp.headers["X-Error-Code"] == "GatedRepo"
    headers = {"Authorization": f"Bearer {hub.token}"}
    async with session.get(f"{hub.url}/api/models/o/r/tree/main?recursive=true", headers=headers) as resp:
        tree = await resp.json()
    assert [(e["type"], e["path"]) for e in tree] == [
        ("file", "README.md"),
        ("directory", "sub"),
        ("file", "sub/m.gguf"),
    ]
    async with session.get(f"{hub.url}/api/models/o/r/tree/main", headers=headers) as resp:
        assert [e["path"] for e in await resp.json()] == ["README.md", "sub"]  # not recursive


async def test_fake_ranges(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_file("/files/x.gguf", (2 * MiB, 1))
    url = f"{hub.url}/files/x.gguf"
    expected = hub.bytes_of_file("/files/x.gguf")
    async with session.get(url, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 10-19/{2 * MiB}"
        assert await resp.read() == expected[10:20]
    async with session.get(url, headers={"Range": f"bytes={MiB}-"}) as resp:
        assert resp.status == 206 and await resp.read() == expected[MiB:]
    async with session.get(url, headers={"Range": "bytes=-5"}) as resp:
        assert resp.status == 206 and await resp.read() == expected[-5:]
    async with session.get(url, headers={"Range": f"bytes={2 * MiB}-"}) as resp:
        assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{2 * MiB}"
    async with session.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}) as resp:
        assert resp.status == 200 and len(await resp.read()) == 2 * MiB
    etag = f'"{hub.sha256_of_file("/files/x.gguf")}"'
    async with session.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}) as resp:
        assert resp.status == 206
    hub.add_redirect("/r/a", "/files/x.gguf")
    async with session.get(f"{hub.url}/r/a", headers={"Range": "bytes=5-6"}) as resp:
        assert resp.status == 206 and await resp.read() == expected[5:7]
    assert ("GET", "/files/x.gguf", "bytes=5-6") in hub.requests


async def test_fake_cut_after(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_repo("o/r", {"m.gguf": (MiB, 2)})
    hub.faults["m.gguf"] = faults = Faults(cut_after=1000)
    url = f"{hub.url}/o/r/resolve/main/m.gguf"
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.get(url) as resp:
            async for chunk in resp.content.iter_any():
                got += chunk
    assert len(got) == 1000 and bytes(got) == hub.bytes_of("o/r", "m.gguf", 0, 1000)
    assert faults.cuts_done == 1
    async with session.get(url) as resp:  # cut_times=1: the next response is whole
        assert len(await resp.read()) == MiB


async def test_fake_stall(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_file("/files/s.bin", b"z" * 10_000)
    hub.faults["/files/s.bin"] = Faults(stall_at=5000, stall_seconds=0.6)
    start = time.monotonic()
    async with session.get(f"{hub.url}/files/s.bin") as resp:
        first = await resp.content.readexactly(5000)
        assert time.monotonic() - start < 0.5  # the bytes before the stall arrive at once
        rest = await resp.read()
    assert 0.55 < time.monotonic() - start < 5
    assert first + rest == b"z" * 10_000
    start = time.monotonic()
    async with session.get(f"{hub.url}/files/s.bin") as resp:
        await resp.read()
    assert time.monotonic() - start < 0.5  # once only


async def test_fake_ignore_range_wrong_digest_status_and_no_length(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    hub.add_repo("o/r", {"m.gguf": b"0123456789"})
    sha = hub.sha256_of("o/r", "m.gguf")
    url = f"{hub.url}/o/r/resolve/main/m.gguf"

    hub.faults["m.gguf"] = Faults(ignore_range=True)
    async with session.get(url, headers={"Range": "bytes=2-3"}) as resp:
        assert resp.status == 200 and "Accept-Ranges" not in resp.headers
        assert await resp.read() == b"0123456789"

    hub.faults["o/r/m.gguf"] = Faults(wrong_digest=True)  # "org/repo/path" keys work too
    del hub.faults["m.gguf"]
    async with session.get(url) as resp:
        assert await resp.read() == b"0123456789"
        assert resp.headers["ETag"].strip('"') != sha
        assert resp.history[0].headers["X-Linked-Etag"].strip('"') != sha
    files = await list_repo_files(session, hub.url, RepoRef("o", "r"))
    assert files[0].sha256 != sha and len(files[0].sha256) == 64

    hub.faults["o/r/m.gguf"] = Faults(status=503, status_times=2)
    statuses = []
    for _ in range(3):
        async with session.get(url) as resp:
            statuses.append(resp.status)
    assert statuses == [503, 503, 200]

    hub.faults["o/r/m.gguf"] = Faults(no_length=True)
    async with session.get(url) as resp:
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == b"0123456789"


async def test_fake_stops_promptly_with_a_stalled_response(session: aiohttp.ClientSession) -> None:
    fake = FakeHub().start()
    fake.add_file("/files/slow.bin", b"s" * 1000)
    fake.faults["/files/slow.bin"] = Faults(stall_at=10, stall_seconds=30)
    resp = await session.get(f"{fake.url}/files/slow.bin")
    await resp.content.readexactly(10)
    start = time.monotonic()
    await asyncio.to_thread(fake.stop)
    assert time.monotonic() - start < 5
    with pytest.raises(aiohttp.ClientError):
        await resp.read()
    resp.release()
