"""Binaries as plain files in the model folders (JAN_ROOT/models/<folder>/<name>), each content stored
once (services/common/storage/content.py)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from services.common.filesafety import check_name, fsync_dir, is_valid_name
from services.common.storage.base import (
    CHUNK,
    ProgressCallback,
    Storage,
    StorageError,
    StorageUsage,
    check_sha256,
)
from services.common.storage.content import ContentStore
from services.common.storage.fileops import hash_file, locked_partial

STORE_DIR = ".store"


class LocalStorage(Storage):
    """Binaries as plain files next to the model json: JAN_ROOT/models/<folder>/<name>."""

    kind = "local"

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        # Files already hashed by materialize(sha256=...), keyed by path, valid while (dev, inode, size,
        # mtime) are unchanged: hashing a 40 GB model on every runner start would cost half a minute.
        self._verified: dict[str, tuple[int, int, int, int, str]] = {}
        self._lock = threading.Lock()
        self.content = ContentStore(models_dir / STORE_DIR)

    def _folder_dir(self, folder: str) -> Path:
        return self.models_dir / check_name(folder, "folder")

    def _path(self, folder: str, name: str) -> Path:
        return self._folder_dir(folder) / check_name(name, "name")

    def partial_path(self, folder: str, name: str) -> Path:
        final = self._path(folder, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the binary: same filesystem, so commit is a single atomic rename; the
        # leading dot keeps scanners (catalog, list_folder) from ever taking it for a model.
        return final.parent / f".{name}.part"

    def commit(
        self, folder: str, name: str, *, sha256: str, progress: ProgressCallback | None = None
    ) -> None:
        digest = check_sha256(sha256)  # the caller verified it; only its form is checked here
        final = self._path(folder, name)
        partial = final.parent / f".{name}.part"
        with locked_partial(partial) as fd:
            # Data first, then the rename, then the directory: after a crash the binary is either
            # absent or complete, never a renamed file with unwritten blocks.
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
                if digest:
                    # Stored once: the partial becomes the store's copy, or a link to the copy already
                    # there (then its own bytes are freed by the rename below).
                    self.content.adopt(partial, digest)
                os.replace(partial, final)
                fsync_dir(final.parent)
            except OSError as exc:
                raise StorageError(f"cannot move {partial} into place: {exc}") from exc
        if progress is not None:
            progress(size)

    def stat(self, folder: str, name: str) -> int | None:
        path = self._path(folder, name)
        try:
            st = path.stat()  # follows links: the catalog may link imported files into place
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc}") from exc
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _scan(self, folder_dir: Path) -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            entries = list(os.scandir(folder_dir))
        except (FileNotFoundError, NotADirectoryError):
            return found
        except OSError as exc:
            raise StorageError(f"cannot list {folder_dir}: {exc}") from exc
        for entry in entries:
            # Model json objects share the folder in local mode but are not binaries.
            if not is_valid_name(entry.name) or entry.name.endswith(".json"):
                continue
            try:
                if entry.is_file():
                    found[entry.name] = entry.stat().st_size
            except OSError:  # a dangling link or a file removed meanwhile: not present
                continue
        return found

    def list_folder(self, folder: str) -> dict[str, int]:
        return self._scan(self._folder_dir(folder))

    def list_all(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        try:
            entries = list(os.scandir(self.models_dir))
        except FileNotFoundError:
            return result
        except OSError as exc:
            raise StorageError(f"cannot list {self.models_dir}: {exc}") from exc
        for entry in entries:
            if is_valid_name(entry.name) and entry.is_dir():
                files = self._scan(Path(entry.path))
                if files:  # same shape as S3, where a folder only exists through its objects
                    result[entry.name] = files
        return result

    def delete(self, folder: str, name: str) -> None:
        path = self._path(folder, name)
        try:
            linked = path.lstat().st_nlink > 1
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc}") from exc
        if linked:
            # Maybe the last folder that named a stored content: free it then.
            self.content.sweep()

    def free_bytes(self, folder: str) -> int | None:
        path = self._folder_dir(folder)
        # The folder may not exist yet (first download into it): its filesystem is its nearest parent's.
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            st = os.statvfs(path)
        except OSError as exc:
            raise StorageError(f"cannot read free space of {path}: {exc}") from exc
        return st.f_bavail * st.f_frsize

    def materialize(self, folder: str, name: str, *, sha256: str = "") -> Path:
        expected = check_sha256(sha256)
        path = self._path(folder, name)
        try:
            st = path.stat()
        except OSError:
            raise StorageError(f"{folder}/{name} is not in local storage ({path} is missing)") from None
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{path} is not a regular file")
        if expected:
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, expected)
            with self._lock:
                known = self._verified.get(str(path)) == key
            if not known:
                try:
                    hasher, _ = hash_file(path)
                except OSError as exc:
                    raise StorageError(f"cannot read {path}: {exc}") from exc
                if hasher.hexdigest() != expected:
                    raise StorageError(f"{path} has sha256 {hasher.hexdigest()}, expected {expected}")
                with self._lock:
                    self._verified[str(path)] = key
        return path

    def iter_binary(self, folder: str, name: str) -> Iterator[bytes]:
        with open(self._path(folder, name), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def local_file(self, folder: str, name: str) -> Path | None:
        path = self._path(folder, name)
        return path if path.is_file() else None

    def has_content(self, sha256: str) -> bool:
        return self.content.has(sha256)

    def link_content(self, folder: str, name: str, sha256: str) -> bool:
        final = self._path(folder, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self.content.link_into(sha256, final)
        except OSError as exc:
            raise StorageError(f"cannot link {final} to the stored content: {exc}") from exc

    def usage(self) -> StorageUsage:
        """Walks the folders: a binary that is a symbolic link (a file imported in place) is the user's
        bytes, counted in `linked_bytes`; the others count once per inode, with the store's contents."""
        seen: set[tuple[int, int]] = set()
        stored = binaries = binary_bytes = linked = 0
        for folder, files in self.list_all().items():
            for name in files:
                path = self._path(folder, name)
                try:
                    st, lst = path.stat(), path.lstat()
                except OSError:
                    continue
                binaries += 1
                binary_bytes += st.st_size
                if stat.S_ISLNK(lst.st_mode):
                    linked += st.st_size
                elif (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    stored += st.st_size
        unused = [c for c in self.content.contents() if c.users == 0]
        stored += sum(c.size for c in unused)
        return StorageUsage(
            stored_bytes=stored,
            contents=len(seen) + len(unused),
            binary_bytes=binary_bytes,
            binaries=binaries,
            linked_bytes=linked,
        )
