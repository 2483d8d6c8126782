"""Fetching one file over HTTP(S) into a hidden partial file: resumable, verified, over several ranged
connections when the server allows it.

The partial file has a sidecar (`<partial>.json`) recording the URL, the validator (ETag) and how much
of each segment is on disk, so a dropped connection, a stall, or a restart of the process continues
where it stopped. Each connection runs in a thread of its own (`httpconn`: blocking reads straight into
the sink's buffers) and hands its blocks to the `Sink`, which writes them and computes the sha256 of the
contiguous prefix while bytes arrive, so verification costs no second pass. Every URL (each redirect
included) goes through `netsafety.check_source_url`, and connections go only to the addresses that
check returned: no request reaches an address the settings do not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from services.common import netsafety
from services.common.filesafety import remove_written, write_atomic
from services.downloader.httpconn import Stopped, TooManyRedirects, Transfer, UnsafeURL
from services.downloader.sink import Segment, Sink

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

T = TypeVar("T")
USER_AGENT = "jan-models-downloader"
PROGRESS_EVERY_S = 0.1


class FetchError(Exception):
    """A download that cannot go on. `code` is stable (http_error, digest_mismatch, too_large ...)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class FetchOptions:
    connections: int = 4
    min_split_bytes: int = 64 * 1024 * 1024
    chunk_bytes: int = 1024 * 1024
    stall_timeout_s: float = 30.0
    connect_timeout_s: float = 30.0
    retries: int = 8
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_file_bytes: int = 512 * 1024**3
    allow_private_networks: bool = False


