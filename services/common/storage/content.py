"""One copy of each content on a local filesystem: the content store.

Bytes the catalog owns (downloads, copied imports, imported archives) are kept once per sha256, as
`<store>/sha256/<hex>`, and hard-linked into the model folders: a folder stays standalone (its file is a
real file, an export packs it) while identical binaries share one inode. The store's own link is what
keeps a content known; when it is the last link left (no folder names the content any more), `sweep`
frees it.

The store lives inside the models folder (`models/.store`, hidden from every scanner), so it is always on
the same filesystem as the folders it links into. Where hard links are not possible (a filesystem
without them, a link limit), a file simply stays a file of its own: nothing fails, nothing is shared.

Every change of the store's links happens under one lock (a file lock: the downloader, the catalog and
a runner may share the folder from different processes), so a sweep never frees a content that a commit
is about to link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.filesafety import fsync_dir
from services.common.storage.base import check_sha256

log = logging.getLogger(__name__)

# Link errors that mean "this filesystem will not share inodes here": keep separate files instead.
_NO_LINKS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES, errno.ENOSYS)


@dataclass(frozen=True)
class Stored:
    """One content of the store: its digest, size and how many folder binaries link to it."""

    sha256: str
    size: int
    users: int


class ContentStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._dir = directory / "sha256"
        self._lock_path = directory / ".lock"
        self._thread_lock = threading.Lock()
        self._warned = False

    def path_of(self, sha256: str) -> Path:
        digest = check_sha256(sha256)
        if not digest:
            raise ValueError("a content is named by its sha256")
        return self._dir / digest

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the store's lock (threads of this process and other processes alike)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        with self._thread_lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def has(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = self.path_of(sha256).stat()
        except (OSError, ValueError):
            return False
        return size is None or st.st_size == size

    def adopt(self, path: Path, sha256: str) -> bool:
        """Makes the complete file `path` (verified to have this digest) share the stored copy: when the
        content is stored already, `path` is replaced by a link to it and its own bytes are freed
        (returns True); otherwise `path` becomes the stored copy (returns False)."""
        stored = self.path_of(sha256)
        size = path.stat().st_size
        with self.locked():
            try:
                st = stored.stat()
            except FileNotFoundError:
                st = None
            if st is not None and st.st_size == size:
                return os.path.samestat(st, path.stat()) or self._link(stored, path)
            if st is not None:
                # A stored file of another size under this name was not written by us: set it aside.
                log.warning("content store: %s has %d bytes, not %d; replacing it", stored, st.st_size, size)
                stored.unlink()
            if self._hard_link(path, stored):
                fsync_dir(self._dir)
            return False

    def link_into(self, sha256: str, dst: Path) -> bool:
        """Puts the stored content at `dst` (replacing what is there) as a hard link; False when it is not
        stored or cannot be linked there."""
        stored = self.path_of(sha256)
        with self.locked():
            if not stored.exists():
                return False
            return self._link(stored, dst)

    def _link(self, stored: Path, dst: Path) -> bool:
        """Atomically replaces `dst` by a hard link to `stored` (a temp link renamed over it)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".link", dir=dst.parent)
        os.close(fd)
        os.unlink(tmp)
        if not self._hard_link(stored, Path(tmp)):
            return False
        try:
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(dst.parent)
        return True

    def _hard_link(self, src: Path, dst: Path) -> bool:
        """os.link, or False (warned about once) where this filesystem will not share the inode."""
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if not self._warned:
                self._warned = True
                log.warning("content store: no hard links here (%s); identical files stay copies", exc)
            return False
        return True

    def sweep(self) -> int:
        """Frees every content no folder links to any more; returns the bytes freed."""
        freed = 0
        if not self._dir.is_dir():
            return 0  # nothing stored yet (and no store made just to look)
        with self.locked():
            for entry in self._entries():
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_nlink <= 1:
                        os.unlink(entry.path)
                        freed += st.st_size
        return freed

    def contents(self) -> list[Stored]:
        found = []
        for entry in self._entries():
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat(follow_symlinks=False)
                found.append(Stored(entry.name, st.st_size, st.st_nlink - 1))
        return found

    def _entries(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self._dir) as it:
                return [e for e in it if len(e.name) == 64 and not e.name.startswith(".")]
        except FileNotFoundError:
            return []
