"""Where the bytes of one download go: written at their offsets by the connections' threads, hashed in
order by a thread of its own, and handed to the disk while the download runs.

- Each connection thread reads a block into a buffer from a small pool, `pwrite`s it, and counts it in
  its segment. A block that continues the hashed prefix is queued for the hasher as it is (no copy, no
  re-read); any other block (a later segment's) goes straight back to the pool.
- The hasher thread hashes the queue in order; when the queue is empty and bytes on disk continue the
  prefix (later segments, or what a previous run left), it reads them back in slices. Connections never
  wait for that catch-up: only the pool's size bounds them, and blocks of a later segment don't hold a
  buffer.
- Every `WRITEBACK_BYTES` written, the kernel is asked to start writing the dirty pages out
  (`sync_file_range`), so the fsync that makes the verified file durable finds little left to do.

sha256 and the disk copies release the GIL, so on a machine with cores to spare, reading, writing and
hashing run at the same time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.downloader.httpconn import Stopped

# Buffers in flight per file: at least one per connection (each holds one while its block fills) and two
# for the hasher; more only adds cache misses (a buffer is cold again by the time it comes back). They
# hold POOL_BYTES at most: with many connections, the blocks get smaller.
POOL_BUFFERS = 4
POOL_BYTES = 32 * 1024 * 1024
MIN_BLOCK = 256 * 1024
CATCH_UP_SLICE = 4 * 1024 * 1024
# A block goes to the file in writes of this size. Measured on Linux 6.18 / ext4 (2 GiB, one thread):
# 64 KiB writes cost ~1 CPU-s in all, 1 MiB writes 2.8-3.5 s (the kernel then builds the page cache of
# larger, costlier folios), 16 KiB ones 0.8-1.5 s.
WRITE_SLICE = 64 * 1024
WRITEBACK_BYTES = 64 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_start_writeback = _sync_file_range()


@dataclass
class Segment:
    start: int
    end: int  # exclusive; -1 while the size is unknown
    done: int = 0

    @property
    def remaining(self) -> int:
        return self.end - self.start - self.done


class Sink:
    """One partial file, its segments, and the sha256 of its contiguous prefix."""

    def __init__(self, path: Path, segments: list[Segment], block_bytes: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.segments = segments
        self.pool_size = max(POOL_BUFFERS, len(segments) + 2)
        self.block_bytes = min(block_bytes, max(MIN_BLOCK, POOL_BYTES // self.pool_size))
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the hasher waits here
        self._freed = threading.Condition(self._lock)  # connections wait here for a buffer
        self._free: list[bytearray] = []
        self._made = 0
        self._queue: deque[tuple[int, bytearray, int]] = deque()
        self._next = 0  # where the hashed prefix will end once the queue and a running catch-up are done
        self._closing = False  # the hasher ends once it has caught up
        self._abort = False  # the hasher ends now
        self._error: BaseException | None = None
        self._unflushed = 0
        self._hasher = hashlib.sha256()
        self._hashed = 0  # the hasher thread's own
        self._thread: threading.Thread | None = None
        self._start_hasher()

    @property
    def buffers(self) -> tuple[int, int]:
        """(buffers made so far, of them free now): the pool, read-only."""
        with self._lock:
            return self._made, len(self._free)

    # --- connections' side ---------------------------------------------------------------------------------

    def take(self, stopped: threading.Event) -> bytearray:
        """A free buffer; waits while all are in use (the hasher is behind), until `stopped`."""
        with self._lock:
            while not self._free and self._made >= self.pool_size:
                if self._error is not None:
                    raise OSError(f"hashing failed: {self._error}")
                if stopped.is_set():
                    raise Stopped()
                self._freed.wait(0.2)
            if self._free:
                return self._free.pop()
            self._made += 1
        return bytearray(self.block_bytes)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._give_locked(buf)

    def _give_locked(self, buf: bytearray) -> None:
        self._free.append(buf)
        self._freed.notify()

    def write(self, seg: Segment, offset: int, buf: bytearray, n: int) -> None:
        """Writes `buf[:n]` at `offset` (the end of what `seg` holds) and counts it; the buffer belongs
        to the sink from here on."""
        view = memoryview(buf)[:n]
        pos = offset
        try:
            while view:
                written = os.pwrite(self.fd, view[:WRITE_SLICE], pos)
                view = view[written:]
                pos += written
        except BaseException:
            self.give(buf)
            raise
        with self._lock:
            seg.done += n
            if offset == self._next and not self._closing:
                self._queue.append((offset, buf, n))
                self._next = offset + n
            else:
                self._give_locked(buf)
            self._work.notify()
            self._unflushed += n
            flush = self._unflushed >= WRITEBACK_BYTES
            if flush:
                self._unflushed = 0
        if flush and _start_writeback is not None:
            _start_writeback(self.fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # asynchronous: starts the I/O only

    def truncate(self) -> None:
        """Starts over from byte 0 (a server that cannot resume). No other connection may be running."""
        self._stop_hasher(abort=True)
        os.ftruncate(self.fd, 0)
        for seg in self.segments:
            seg.done = 0
        self._hasher = hashlib.sha256()
        self._hashed = self._next = 0
        self._start_hasher()

    # --- the hasher ----------------------------------------------------------------------------------------

    def _start_hasher(self) -> None:
        self._closing = self._abort = False
        self._thread = threading.Thread(target=self._hash_loop, name="fetch-hash", daemon=True)
        self._thread.start()

    def _stop_hasher(self, *, abort: bool = False) -> None:
        with self._lock:
            self._closing = True
            self._abort = self._abort or abort
            self._work.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            while self._queue:
                self._give_locked(self._queue.popleft()[1])

    def _contiguous_end(self) -> int:
        """The end of the bytes on disk that continue the hashed prefix (lock held)."""
        pos = self._hashed
        for seg in self.segments:
            if seg.end >= 0 and pos >= seg.end:
                continue
            if pos < seg.start:
                break
            pos = max(pos, seg.start + seg.done)
            if seg.end < 0 or pos < seg.end:
                break
        return pos

    def _hash_loop(self) -> None:
        scratch: bytearray | None = None
        try:
            while True:
                with self._lock:
                    while True:
                        if self._abort:
                            return
                        if self._queue:
                            offset, buf, n = self._queue.popleft()
                            end = -1
                            break
                        end = self._contiguous_end()
                        if end > self._hashed:
                            self._next = end  # blocks written from `end` on are queued, not re-read
                            break
                        if self._closing:
                            return
                        self._work.wait()
                if end < 0:
                    assert offset == self._hashed
                    self._hasher.update(memoryview(buf)[:n])
                    self._hashed += n
                    self.give(buf)
                    continue
                if scratch is None:
                    scratch = bytearray(CATCH_UP_SLICE)
                while self._hashed < end and not self._abort:
                    view = memoryview(scratch)[: min(CATCH_UP_SLICE, end - self._hashed)]
                    got = os.preadv(self.fd, [view], self._hashed)
                    if got <= 0:
                        raise OSError(f"the partial file ends at {self._hashed}, expected {end} bytes")
                    self._hasher.update(view[:got])
                    self._hashed += got
        except BaseException as exc:
            with self._lock:
                self._error = exc
                self._closing = True
                self._freed.notify_all()

    # --- the end -------------------------------------------------------------------------------------------

    def finish(self) -> tuple[int, str]:
        """Waits until every byte on disk is hashed (no connection may be running); returns the size of
        the hashed prefix and its sha256."""
        self._stop_hasher()
        if self._error is not None:
            raise self._error
        with self._lock:
            end = self._contiguous_end()
        if end != self._hashed:  # cannot happen: the hasher stops only when it has caught up
            raise RuntimeError(f"hashed {self._hashed} of {end} bytes")
        return self._hashed, self._hasher.hexdigest()

    def close(self) -> None:
        # No fsync here: storage.commit flushes the verified file once, before making it visible, and
        # a crashed process loses nothing the page cache holds (the sidecar is never ahead of the data).
        self._stop_hasher(abort=True)
        os.close(self.fd)
