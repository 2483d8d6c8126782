"""File operations the backends share: JSON sidecars, hashing, and file locks (durable renames are
services.common.filesafety's)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.common.filesafety import write_atomic
from services.common.storage.base import CHUNK, StorageError


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """A sidecar in compact JSON, replaced atomically (see filesafety.write_atomic)."""
    write_atomic(path, json.dumps(data, separators=(",", ":")).encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """A json object from a sidecar, or None when it is missing or unreadable (then it is just redone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hash_file(path: Path, limit: int | None = None) -> tuple[Any, int]:
    """sha256 hasher over the first `limit` bytes (all when None) and the number of bytes read."""
    hasher = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while limit is None or done < limit:
            chunk = f.read(CHUNK if limit is None else min(CHUNK, limit - done))
            if not chunk:
                break
            hasher.update(chunk)
            done += len(chunk)
    return hasher, done


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise StorageError(f"file shrank while uploading: expected {length} bytes at offset {offset}")
        data += more
    return data


@contextlib.contextmanager
def locked_partial(partial: Path) -> Iterator[int]:
    """Opens the partial file and holds an exclusive lock on it, so two commits never race."""
    try:
        fd = os.open(partial, os.O_RDONLY)
    except FileNotFoundError:
        raise StorageError(f"nothing to commit: {partial} does not exist") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"{partial} is already being committed") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"{partial} is not a regular file")
        yield fd
    finally:
        os.close(fd)  # also releases the lock


@contextlib.contextmanager
def lock_file(path: Path) -> Iterator[None]:
    """Blocking exclusive lock on a (hidden) lock file: one materialize per cached file at a time."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
