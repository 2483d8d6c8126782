"""What every storage backend offers (the `Storage` interface), its error, and the rule for the digests
it is given (the rule for names is services.common.filesafety's)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from services.common.storage.settings import MiB

# Read/write granularity when hashing files and streaming downloads: big enough to be fast, small
# enough that memory use stays flat whatever the size of the model.
CHUNK = 1 * MiB
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class StorageUsage:
    """What the binaries take in a backend: each content counted once (`stored_bytes`, `contents`)
    against every folder's binaries counted each (`binary_bytes`, `binaries`); `linked_bytes` of those
    are links to the user's own files (imported in place), which the backend does not store."""

    stored_bytes: int
    contents: int
    binary_bytes: int
    binaries: int
    linked_bytes: int = 0


class StorageError(Exception):
    """A storage operation failed (missing file, S3 error, verification failure); str() says which."""


def check_sha256(value: str) -> str:
    """'' (unknown) or a sha256 hex digest, lower-cased; ValueError for anything else."""
    value = value.strip().lower()
    if value and not SHA256_RE.match(value):
        raise ValueError(f"sha256 {value!r} is not 64 hex digits")
    return value


class Storage(ABC):
    """The operations the downloader, catalog and runner need on model binaries."""

    kind: ClassVar[str]

    @abstractmethod
    def partial_path(self, folder: str, name: str) -> Path:
        """The hidden local file a download writes to (its directory exists) before `commit`."""

    @abstractmethod
    def commit(
        self, folder: str, name: str, *, sha256: str, progress: ProgressCallback | None = None
    ) -> None:
        """Makes the verified partial file visible as binary `name` of `folder`, atomically.

        `sha256` is the digest the caller verified ('' when unknown); `progress(bytes_done)` is called as
        the work advances, and an exception it raises stops the commit (which can be resumed later).
        With a digest the content is stored once: content already stored is linked, not stored again.
        """

    @abstractmethod
    def stat(self, folder: str, name: str) -> int | None:
        """Size in bytes of a committed binary, None if absent."""

    @abstractmethod
    def list_folder(self, folder: str) -> dict[str, int]:
        """Committed binaries of one folder: name -> size (hidden files and model json excluded)."""

    @abstractmethod
    def list_all(self) -> dict[str, dict[str, int]]:
        """Every folder holding binaries: folder -> {name: size}."""

    @abstractmethod
    def delete(self, folder: str, name: str) -> None:
        """Removes a binary; no error when absent. Its content is freed only when no other folder's
        binary is the same content."""

    @abstractmethod
    def free_bytes(self, folder: str) -> int | None:
        """Space left for new binaries of `folder`, None when unknown."""

    @abstractmethod
    def materialize(self, folder: str, name: str, *, sha256: str = "") -> Path:
        """A local, complete, verified file with the binary's content (for llama.cpp)."""

    @abstractmethod
    def iter_binary(self, folder: str, name: str) -> Iterator[bytes]:
        """The binary's content in chunks, read where it is (an export streams it into an archive)."""

    @abstractmethod
    def local_file(self, folder: str, name: str) -> Path | None:
        """The local file `materialize` would return when it is there already, None otherwise: nothing is
        fetched or hashed (a memory estimate reads its size and header, a load still verifies it)."""

    # -- content addressing: one copy of each content (by sha256), however many folders name it ---------

    @abstractmethod
    def has_content(self, sha256: str) -> bool:
        """Whether bytes with this sha256 are stored already (then a download of them moves nothing)."""

    @abstractmethod
    def link_content(self, folder: str, name: str, sha256: str) -> bool:
        """Makes binary `name` of `folder` the stored content with this sha256, atomically, without
        copying it; False (and nothing changed) when no such content is stored."""

    @abstractmethod
    def usage(self) -> StorageUsage:
        """Bytes stored (each content once) against the bytes every folder's binaries add up to."""
