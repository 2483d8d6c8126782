"""The FakeHub against the real client users run (huggingface_hub's `hf_hub_download`), and its counters of
bytes sent.

huggingface_hub reads HF_ENDPOINT when it is imported, so each download runs in a subprocess with its own
environment (os.environ of this process is never touched).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # tests/unit has no __init__.py (see test_hf.py)
    sys.path.insert(0, _ROOT)

from tests.fakes import FakeHub, Faults  # noqa: E402

pytest.importorskip("huggingface_hub", reason="huggingface_hub (a dev dependency) is not installed")

MiB = 1024 * 1024
REPO = "org/tiny-GGUF"
GGUF = "tiny.Q4_K_M.gguf"
SIZE = 3 * MiB + 17
DOWNLOAD = """
import json, sys
from huggingface_hub import hf_hub_download
print(json.dumps([hf_hub_download(sys.argv[1], name) for name in sys.argv[2:]]))
"""


@pytest.fixture
def hub(cdn_hub: FakeHub) -> FakeHub:
    # The CDN on another spelling of loopback: the real Hub's CDN is another host, and huggingface_hub
    # follows a redirect to the same host (then lacking the X-Linked-* headers) instead of reading it.
    cdn_hub.add_repo(REPO, {GGUF: (SIZE, 3), "README.md": b"# tiny\n"})
    return cdn_hub


def hf_hub_download(hub: FakeHub, cache: Path, *names: str) -> list[Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no real token, no real cache
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(cache), HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run(
        [sys.executable, "-c", DOWNLOAD, REPO, *names], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [Path(p) for p in json.loads(done.stdout)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hf_hub_download_gets_an_lfs_file_through_the_cdn_redirect(hub: FakeHub, tmp_path: Path) -> None:
    [gguf, readme] = hf_hub_download(hub, tmp_path, GGUF, "README.md")
    assert gguf.stat().st_size == SIZE
    assert sha256(gguf) == hub.sha256_of(REPO, GGUF)
    assert readme.read_bytes() == b"# tiny\n"
    # The metadata came from the Hub's 302 (not followed by the HEAD), the bytes from the CDN.
    cdn = hub.cdn_path(REPO, GGUF)
    assert ("HEAD", f"/{REPO}/resolve/main/{GGUF}", None) in hub.requests
    assert ("HEAD", cdn, None) not in hub.requests
    assert hub.bytes_sent_to(cdn) == SIZE
    assert hub.bytes_sent == SIZE + len(b"# tiny\n")


def test_a_cached_file_moves_no_bytes(hub: FakeHub, tmp_path: Path) -> None:
    hf_hub_download(hub, tmp_path, GGUF)
    hub.reset_counters()
    [again] = hf_hub_download(hub, tmp_path, GGUF)
    assert sha256(again) == hub.sha256_of(REPO, GGUF)
    assert hub.bytes_sent == 0 and hub.bytes_sent_by_path() == {}
    assert hub.requests[-1] == ("HEAD", f"/{REPO}/resolve/main/{GGUF}", None)  # it still asked


def test_the_redirect_names_the_cdn_host(hub: FakeHub) -> None:
    req = urllib.request.Request(f"{hub.url}/{REPO}/resolve/main/{GGUF}", method="HEAD")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.build_opener(NoRedirect).open(req)
    headers = caught.value.headers
    sha = hub.sha256_of(REPO, GGUF)
    assert caught.value.code == 302
    assert hub.cdn_url == hub.url.replace("127.0.0.1", "localhost") != hub.url
    assert headers["Location"] == f"{hub.cdn_url}/cdn/{sha}"
    assert headers["X-Linked-Etag"] == f'"{sha}"' and headers["X-Linked-Size"] == str(SIZE)


# ---------------------------------------------------------------------------------------------------------
# Byte counters


def get(url: str, range_: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Range": range_} if range_ else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()  # type: ignore[no-any-return]


def test_counters_count_content_bytes_per_path_and_reset(hub: FakeHub) -> None:
    hub.add_file("/files/a.bin", b"0123456789" * 1000)
    assert hub.bytes_sent == 0
    assert get(f"{hub.url}/files/a.bin", "bytes=100-199") == (b"0123456789" * 10)
    urllib.request.urlopen(urllib.request.Request(f"{hub.url}/files/a.bin", method="HEAD")).close()
    get(f"{hub.url}/api/models/{REPO}")  # API JSON is not file content
    assert hub.bytes_sent == 100 and hub.bytes_sent_to("/files/a.bin") == 100
    cdn = hub.cdn_path(REPO, GGUF)
    assert len(get(f"{hub.url}/{REPO}/resolve/main/{GGUF}")) == SIZE  # through the redirect
    assert hub.bytes_sent_by_path() == {"/files/a.bin": 100, cdn: SIZE}
    hub.reset_counters()
    assert hub.bytes_sent == 0 and hub.bytes_sent_to(cdn) == 0 and hub.bytes_sent_by_path() == {}
    get(f"{hub.url}/files/a.bin")
    assert hub.bytes_sent == 10_000


def test_a_cut_connection_counts_what_was_sent(hub: FakeHub) -> None:
    hub.faults[f"{REPO}/{GGUF}"] = Faults(cut_after=MiB + 3)
    with pytest.raises(http.client.IncompleteRead):
        get(f"{hub.url}/{REPO}/resolve/main/{GGUF}")
    assert hub.bytes_sent == MiB + 3


def test_counters_are_exact_under_concurrent_downloads(hub: FakeHub) -> None:
    url = f"{hub.url}/{REPO}/resolve/main/{GGUF}"
    ranges = [f"bytes={i * MiB}-{i * MiB + 999}" for i in range(3)] + [None] * 3
    errors: list[BaseException] = []

    def fetch(range_: str | None) -> None:
        try:
            get(url, range_)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(r,)) for r in ranges]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert hub.bytes_sent == 3 * 1000 + 3 * SIZE == hub.bytes_sent_to(hub.cdn_path(REPO, GGUF))
