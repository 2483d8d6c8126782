"""The GGUF header traits of the binaries the catalog holds (services/common/capabilities.py), each file read
once per version: an answer is kept by path while the file's size and mtime stay the same, so a refresh
costs a stat per binary present and the model list costs nothing at all.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from services.common.capabilities import HeaderTraits
from services.common.gguf import read_gguf_header

# Far more binaries than a catalog holds; past it the oldest answers go first.
MAX_FILES = 100_000


class HeaderCache:
    """Header traits by file path. Scans run in worker threads: the table is shared under a lock, and a
    header is read outside it (two scans of one new file may both read it; the answers are the same)."""

    def __init__(self, max_files: int = MAX_FILES) -> None:
        self._max_files = max_files
        self._files: dict[str, tuple[tuple[int, int], HeaderTraits | None]] = {}
        self._lock = threading.Lock()
        self._reads = 0

    @property
    def reads(self) -> int:
        """How many headers were read so far (cache misses)."""
        return self._reads

    def traits(self, path: Path | str) -> HeaderTraits | None:
        """The traits of the GGUF at `path` (links followed); None when it is missing, not a regular file,
        or not a readable GGUF (a .bin, a .safetensors, a truncated file)."""
        key = os.fspath(path)
        try:
            st = os.stat(key)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        version = (st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._files.get(key)
        if known is not None and known[0] == version:
            return known[1]
        traits = _read(Path(key))
        with self._lock:
            self._reads += 1
            self._files.pop(key, None)
            while len(self._files) >= self._max_files:
                del self._files[next(iter(self._files))]
            self._files[key] = (version, traits)
        return traits


def _read(path: Path) -> HeaderTraits | None:
    try:
        return HeaderTraits.of(read_gguf_header(path).facts)
    except (OSError, ValueError):
        return None
