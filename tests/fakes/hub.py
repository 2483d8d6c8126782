"""A loopback fake of the Hugging Face Hub and its CDN, for tests: real sockets, real HTTP, no internet.

`FakeHub` runs an aiohttp server in a background thread (its own event loop) on 127.0.0.1 and a free port.
It serves what huggingface_hub reads from the real Hub, with the same shapes and headers:

- `GET /api/models/{org}/{repo}/tree/{rev}[/{dir}]?recursive=true` (HfApi.list_repo_tree): file entries
  `{"type": "file", "oid", "size", "path", "lfs": {"oid", "size", "pointerSize"}}` and `"directory"`
  entries, paginated by a `Link: <...>; rel="next"` header past `page_size` entries.
- `GET /api/models/{org}/{repo}[/revision/{rev}]` (HfApi.model_info): "id", "sha", "siblings" ... and,
  with `?blobs=true`, sizes and LFS records in the siblings.
- `GET|HEAD /{org}/{repo}/resolve/{rev}/{path}` (hf_hub_url / get_hf_file_metadata): LFS files answer
  302 to the CDN with X-Repo-Commit, X-Linked-Etag, X-Linked-Size, ETag, Location; small files are
  served in place with a git-blob ETag.
- `GET|HEAD /cdn/{sha256}`: the content, with byte ranges, If-Range, ETag "<sha256>". With
  `FakeHub(cdn_host="localhost")` the redirect names the CDN by another host name (same server), as the
  real Hub's CDN is another host: huggingface_hub's `hf_hub_download` then reads the file's metadata from
  the redirect itself instead of following it, and works unmodified with `HF_ENDPOINT=hub.url`.
- Plain files (`add_file`) and redirects (`add_redirect`) for generic-URL tests.

Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) and a
JSON `{"error": ...}` body, as huggingface_hub's `hf_raise_for_status` expects. Per-file `Faults` (cut
connections, stalls, ignored ranges, lying digests, error statuses, no Content-Length) can be set at any
time from the test's thread. Large files are described as (size, seed) and produced on the fly.

Counters of file-content bytes sent (`bytes_sent`, `bytes_sent_to(path)`, `reset_counters()`) let a test
assert how much a download moved, e.g. nothing for a file already stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web

MiB = 1024 * 1024
# Body write unit: big writes keep per-chunk Python work negligible (> 1 GB/s over loopback).
WRITE_CHUNK = 4 * MiB
# huggingface_hub uploads files over 10 MB through LFS; *.gguf are LFS through .gitattributes.
LFS_THRESHOLD = 10_000_000
# Generated content repeats with a period that is not a power of two, so a client that writes a block at
# a wrong offset (any multiple of a usual chunk size) produces different bytes and a different sha256.
PATTERN_PERIOD = MiB + 7
COMMIT_DATE = "2024-01-01T00:00:00.000Z"

# What add_repo/add_file take for a file: its bytes, or (size, seed) for generated content.
Content = bytes | tuple[int, int]


@dataclass
class Faults:
    """Misbehaviour for one file (key: its path in the repo, "org/repo/path", or a plain file's route).

    Counters (`cuts_done`, `stalls_done`, `statuses_done`) are updated by the server and can be read by
    tests. Body byte counts (`cut_after`, `stall_at`) are relative to each response's body, not file offsets.
    """

    cut_after: int | None = None  # close the connection after this many body bytes ...
    cut_times: int = 1  # ... in this many responses
    stall_at: int | None = None  # stop sending after this many body bytes ...
    stall_seconds: float = 0.0  # ... for this long (once)
    ignore_range: bool = False  # always 200 with the whole body, no Accept-Ranges
    wrong_digest: bool = False  # every advertised sha256 (listing, X-Linked-Etag, ETag) is another one
    status: int | None = None  # answer every request for the file with this status ...
    status_times: int | None = None  # ... this many times (None: always)
    no_length: bool = False  # chunked transfer, no Content-Length
    rate_bytes_per_s: float | None = None  # pace every response to this (a CDN's per-connection limit)
    cuts_done: int = 0
    stalls_done: int = 0
    statuses_done: int = 0


_patterns: dict[int, bytes] = {}
_patterns_lock = threading.Lock()


def _pattern(seed: int) -> bytes:
    """PATTERN_PERIOD pseudo-random bytes for seed, repeated far enough that any WRITE_CHUNK-long window
    starting inside the first period is one contiguous slice (no copy per chunk)."""
    with _patterns_lock:
        buf = _patterns.get(seed)
        if buf is None:
            period = random.Random(seed).randbytes(PATTERN_PERIOD)
            buf = period * (2 + WRITE_CHUNK // PATTERN_PERIOD)
            _patterns[seed] = buf
        return buf


class _Blob:
    """A file's content: bytes in memory, or generated from a seed (never materialised whole)."""

    def __init__(self, content: Content) -> None:
        self._data: bytes | None
        if isinstance(content, bytes | bytearray | memoryview):
            self._data = bytes(content)
            self.size = len(self._data)
            self._view = memoryview(self._data)
        elif isinstance(content, tuple) and len(content) == 2:
            size, seed = content
            if not isinstance(size, int) or size < 0 or not isinstance(seed, int):
                raise ValueError(f"generated content needs (size >= 0, seed), got {content!r}")
            self._data = None
            self.size = size
            self._view = memoryview(_pattern(seed))
        else:
            raise TypeError(f"content must be bytes or (size, seed), got {type(content).__name__}")
        self._lock = threading.Lock()
        self._sha256 = ""
        self._git_oid = ""

    def view(self, offset: int, length: int) -> memoryview:
        """length (<= WRITE_CHUNK) bytes from offset, without copying."""
        if self._data is not None:
            return self._view[offset : offset + length]
        start = offset % PATTERN_PERIOD
        return self._view[start : start + length]

    def pieces(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """The content [start, end) in views of at most WRITE_CHUNK bytes."""
        end = self.size if end is None else min(end, self.size)
        pos = start
        while pos < end:
            n = min(WRITE_CHUNK, end - pos)
            yield self.view(pos, n)
            pos += n

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(bytes(p) for p in self.pieces(start, end))

    @property
    def sha256(self) -> str:
        # Computed once (seconds for GiB files), under a lock so concurrent askers share the work.
        with self._lock:
            if not self._sha256:
                h = hashlib.sha256()
                for piece in self.pieces():
                    h.update(piece)
                self._sha256 = h.hexdigest()
            return self._sha256

    @property
    def git_oid(self) -> str:
        """git's blob id: sha1 of "blob <size>\\0" + content (the ETag of files stored in git)."""
        with self._lock:
            if not self._git_oid:
                h = hashlib.sha1(f"blob {self.size}\0".encode())
                for piece in self.pieces():
                    h.update(piece)
                self._git_oid = h.hexdigest()
            return self._git_oid


def _lie(sha256: str) -> str:
    """A different, well-formed sha256 standing in for a corrupt digest."""
    return hashlib.sha256(b"wrong digest of " + sha256.encode()).hexdigest()


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class _File:
    path: str
    blob: _Blob
    lfs: bool

    def pointer(self) -> bytes:
        """The Git LFS pointer file git stores in place of the content (its size is "pointerSize")."""
        spec = "version https://git-lfs.github.com/spec/v1"
        return f"{spec}\noid sha256:{self.blob.sha256}\nsize {self.blob.size}\n".encode()

    def oid(self) -> str:
        # For LFS files the tree's "oid" is the pointer's blob id, as in git.
        return _git_blob_id(self.pointer()) if self.lfs else self.blob.git_oid


@dataclass
class _Repo:
    repo_id: str
    revision: str
    commit: str
    gated: bool
    files: dict[str, _File]


@dataclass
class _Plain:
    route: str
    blob: _Blob


class _Cut(Exception):
    """The connection was closed on purpose (a fault) or by the client: stop writing, quietly."""


_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end exclusive) for one "bytes=a-b" / "bytes=a-" / "bytes=-n"; None to ignore the header
    (absent, malformed or several ranges, which RFC 9110 lets a server ignore); "unsatisfiable" for 416."""
    match = _RANGE_RE.match(header or "")
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(size - suffix, 0), size
    start = int(first)
    if last and int(last) < start:
        return None  # "bytes=5-3" is invalid syntax, not an unsatisfiable range
    if start >= size:
        return "unsatisfiable"
    end = int(last) + 1 if last else size
    return start, min(end, size)


class FakeHub:
    """The fake Hub server. Use `with FakeHub() as hub:` or `hub.start()` / `hub.stop()`."""

    def __init__(
        self,
        *,
        token: str = "hf_fake_token",
        page_size: int = 1000,
        host: str = "127.0.0.1",
        cdn_host: str | None = None,
    ) -> None:
        self.token = token  # the one token that opens gated repos ("Authorization: Bearer <token>")
        self.page_size = page_size  # tree entries per page before a Link rel="next"
        self.host = host
        # The host name LFS redirects name (another spelling of the same server, e.g. "localhost");
        # None: the Hub's own.
        self.cdn_host = cdn_host
        self.url = ""  # "http://127.0.0.1:PORT" once started
        self.cdn_url = ""  # where LFS files redirect to: url, or the same port on cdn_host
        self.faults: dict[str, Faults] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.authorizations: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self._lock = threading.Lock()
        self._repos: dict[str, dict[str, _Repo]] = {}
        self._plain: dict[str, _Plain] = {}
        self._redirects: dict[str, tuple[str, int]] = {}
        # sha256 -> LFS files with that content: the CDN is content-addressed. Filled when a digest is
        # first computed (resolve, listing, sha256_of), so large files are hashed only when needed.
        self._cdn: dict[str, list[tuple[_Blob, list[str]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sent_total = 0
        self._sent_by_path: dict[str, int] = {}

    # -----------------------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> FakeHub:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="FakeHub", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    async def _start_server(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # A short shutdown timeout: stalled responses must not hold stop() for aiohttp's default 60 s.
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}"
        self.cdn_url = f"http://{self.cdn_host}:{port}" if self.cdn_host else self.url

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=30)

        async def cancel_leftovers() -> None:
            # Handlers still stalled (fault injection) are cancelled and awaited, not abandoned.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_leftovers(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=30)
        self._thread = None
        self._loop = None
        self._runner = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -----------------------------------------------------------------------------------------------------
    # Content

    def add_repo(
        self, repo_id: str, files: Mapping[str, Content], revision: str = "main", gated: bool = False
    ) -> str:
        """Registers (or replaces) repo_id at revision with files {path: bytes | (size, seed)}; returns the
        commit sha (also accepted as a revision, as on the Hub)."""
        if repo_id.count("/") != 1:
            raise ValueError(f"repo id {repo_id!r} must be 'org/repo'")
        entries: dict[str, _File] = {}
        for path, content in files.items():
            if not path or path.startswith("/") or any(s in ("", ".", "..") for s in path.split("/")):
                raise ValueError(f"bad path in repo: {path!r}")
            blob = _Blob(content)
            lfs = path.lower().endswith(".gguf") or blob.size > LFS_THRESHOLD
            entries[path] = _File(path, blob, lfs)
        identity = json.dumps([repo_id, revision, sorted((p, f.blob.size) for p, f in entries.items())])
        commit = hashlib.sha1(identity.encode()).hexdigest()
        repo = _Repo(repo_id, revision, commit, gated, entries)
        with self._lock:
            self._repos.setdefault(repo_id, {})[revision] = repo
        return commit

    def add_file(self, route: str, content: Content) -> None:
        """Serves content at route (e.g. "/files/x.gguf") like the CDN: ranges, ETag, faults (key: route)."""
        if not route.startswith("/"):
            raise ValueError("route must start with '/'")
        with self._lock:
            self._plain[route] = _Plain(route, _Blob(content))

    def add_redirect(self, route: str, target: str, status: int = 302) -> None:
        """route answers `status` with Location target (made absolute on this server if it starts with /)."""
        with self._lock:
            self._redirects[route] = (target, status)

    def _repo_file(self, repo_id: str, path: str, revision: str = "main") -> _File:
        repo = self._find_repo(repo_id, revision)
        if repo is None or path not in repo.files:
            raise KeyError(f"{repo_id}@{revision}: no file {path!r}")
        return repo.files[path]

    def sha256_of(self, repo_id: str, path: str, revision: str = "main") -> str:
        """The true sha256 of a repo file's content (computed once, cached)."""
        file = self._repo_file(repo_id, path, revision)
        return self._digest(repo_id, file)

    def sha256_of_file(self, route: str) -> str:
        return self._plain[route].blob.sha256

    def bytes_of(self, repo_id: str, path: str, start: int = 0, end: int | None = None) -> bytes:
        """A repo file's content [start, end) (materialised: keep it to small files or small slices)."""
        return self._repo_file(repo_id, path).blob.read(start, end)

    def bytes_of_file(self, route: str, start: int = 0, end: int | None = None) -> bytes:
        return self._plain[route].blob.read(start, end)

    def commit_of(self, repo_id: str, revision: str = "main") -> str:
        repo = self._find_repo(repo_id, revision)
        if repo is None:
            raise KeyError(f"no repo {repo_id}@{revision}")
        return repo.commit

    def _find_repo(self, repo_id: str, revision: str) -> _Repo | None:
        with self._lock:
            revisions = self._repos.get(repo_id, {})
            if revision in revisions:
                return revisions[revision]
            return next((r for r in revisions.values() if r.commit == revision), None)

    def _digest(self, repo_id: str, file: _File) -> str:
        sha = file.blob.sha256
        if file.lfs:
            with self._lock:
                owners = self._cdn.setdefault(sha, [])
                keys = [file.path, f"{repo_id}/{file.path}"]
                if not any(blob is file.blob and k == keys for blob, k in owners):
                    owners.append((file.blob, keys))
        return sha

    async def _adigest(self, repo_id: str, file: _File) -> str:
        # Hashing a large file takes seconds: off the loop, so other requests keep being served.
        return await asyncio.to_thread(self._digest, repo_id, file)

    # -----------------------------------------------------------------------------------------------------
    # Counters

    @property
    def bytes_sent(self) -> int:
        """File-content bytes sent since the hub was made or last `reset_counters()`: bodies of the CDN,
        of files resolved in place and of plain files (handed to the socket; API JSON, errors and headers
        are not counted)."""
        with self._lock:
            return self._sent_total

    def bytes_sent_to(self, path: str) -> int:
        """Content bytes sent in answer to requests for path ("/cdn/<sha256>", "/files/x.gguf",
        "/org/repo/resolve/main/README.md"), since the last reset."""
        with self._lock:
            return self._sent_by_path.get(path, 0)

    def bytes_sent_by_path(self) -> dict[str, int]:
        with self._lock:
            return dict(self._sent_by_path)

    def cdn_path(self, repo_id: str, path: str, revision: str = "main") -> str:
        """The request path an LFS file's bytes are served at (its CDN URL, less the host)."""
        return f"/cdn/{self.sha256_of(repo_id, path, revision)}"

    def reset_counters(self) -> None:
        with self._lock:
            self._sent_total = 0
            self._sent_by_path.clear()

    def _count_sent(self, path: str, n: int) -> None:
        with self._lock:
            self._sent_total += n
            self._sent_by_path[path] = self._sent_by_path.get(path, 0) + n

    # -----------------------------------------------------------------------------------------------------
    # Faults

    def _faults_for(self, keys: list[str]) -> Faults | None:
        for key in keys:
            faults = self.faults.get(key)
            if faults is not None:
                return faults
        return None

    def _claim_status(self, faults: Faults | None) -> int | None:
        if faults is None or faults.status is None:
            return None
        with self._lock:
            if faults.status_times is not None and faults.statuses_done >= faults.status_times:
                return None
            faults.statuses_done += 1
            return faults.status

    # -----------------------------------------------------------------------------------------------------
    # HTTP

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        self.requests.append((request.method, unquote(raw_path), request.headers.get("Range")))
        self.authorizations.append((unquote(raw_path), request.headers.get("Authorization")))
        path = request.path
        with self._lock:
            plain = self._plain.get(path)
            redirect = self._redirects.get(path)
        if redirect is not None:
            target, status = redirect
            location = self.url + target if target.startswith("/") else target
            return web.Response(
                status=status, headers={"Location": location}, text=f"Redirecting to {location}"
            )
        if plain is not None:
            return await self._plain_file(request, plain)
        # Split the raw path before decoding: an encoded '/' (revision "refs%2Fpr%2F1") stays in its segment.
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()
        if len(segments) == 2 and segments[0] == "cdn":
            return await self._cdn_file(request, segments[1])
        if len(segments) >= 4 and segments[:2] == ["api", "models"]:
            repo_id = f"{segments[2]}/{segments[3]}"
            rest = segments[4:]
            if request.method != "GET":
                return web.Response(status=405)
            if not rest:
                return await self._model_info(request, repo_id, "main")
            if len(rest) == 2 and rest[0] == "revision":
                return await self._model_info(request, repo_id, rest[1])
            if len(rest) >= 2 and rest[0] == "tree":
                return await self._tree(request, repo_id, rest[1], "/".join(rest[2:]))
        if len(segments) >= 5 and segments[2] == "resolve":
            return await self._resolve(
                request, f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:])
            )
        return web.Response(status=404, text="Not Found")

    @staticmethod
    def _error(status: int, code: str | None, message: str) -> web.Response:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return web.json_response({"error": message}, status=status, headers=headers)

    def _lookup(self, request: web.Request, repo_id: str, revision: str) -> _Repo | web.Response:
        """The repo at revision, or the error the Hub gives: 404 RepoNotFound / RevisionNotFound, and 401
        GatedRepo (no token) or 401 invalid credentials (another token) for gated repos."""
        with self._lock:
            known = repo_id in self._repos
        if not known:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo = self._find_repo(repo_id, revision)
        if repo is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if repo.gated:
            auth = request.headers.get("Authorization", "")
            if not auth:
                return self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                )
            if auth != f"Bearer {self.token}":
                return self._error(401, None, "Invalid credentials in Authorization header")
        return repo

    async def _entry(self, repo: _Repo, file: _File) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": "", "size": file.blob.size, "path": file.path}
        if file.lfs:
            sha = await self._adigest(repo.repo_id, file)
            faults = self._faults_for([file.path, f"{repo.repo_id}/{file.path}"])
            advertised = _lie(sha) if faults is not None and faults.wrong_digest else sha
            entry["oid"] = _git_blob_id(file.pointer())
            entry["lfs"] = {"oid": advertised, "size": file.blob.size, "pointerSize": len(file.pointer())}
        else:
            entry["oid"] = await asyncio.to_thread(lambda: file.blob.git_oid)
        return entry

    async def _tree(self, request: web.Request, repo_id: str, revision: str, folder: str) -> web.Response:
        found = self._lookup(request, repo_id, revision)
        if isinstance(found, web.Response):
            return found
        repo = found
        recursive = request.query.get("recursive", "false").lower() in ("true", "1")
        prefix = f"{folder}/" if folder else ""
        directories = {
            "/".join(parts[: i + 1])
            for path in repo.files
            for parts in [path.split("/")]
            for i in range(len(parts) - 1)
        }
        if folder and folder not in directories:
            return self._error(404, "EntryNotFound", f'{folder} does not exist on "{revision}"')
        paths = sorted(
            [(p, "directory") for p in directories if p.startswith(prefix)]
            + [(p, "file") for p in repo.files if p.startswith(prefix)]
        )
        if not recursive:
            paths = [(p, kind) for p, kind in paths if "/" not in p[len(prefix) :]]
        try:
            offset = int(base64.urlsafe_b64decode(request.query.get("cursor", "") + "==").decode() or 0)
        except ValueError:
            return self._error(400, None, "Invalid cursor")
        page = paths[offset : offset + self.page_size]
        entries: list[dict[str, Any]] = []
        for path, kind in page:
            if kind == "directory":
                tree_id = hashlib.sha1(f"tree {repo.commit} {path}".encode()).hexdigest()
                entries.append({"type": "directory", "oid": tree_id, "size": 0, "path": path})
            else:
                entries.append(await self._entry(repo, repo.files[path]))
        headers = {}
        if offset + self.page_size < len(paths):
            # Like the Hub: an absolute URL carrying the original query plus an opaque cursor.
            query = {k: v for k, v in request.query.items() if k != "cursor"}
            query["cursor"] = (
                base64.urlsafe_b64encode(str(offset + self.page_size).encode()).decode().rstrip("=")
            )
            next_url = f"{self.url}{request.raw_path.split('?', 1)[0]}?{urlencode(query)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        return web.json_response(entries, headers=headers)

    async def _model_info(self, request: web.Request, repo_id: str, revision: str) -> web.Response:
        # Model info is public for gated repos on the Hub (only files are gated): no token check here.
        with self._lock:
            known = repo_id in self._repos
        if not known:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo = self._find_repo(repo_id, revision)
        if repo is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        blobs = request.query.get("blobs", "").lower() in ("true", "1")
        siblings: list[dict[str, Any]] = []
        for path in sorted(repo.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = await self._entry(repo, repo.files[path])
                sibling["size"] = entry["size"]
                sibling["blobId"] = entry["oid"]
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {
                        "sha256": lfs["oid"],
                        "size": lfs["size"],
                        "pointerSize": lfs["pointerSize"],
                    }
            siblings.append(sibling)
        has_gguf = any(p.lower().endswith(".gguf") for p in repo.files)
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": repo.commit,
            "lastModified": COMMIT_DATE,
            "createdAt": COMMIT_DATE,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"] if has_gguf else [],
            "library_name": "gguf" if has_gguf else None,
            "siblings": siblings,
        }
        return web.json_response(info)

    async def _resolve(
        self, request: web.Request, repo_id: str, revision: str, path: str
    ) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        found = self._lookup(request, repo_id, revision)
        if isinstance(found, web.Response):
            return found
        repo = found
        file = repo.files.get(path)
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        keys = [path, f"{repo_id}/{path}"]
        faults = self._faults_for(keys)
        status = self._claim_status(faults)
        if status is not None:
            return web.Response(status=status, text=f"fault injected: HTTP {status}")
        commit_headers = {"X-Repo-Commit": repo.commit}
        if not file.lfs:
            etag = f'"{await asyncio.to_thread(lambda: file.blob.git_oid)}"'
            return await self._serve(request, file.blob, etag, faults, commit_headers)
        sha = await self._adigest(repo_id, file)
        advertised = _lie(sha) if faults is not None and faults.wrong_digest else sha
        location = f"{self.cdn_url}/cdn/{sha}"
        headers = {
            **commit_headers,
            "Location": location,
            "X-Linked-Etag": f'"{advertised}"',
            "X-Linked-Size": str(file.blob.size),
            "ETag": f'"{advertised}"',
            "Accept-Ranges": "bytes",
        }
        return web.Response(status=302, headers=headers, text=f"Found. Redirecting to {location}")

    async def _cdn_file(self, request: web.Request, sha: str) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        with self._lock:
            owners = list(self._cdn.get(sha.lower(), []))
        if not owners:
            return web.Response(status=404, text="NoSuchKey")
        blob = owners[0][0]
        keys = [key for _, owner_keys in owners for key in owner_keys]
        faults = self._faults_for(keys)
        status = self._claim_status(faults)
        if status is not None:
            return web.Response(status=status, text=f"fault injected: HTTP {status}")
        advertised = _lie(sha) if faults is not None and faults.wrong_digest else sha
        return await self._serve(request, blob, f'"{advertised}"', faults, {})

    async def _plain_file(self, request: web.Request, plain: _Plain) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        faults = self._faults_for([plain.route])
        status = self._claim_status(faults)
        if status is not None:
            return web.Response(status=status, text=f"fault injected: HTTP {status}")
        sha = await asyncio.to_thread(lambda: plain.blob.sha256)
        advertised = _lie(sha) if faults is not None and faults.wrong_digest else sha
        return await self._serve(request, plain.blob, f'"{advertised}"', faults, {})

    async def _serve(
        self,
        request: web.Request,
        blob: _Blob,
        etag: str,
        faults: Faults | None,
        extra_headers: dict[str, str],
    ) -> web.StreamResponse:
        """The body with ranges (206/416), If-Range, and the body faults (cut, stall, no length)."""
        size = blob.size
        start, end, status = 0, size, 200
        headers = {**extra_headers, "ETag": etag, "Content-Type": "application/octet-stream"}
        if faults is None or not faults.ignore_range:
            headers["Accept-Ranges"] = "bytes"
            range_header = request.headers.get("Range", "")
            if_range = request.headers.get("If-Range")
            # If-Range with another validator: the client's bytes are stale, send the whole new content.
            if range_header and (if_range is None or if_range == etag):
                wanted = _parse_range(range_header, size)
                if wanted == "unsatisfiable":
                    headers["Content-Range"] = f"bytes */{size}"
                    return web.Response(status=416, headers=headers)
                if isinstance(wanted, tuple):
                    start, end = wanted
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        no_length = faults is not None and faults.no_length
        if no_length:
            if request.method != "HEAD":
                resp.enable_chunked_encoding()
        else:
            resp.content_length = end - start
        writer = await resp.prepare(request)
        if request.method == "HEAD" or writer is None:
            return resp
        body_len = end - start
        cut_at = stall_at = None
        stall_seconds = 0.0
        if faults is not None:
            with self._lock:
                if (
                    faults.cut_after is not None
                    and faults.cut_after < body_len
                    and faults.cuts_done < faults.cut_times
                ):
                    faults.cuts_done += 1
                    cut_at = faults.cut_after
                if faults.stall_at is not None and faults.stall_at < body_len and faults.stalls_done < 1:
                    faults.stalls_done += 1
                    stall_at, stall_seconds = faults.stall_at, faults.stall_seconds
        rate = faults.rate_bytes_per_s if faults is not None else None
        counted_as = unquote(request.raw_path.split("?", 1)[0])  # as in `requests`
        began = time.monotonic()
        try:
            sent = 0
            while sent < body_len:
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                limit = body_len
                if stall_at is not None:
                    limit = min(limit, stall_at)
                if cut_at is not None:
                    limit = min(limit, cut_at)
                n = min(WRITE_CHUNK, limit - sent)
                if n > 0:
                    # Counted before the await: the client may read the last bytes (and the test look at
                    # the counters) before this coroutine runs again. A write that fails takes it back.
                    self._count_sent(counted_as, n)
                    try:
                        await resp.write(blob.view(start + sent, n))
                    except BaseException:
                        self._count_sent(counted_as, -n)
                        raise
                    sent += n
                    continue
                if cut_at is not None and sent >= cut_at:
                    raise _Cut
                if stall_at is not None and sent >= stall_at:
                    writer.send_headers()  # headers wait for the first body bytes in aiohttp
                    await writer.drain()
                    await asyncio.sleep(stall_seconds)
                    stall_at = None
        except _Cut:
            writer.send_headers()
            transport = request.transport
            if transport is not None:
                # close() (not abort()) flushes what was written, then FINs: the client gets exactly
                # cut_after bytes and then sees the body end early.
                transport.close()
            return resp
        except ConnectionError:
            return resp  # the client went away (a cancelled download): nothing to report
        await resp.write_eof()
        return resp