@dataclass
class Sidecar:
    """What is on disk of a partial download, persisted beside it."""

    url: str
    total: int  # -1 while unknown
    validator: str  # ETag or Last-Modified of the resource the bytes came from
    segments: list[Segment] = field(default_factory=list)

    def save(self, path: Path) -> None:
        write_atomic(path, orjson.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Sidecar | None:
        try:
            raw = orjson.loads(path.read_bytes())
            return cls(
                url=raw["url"],
                total=int(raw["total"]),
                validator=raw["validator"],
                segments=[Segment(**s) for s in raw["segments"]],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class FetchResult:
    size: int
    sha256: str


def sidecar_of(partial: Path) -> Path:
    """Where a partial file's sidecar (what is done of it, against which validator) is kept."""
    return partial.with_name(partial.name + ".json")


def make_session(
    options: FetchOptions, resolver: netsafety.Resolver = netsafety.default_resolver
) -> aiohttp.ClientSession:
    """The session for the Hub's API (listing repositories); the files' bytes go through `httpconn`."""
    import aiohttp

    from services.common.safehttp import safe_session

    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=options.connect_timeout_s, sock_read=options.stall_timeout_s
    )
    return safe_session(
        options.allow_private_networks, resolver, timeout=timeout, limit=64, auto_decompress=False
    )


@dataclass
class _Probe:
    url: str  # final URL after redirects
    status: int
    total: int  # -1 unknown
    ranges: bool
    validator: str
    linked_sha256: str  # Hugging Face's X-Linked-Etag on the first hop


def _sha_from_etag(value: str) -> str:
    value = value.strip().removeprefix("W/").strip('"').lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else ""


class Fetcher:
    """Downloads URLs into partial files with the options given; one instance per service."""

    def __init__(self, options: FetchOptions, resolver: netsafety.Resolver) -> None:
        self.options = options
        self.resolver = resolver

    def _open(self, transfer: Transfer, url: str, headers: dict[str, str], auth: dict[str, str]) -> Any:
        try:
            return transfer.open(
                url,
                {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers},
                auth,
                allow_private=self.options.allow_private_networks,
                resolver=self.resolver,
                connect_timeout=self.options.connect_timeout_s,
                read_timeout=self.options.stall_timeout_s,
            )
        except UnsafeURL as exc:
            raise FetchError("unsafe_url", str(exc)) from None
        except TooManyRedirects as exc:
            raise FetchError("too_many_redirects", str(exc)) from None

    def _probe(self, url: str, auth: dict[str, str], transfer: Transfer) -> _Probe:
        """A one-byte ranged GET: the final URL, the size, whether ranges work, the validator and the
        digest Hugging Face announces on the first hop."""
        try:
            resp = self._open(transfer, url, {"Range": "bytes=0-0"}, auth)
            _raise_for_status(resp.status, url)
            first = transfer.first_headers
            linked = _sha_from_etag(first.get("X-Linked-Etag", "") if first is not None else "")
            validator = resp.getheader("ETag") or resp.getheader("Last-Modified") or ""
            if resp.status == 206:
                total = _total_from_content_range(resp.getheader("Content-Range", ""))
                return _Probe(transfer.url, 206, total, total >= 0, validator, linked)
            length = resp.getheader("Content-Length")
            return _Probe(
                transfer.url,
                resp.status,
                int(length) if length and length.isdigit() else -1,
                False,
                validator,
                linked,
            )
        finally:
            transfer.close()

    async def fetch(
        self,
        url: str,
        partial: Path,
        *,
        expected_sha256: str = "",
        expected_size: int = 0,
        auth: dict[str, str] | None = None,
        progress: Callable[[int, int], None] = lambda done, total: None,
        on_sha256_known: Callable[[str], None] = lambda sha: None,
    ) -> FetchResult:
        """Downloads `url` into `partial` (resuming what is there), verifies it, returns size and sha256.
        On a digest mismatch the bad bytes are removed."""
        auth = auth or {}
        sidecar_path = sidecar_of(partial)
        attempts = 0
        moved = False
        high_water = -1

        def tracked(done: int, total: int) -> None:
            nonlocal moved, high_water
            if done > high_water >= 0:
                moved = True
            high_water = max(high_water, done)
            progress(done, total)

        while True:
            moved = False
            try:
                return await self._fetch_once(
                    url, partial, sidecar_path, expected_sha256, expected_size, auth, tracked, on_sha256_known
                )
            except FetchError as exc:
                if not exc.retryable:
                    raise
                err: Exception = exc
            except (http.client.HTTPException, TimeoutError, OSError) as exc:
                err = exc
            # Only attempts that made no progress count towards giving up.
            attempts = 1 if moved else attempts + 1
            if attempts > self.options.retries:
                raise FetchError("network_error", f"giving up after {attempts} attempts: {_describe(err)}")
            delay = min(self.options.backoff_max_s, self.options.backoff_initial_s * 2 ** (attempts - 1))
            delay *= 0.5 + random.random() / 2
            log.warning("download of %s interrupted (%s); retrying in %.1f s", url, _describe(err), delay)
            await asyncio.sleep(delay)

    async def _fetch_once(
        self,
        url: str,
        partial: Path,
        sidecar_path: Path,
        expected_sha256: str,
        expected_size: int,
        auth: dict[str, str],
        progress: Callable[[int, int], None],
        on_sha256_known: Callable[[str], None],
    ) -> FetchResult:
        probe_transfer = Transfer()
        probe = await _in_thread(lambda: self._probe(url, auth, probe_transfer), probe_transfer)
        expected = expected_sha256.lower() or probe.linked_sha256
        if expected:
            on_sha256_known(expected)
        total = probe.total
        if expected_size and total >= 0 and expected_size != total:
            raise FetchError(
                "size_mismatch", f"{url} is {total} bytes, the model object says {expected_size}"
            )
        if total > self.options.max_file_bytes or expected_size > self.options.max_file_bytes:
            raise FetchError(
                "too_large", f"{url} is larger than the size cap ({self.options.max_file_bytes} bytes)"
            )

        sidecar = Sidecar.load(sidecar_path)
        usable = (
            sidecar is not None
            and probe.ranges
            and partial.exists()
            and sidecar.total == total
            and sidecar.validator == probe.validator
        )
        if not usable:
            sidecar = Sidecar(
                url=url, total=total, validator=probe.validator, segments=self._plan(total, probe.ranges)
            )
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        assert sidecar is not None
        sidecar.save(sidecar_path)

        def on_written() -> None:
            progress(sum(s.done for s in sidecar.segments), total)

        async def keep_saving() -> None:
            # What the sidecar records is what a restart keeps: a crash loses at most this much time.
            saved = -1
            while True:
                await asyncio.sleep(0.5)
                done = sum(s.done for s in sidecar.segments)
                if done != saved:
                    await asyncio.to_thread(sidecar.save, sidecar_path)
                    saved = done

        sink = Sink(partial, sidecar.segments, self.options.chunk_bytes)
        saver = asyncio.create_task(keep_saving())
        try:
            progress(sum(s.done for s in sidecar.segments), total)
            pending = [s for s in sidecar.segments if s.remaining != 0]
            await all_or_first_error(
                [self._fetch_segment(probe, s, sink, auth, on_written, ranged=probe.ranges) for s in pending]
            )
            size, sha = await asyncio.to_thread(sink.finish)
        finally:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            await asyncio.shield(asyncio.to_thread(sink.close))  # stops the hasher, off the loop
            sidecar.save(sidecar_path)
        if total >= 0 and size != total:
            raise FetchError("incomplete", f"got {size} of {total} bytes", retryable=True)
        if size > self.options.max_file_bytes:
            raise FetchError("too_large", "larger than the size cap")
        if expected and sha != expected:
            partial.unlink(missing_ok=True)
            remove_written(sidecar_path)
            raise FetchError(
                "digest_mismatch", f"sha256 of {url} is {sha}, expected {expected}: bytes removed"
            )
        remove_written(sidecar_path)  # with any temp copy a kill -9 during a save left
        return FetchResult(size=size, sha256=sha)

    def _plan(self, total: int, ranges: bool) -> list[Segment]:
        if total < 0:
            return [Segment(0, -1)]
        n = self.options.connections if ranges else 1
        n = max(1, min(n, total // self.options.min_split_bytes))
        step = -(-total // n) if total else 0
        return [Segment(i * step, min(total, (i + 1) * step)) for i in range(n)] if total else [Segment(0, 0)]

    async def _fetch_segment(
        self,
        probe: _Probe,
        seg: Segment,
        sink: Sink,
        auth: dict[str, str],
        on_written: Callable[[], None],
        *,
        ranged: bool,
    ) -> None:
        loop = asyncio.get_running_loop()

        def written() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(on_written)

        transfer = Transfer()
        await _in_thread(lambda: self._transfer(probe, seg, sink, auth, written, transfer, ranged), transfer)
        if seg.end >= 0 and seg.remaining > 0:
            raise FetchError("incomplete", "connection ended early", retryable=True)
        if seg.end < 0:
            seg.end = seg.start + seg.done

    def _transfer(
        self,
        probe: _Probe,
        seg: Segment,
        sink: Sink,
        auth: dict[str, str],
        written: Callable[[], None],
        transfer: Transfer,
        ranged: bool,
    ) -> None:
        """One connection's thread: GETs the rest of `seg` and streams it into the sink, block by block.
        Every byte received is written and counted, also when the connection fails halfway."""
        headers: dict[str, str] = {}
        offset = seg.start + seg.done
        restart = False
        if ranged and (seg.done or seg.start or seg.end != probe.total):
            end = f"{seg.end - 1}" if seg.end > 0 else ""
            headers["Range"] = f"bytes={offset}-{end}"
            if probe.validator and not probe.validator.startswith("W/"):
                headers["If-Range"] = probe.validator
        elif seg.done:
            restart = True  # the server cannot resume: start over
        try:
            resp = self._open(transfer, probe.url, headers, auth)
            _raise_for_status(resp.status, probe.url)
            if "Range" in headers and resp.status == 200:
                if seg.start != 0 or len(sink.segments) > 1:
                    raise FetchError("range_lost", "the server stopped honouring Range", retryable=True)
                restart = True
            transfer.begin_writing()
            if restart:
                sink.truncate()
                offset = 0
            limit = seg.end - offset if seg.end >= 0 else self.options.max_file_bytes + 1 - offset
            body = _Body(resp)
            told = 0.0
            while limit > 0:
                buf = sink.take(transfer.stopped)
                want = min(len(buf), limit)
                n, err = body.fill(buf, want)
                if n == 0:
                    sink.give(buf)
                else:
                    sink.write(seg, offset, buf, n)
                    offset += n
                    limit -= n
                    if (now := time.monotonic()) - told >= PROGRESS_EVERY_S:
                        told = now  # waking the event loop for every block costs more than the copy
                        written()
                if err is not None:
                    raise err
                if transfer.stopped.is_set():
                    raise Stopped()
                if n < want:
                    break  # the body ended
            if limit <= 0 and seg.end < 0:
                raise FetchError("too_large", "larger than the size cap")
        finally:
            written()
            transfer.close()


class _Body:
    """The body of a response, read into the caller's buffers: straight from the socket (`readinto1`)
    when the length is known or the connection's end delimits it, through http.client when chunked."""

    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.resp = resp
        self.left = resp.length  # None: until the connection closes
        self.raw = None if resp.chunked else resp.fp

    def fill(self, buf: bytearray, want: int) -> tuple[int, BaseException | None]:
        """Reads up to `want` bytes into `buf`; returns how many arrived and the error that ended the
        read early, if any (a stall or a reset: the bytes before it count)."""
        view = memoryview(buf)
        filled = 0
        try:
            if self.raw is None:
                return self.resp.readinto(view[:want]), None
            if self.left is not None:
                want = min(want, self.left)
            while filled < want:
                n = self.raw.readinto1(view[filled:want])
                if not n:
                    break
                filled += n
            if self.left is not None:
                self.left -= filled
            return filled, None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self.left is not None:
                self.left -= filled
            return filled, exc


async def _in_thread(fn: Callable[[], T], transfer: Transfer) -> T:
    """Runs `fn` in a thread of its own. Cancelled, it stops the transfer and, if the thread may be
    writing, waits for it: once this returns, nothing of it touches the partial file any more."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def run() -> None:
        try:
            result, exc = fn(), None
        except BaseException as e:  # handed to the awaiting task
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name="fetch-conn", daemon=True).start()
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if transfer.stop():
            while not fut.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({fut})
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved: its error is the cancellation's consequence
        raise


def _raise_for_status(status: int, url: str) -> None:
    if status in (200, 206):
        return
    retryable = status in (408, 425, 429) or status >= 500
    raise FetchError("http_error", f"{url} answered HTTP {status}", retryable=retryable)


async def all_or_first_error(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Runs the coroutines together; the first failure cancels the others and is raised."""
    if not coros:  # every byte is on disk already (paused or killed after the last write): nothing to run
        return
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _total_from_content_range(value: str) -> int:
    # "bytes 0-0/12345" -> 12345; "bytes 0-0/*" -> -1
    try:
        total = value.rsplit("/", 1)[1]
        return int(total) if total != "*" else -1
    except (IndexError, ValueError):
        return -1


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
