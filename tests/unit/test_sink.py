"""The download sink: blocks written by several connection threads in any order, bytes left by an earlier
run, a restart from zero: the sha256 is always that of the whole file, and every buffer comes back."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest

from services.downloader import sink as sink_mod
from services.downloader.httpconn import Stopped
from services.downloader.sink import Segment, Sink

BLOCK = 64 * 1024


def _content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _segments(size: int, n: int) -> list[Segment]:
    step = -(-size // n)
    return [Segment(i * step, min(size, (i + 1) * step)) for i in range(n)]


def _run_connection(sink: Sink, seg: Segment, data: bytes, rng: random.Random) -> None:
    stop = threading.Event()
    offset = seg.start + seg.done
    while offset < seg.end:
        buf = sink.take(stop)
        n = min(rng.randint(1, len(buf)), seg.end - offset)
        buf[:n] = data[offset : offset + n]
        sink.write(seg, offset, buf, n)
        offset += n


@pytest.mark.parametrize("connections", [1, 2, 5])
@pytest.mark.parametrize("seed", range(4))
def test_concurrent_segments_in_any_order_hash_to_the_file(
    tmp_path: Path, connections: int, seed: int
) -> None:
    size = 3 * 1024 * 1024 + 12345
    data = _content(size, seed)
    segments = _segments(size, connections)
    sink = Sink(tmp_path / "f.part", segments, BLOCK)
    threads = [
        threading.Thread(target=_run_connection, args=(sink, seg, data, random.Random(seed * 10 + i)))
        for i, seg in enumerate(segments)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hashed, sha = sink.finish()
    sink.close()
    assert (hashed, sha) == (size, hashlib.sha256(data).hexdigest())
    assert (tmp_path / "f.part").read_bytes() == data
    assert all(seg.remaining == 0 for seg in segments)
    made, free = sink.buffers
    assert made <= sink.pool_size and free == made  # every buffer came back


def test_bytes_left_by_an_earlier_run_are_read_back_and_hashed(tmp_path: Path) -> None:
    size = 2 * 1024 * 1024
    data = _content(size, 7)
    segments = _segments(size, 3)
    # An earlier run wrote the first 100 000 bytes of every segment.
    path = tmp_path / "f.part"
    with path.open("wb") as f:
        for seg in segments:
            f.seek(seg.start)
            f.write(data[seg.start : seg.start + 100_000])
            seg.done = 100_000
    sink = Sink(path, segments, BLOCK)
    for i, seg in enumerate(reversed(segments)):  # the last segment first: catch-up reads it back later
        _run_connection(sink, seg, data, random.Random(i))
    assert sink.finish() == (size, hashlib.sha256(data).hexdigest())
    sink.close()


def test_unknown_size_single_segment(tmp_path: Path) -> None:
    data = _content(500_000, 3)
    seg = Segment(0, -1)
    sink = Sink(tmp_path / "f.part", [seg], BLOCK)
    stop = threading.Event()
    for offset in range(0, len(data), 70_000):
        chunk = data[offset : offset + 70_000]
        buf = sink.take(stop)
        buf[: len(chunk)] = chunk
        sink.write(seg, offset, buf, len(chunk))
    assert sink.finish() == (len(data), hashlib.sha256(data).hexdigest())
    sink.close()


def test_truncate_starts_the_hash_over(tmp_path: Path) -> None:
    data = _content(300_000, 5)
    seg = Segment(0, len(data))
    sink = Sink(tmp_path / "f.part", [seg], BLOCK)
    _run_connection(sink, Segment(0, 100_000), b"x" * 100_000, random.Random(1))  # bytes of another version
    seg.done = 100_000
    sink.truncate()
    assert seg.done == 0 and (tmp_path / "f.part").stat().st_size == 0
    _run_connection(sink, seg, data, random.Random(2))
    assert sink.finish() == (len(data), hashlib.sha256(data).hexdigest())
    sink.close()


def test_a_stopped_connection_does_not_wait_for_a_buffer(tmp_path: Path) -> None:
    size = BLOCK * (sink_mod.POOL_BUFFERS + 4)
    sink = Sink(tmp_path / "f.part", [Segment(0, BLOCK), Segment(BLOCK, size)], BLOCK)
    stop = threading.Event()
    # Every buffer is in use (taken by connections, not written yet): the next connection would wait.
    held = [sink.take(stop) for _ in range(sink.pool_size)]
    stop.set()
    with pytest.raises(Stopped):
        sink.take(stop)
    for buf in held:
        sink.give(buf)
    sink.close()


def test_every_connection_gets_a_buffer_and_the_pool_stays_bounded(tmp_path: Path) -> None:
    few = Sink(tmp_path / "a.part", _segments(10 * 1024 * 1024, 4), 4 * 1024 * 1024)
    many = Sink(tmp_path / "b.part", _segments(100 * 1024 * 1024, 32), 4 * 1024 * 1024)
    assert (few.pool_size, few.block_bytes) == (6, 4 * 1024 * 1024)
    assert many.pool_size == 34 and many.pool_size * many.block_bytes <= sink_mod.POOL_BYTES
    few.close()
    many.close()
