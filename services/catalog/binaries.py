"""The binaries a write puts into the catalog's storage or takes out of it: a user's file linked or copied
into a model folder, uploads (with their sha256) into the content store or the bucket, an imported
archive's binaries, and their removal. Synchronous but for `usage` and `sweep` (run it in a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from services.catalog.files import LinkRegistry, place_file
from services.common.errors import AlreadyExists, Unavailable
from services.common.storage import LocalStorage, Storage, StorageError, StorageUsage
from services.common.storage.fileops import hash_file

log = logging.getLogger(__name__)

_CHUNK = 4 * 1024 * 1024


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """A bucket that fails (unreachable, refusing) is the operator's to fix: 503 with what failed."""
    try:
        yield
    except StorageError as exc:
        raise Unavailable(f"the model storage failed: {exc}", code="storage_unavailable") from None


class Binaries:
    def __init__(self, backend: Storage, links: LinkRegistry) -> None:
        # The binaries' backend (each content stored once), and the bucket when binaries are not beside
        # the json files (None: in the model folders).
        self.backend = backend
        self.storage = backend if backend.kind != "local" else None
        self.links = links

    async def usage(self) -> StorageUsage:
        with storage_errors():
            return await asyncio.to_thread(self.backend.usage)

    async def sweep(self) -> None:
        """Frees the stored contents no model folder uses any more."""
        if isinstance(self.backend, LocalStorage):
            # Contents of folders removed by hand (rm -r) are freed here.
            freed = await asyncio.to_thread(self.backend.content.sweep)
            if freed:
                log.info("freed %d bytes no model folder uses any more", freed)

    # --- a user's file -------------------------------------------------------------------------------------

    def place_local(self, folder_dir: Path, name: str, local: Path, mode: str) -> bool:
        """Puts the user's file `local` into the folder as binary `name` (a link, a symbolic link, or the
        catalog's own copy); False when that very file is there already."""
        binary = folder_dir / name
        if binary.exists() or binary.is_symlink():
            if binary.exists() and os.path.samefile(binary, local):
                return False
            raise AlreadyExists(
                f"models/{folder_dir.name}/{name} already exists and is another file", code="binary_exists"
            )
        if mode == "copy":
            # The catalog's own copy: stored once, whatever other folder holds the same bytes.
            self.upload(folder_dir.name, name, local)
        elif place_file(local, binary, mode) == "symlink":
            self.links.add(binary, local)
        return True

    def unplace(self, folder_dir: Path, name: str) -> None:
        """Undoes `place_local` (the object it was for could not be written)."""
        self.links.remove(folder_dir / name)
        self.backend.delete(folder_dir.name, name)

    def upload_new(self, folder: str, name: str, local: Path) -> None:
        """A local import when binaries live in a bucket: the file goes into the bucket (the runners read
        it from there), unless the bucket holds that binary of the folder already."""
        assert self.storage is not None
        with storage_errors():
            if self.storage.stat(folder, name) is not None:
                raise AlreadyExists(
                    f"the bucket already holds {folder}/{name}", code="binary_exists", param="id"
                )
        self.upload(folder, name, local)

    def drop_upload(self, folder: str, name: str) -> None:
        """Undoes `upload_new` (the object it was for could not be written)."""
        assert self.storage is not None
        with contextlib.suppress(Exception):
            self.storage.delete(folder, name)

    def upload(self, folder: str, name: str, source: Path) -> None:
        """Copies `source` into the backend as binary `name` of `folder`, with the sha256 of what was
        read (stored once per content; the runners verify their copy against it)."""
        partial = self.backend.partial_path(folder, name)
        digest = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        try:
            with open(source, "rb") as src, open(partial, "wb") as dst:
                while n := src.readinto(buf):
                    digest.update(view[:n])
                    dst.write(view[:n])
            with storage_errors():
                self.backend.commit(folder, name, sha256=digest.hexdigest())
        finally:
            for leftover in partial.parent.glob(f"{partial.name}*"):  # the partial and any upload state
                leftover.unlink(missing_ok=True)

    # --- an imported archive -------------------------------------------------------------------------------

    def store_staged(self, folder: str, staging: Path) -> None:
        """An imported archive's binaries, from the staging folder it was extracted into."""
        if self.storage is not None:
            self._upload_staged(folder, staging)
        else:
            self._adopt_staged(staging)

    def _upload_staged(self, folder: str, staging: Path) -> None:
        """Each binary goes up and leaves the folder, which keeps its json files. Nothing stays half
        done: on a failure the ones already up are removed again."""
        assert self.storage is not None
        uploaded: list[str] = []
        try:
            for path in sorted(staging.iterdir()):
                if path.name.startswith(".") or path.suffix == ".json" or not path.is_file():
                    continue
                self.upload(folder, path.name, path)
                uploaded.append(path.name)
                path.unlink()
        except BaseException:
            for name in uploaded:
                with contextlib.suppress(Exception):
                    self.storage.delete(folder, name)
            raise

    def _adopt_staged(self, staging: Path) -> None:
        """In local mode each binary is stored once: a content already stored replaces it by a link, its
        own bytes are freed."""
        assert isinstance(self.backend, LocalStorage)
        for path in sorted(staging.iterdir()):
            if path.name.startswith(".") or path.suffix == ".json" or path.is_symlink() or not path.is_file():
                continue
            hasher, _ = hash_file(path)
            self.backend.content.adopt(path, hasher.hexdigest())

    # --- removal -------------------------------------------------------------------------------------------

    def remove(self, folder_dir: Path, name: str) -> list[str]:
        """Removes binary `name` of a folder (the object using it alone is deleted); returns what went."""
        folder = folder_dir.name
        removed = []
        if self.storage is not None:
            self.storage.delete(folder, name)
            removed.append(f"{self.storage.kind}:{folder}/{name}")
        path = folder_dir / name
        # unlink removes a link itself, never the user's original it points to; a stored content is freed
        # only when no other folder links to it.
        if path.is_symlink():
            path.unlink(missing_ok=True)
            self.links.remove(path)
            removed.append(f"models/{folder}/{name}")
        elif path.exists():
            if self.storage is None:
                self.backend.delete(folder, name)
            else:
                path.unlink(missing_ok=True)
            removed.append(f"models/{folder}/{name}")
        for leftover in folder_dir.glob(f".{name}.*"):
            leftover.unlink(missing_ok=True)
        return removed
