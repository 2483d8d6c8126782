"""Where model binaries (GGUF files, often several GB) are kept: a shared local folder or an S3/MinIO bucket.

The model json objects always stay in JAN_ROOT/models (the catalog owns them); only binaries go through
this module. Both backends share one life cycle:

* the downloader writes a binary into the hidden LOCAL file `partial_path(folder, name)`, verifies it,
  then calls `commit`, which makes it visible in one atomic step (a rename on disk, a completed multipart
  upload in S3 - resumable after a crash, see `S3Storage.commit`);
* the catalog asks `stat` / `list_folder` / `list_all` which binaries exist;
* a runner that needs a real file for llama.cpp calls `materialize` (local: the file itself; S3: a
  verified copy in a local cache, downloaded once, resumable with ranged GETs).

Every folder and name is checked to be a single, non-hidden path component, so nothing can be written
outside JAN_ROOT or the bucket prefix. All methods are blocking: async callers run them in threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import urllib3
from minio import Minio
from minio.datatypes import Object, Part
from minio.error import MinioException, S3Error
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
# S3 limits: every part but the last must be at least 5 MiB, a part at most 5 GiB, at most 10,000 parts.
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000
# Read/write granularity when hashing files and streaming downloads: big enough to be fast, small
# enough that memory use stays flat whatever the size of the model.
_CHUNK = 1 * MiB
# Longest folder or file name accepted: the hidden partial and its sidecars add up to 19 characters,
# and the result must stay under the 255-byte limit of common filesystems.
_MAX_NAME_BYTES = 200
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_STATE_VERSION = 1

ProgressCallback = Callable[[int], None]


class StorageSettings(BaseSettings):
    """Storage backend settings (environment variables JAN_STORAGE_*, plus the usual AWS key names)."""

    model_config = SettingsConfigDict(env_prefix="JAN_STORAGE_", extra="ignore", populate_by_name=True)

    backend: Literal["local", "s3"] = Field(
        default="local",
        description="Where model binaries live: 'local' (JAN_ROOT/models) or 's3' (an S3/MinIO bucket).",
    )
    s3_endpoint: str = Field(
        default="", max_length=255, description="S3 endpoint as host:port without scheme, e.g. 'minio:9000'."
    )
    s3_secure: bool = Field(default=True, description="Reach the S3 endpoint over https.")
    s3_bucket: str = Field(
        default="jan-models",
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="Bucket holding the binaries; created on first use when missing.",
    )
    s3_prefix: str = Field(
        default="models",
        max_length=512,
        description="Key prefix: binaries are stored as <prefix>/<folder>/<name> ('' = bucket root).",
    )
    s3_access_key: str = Field(
        default="",
        max_length=256,
        validation_alias=AliasChoices("JAN_STORAGE_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        description="S3 access key ('' = anonymous access).",
    )
    s3_secret_key: SecretStr = Field(
        default=SecretStr(""),
        # SecretStr: shown as ****** by repr and --print-settings, never in logs.
        validation_alias=AliasChoices("JAN_STORAGE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
        description="S3 secret key.",
    )
    s3_region: str = Field(
        default="",
        max_length=64,
        pattern=r"^[a-z0-9-]*$",
        description="S3 region ('' = ask the server, us-east-1 for a new bucket).",
    )
    s3_part_size: int = Field(
        default=64 * MiB,
        ge=S3_MIN_PART_SIZE,
        le=S3_MAX_PART_SIZE,
        description="Multipart upload part size in bytes; also the most memory one upload holds.",
    )
    s3_quota_bytes: int = Field(
        default=0, ge=0, description="Bucket space granted to Jan in bytes, for free_bytes() (0 = unknown)."
    )
    cache_dir: Path | None = Field(
        default=None, description="Local copies made by materialize() in S3 mode (default JAN_ROOT/cache)."
    )

    @field_validator("s3_endpoint", mode="after")
    @classmethod
    def _plain_endpoint(cls, v: str) -> str:
        v = v.strip()
        # The SDK wants host[:port]; a URL here is the commonest misconfiguration, so say what to do.
        if "://" in v or "/" in v:
            raise ValueError("s3_endpoint is host:port without scheme or path (use s3_secure for https)")
        return v

    @field_validator("s3_prefix", mode="after")
    @classmethod
    def _clean_prefix(cls, v: str) -> str:
        v = v.strip().strip("/")
        for segment in v.split("/") if v else []:
            if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
                raise ValueError(f"s3_prefix {v!r} has an empty, '.', '..' or invalid segment")
        return v

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_means_none(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _s3_needs_endpoint(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_endpoint:
            raise ValueError("backend 's3' needs s3_endpoint (JAN_STORAGE_S3_ENDPOINT=host:port)")
        return self


class StorageError(Exception):
    """A storage operation failed (missing file, S3 error, verification failure); str() says which."""


def check_name(value: str, what: str) -> str:
    """A folder or file name that is one non-hidden path component; ValueError otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if value in (".", "..") or value.startswith("."):
        raise ValueError(f"{what} {value!r} must not start with '.'")
    if "/" in value or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} must not contain '/', '\\', NUL or control characters")
    if len(value.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        raise ValueError(f"{what} is longer than {_MAX_NAME_BYTES} bytes")
    return value


def _check_sha256(value: str) -> str:
    """'' (unknown) or a sha256 hex digest, lower-cased; ValueError for anything else."""
    value = value.strip().lower()
    if value and not _SHA256_RE.match(value):
        raise ValueError(f"sha256 {value!r} is not 64 hex digits")
    return value


def _is_valid_name(value: str) -> bool:
    try:
        check_name(value, "name")
    except ValueError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry itself reaches the disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename so a crash leaves either the old or the new content, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A json object from a sidecar, or None when it is missing or unreadable (then it is just redone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hash_file(path: Path, limit: int | None = None) -> tuple[Any, int]:
    """sha256 hasher over the first `limit` bytes (all when None) and the number of bytes read."""
    hasher = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while limit is None or done < limit:
            chunk = f.read(_CHUNK if limit is None else min(_CHUNK, limit - done))
            if not chunk:
                break
            hasher.update(chunk)
            done += len(chunk)
    return hasher, done


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise StorageError(f"file shrank while uploading: expected {length} bytes at offset {offset}")
        data += more
    return data


@contextlib.contextmanager
def _locked_partial(partial: Path) -> Iterator[int]:
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
def _lock_file(path: Path) -> Iterator[None]:
    """Blocking exclusive lock on a (hidden) lock file: one materialize per cached file at a time."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Turns SDK and transport failures into StorageError with the operation that failed in front."""
    try:
        yield
    except S3Error as exc:
        raise StorageError(f"{what}: S3 error {exc.code}: {exc.message}") from exc
    except (MinioException, urllib3.exceptions.HTTPError) as exc:
        raise StorageError(f"{what}: {exc}") from exc


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
        """Removes a binary; no error when absent."""

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


class LocalStorage(Storage):
    """Binaries as plain files next to the model json: JAN_ROOT/models/<folder>/<name>."""

    kind = "local"

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        # Files already hashed by materialize(sha256=...), keyed by path, valid while (dev, inode, size,
        # mtime) are unchanged: hashing a 40 GB model on every runner start would cost half a minute.
        self._verified: dict[str, tuple[int, int, int, int, str]] = {}
        self._lock = threading.Lock()

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
        _check_sha256(sha256)  # the caller verified it; only its form is checked here
        final = self._path(folder, name)
        partial = final.parent / f".{name}.part"
        with _locked_partial(partial) as fd:
            # Data first, then the rename, then the directory: after a crash the binary is either
            # absent or complete, never a renamed file with unwritten blocks.
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
                os.replace(partial, final)
                _fsync_dir(final.parent)
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
            if not _is_valid_name(entry.name) or entry.name.endswith(".json"):
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
            if _is_valid_name(entry.name) and entry.is_dir():
                files = self._scan(Path(entry.path))
                if files:  # same shape as S3, where a folder only exists through its objects
                    result[entry.name] = files
        return result

    def delete(self, folder: str, name: str) -> None:
        path = self._path(folder, name)
        try:
            path.unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc}") from exc

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
        expected = _check_sha256(sha256)
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
                    hasher, _ = _hash_file(path)
                except OSError as exc:
                    raise StorageError(f"cannot read {path}: {exc}") from exc
                if hasher.hexdigest() != expected:
                    raise StorageError(f"{path} has sha256 {hasher.hexdigest()}, expected {expected}")
                with self._lock:
                    self._verified[str(path)] = key
        return path

    def iter_binary(self, folder: str, name: str) -> Iterator[bytes]:
        with open(self._path(folder, name), "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk

    def local_file(self, folder: str, name: str) -> Path | None:
        path = self._path(folder, name)
        return path if path.is_file() else None


class S3Storage(Storage):
    """Binaries as objects <prefix>/<folder>/<name> in an S3 or MinIO bucket.

    The bucket is created lazily, on the first operation that needs it (and retried on the next one if
    that failed), so services can start before MinIO accepts connections.
    """

    kind = "s3"

    def __init__(
        self,
        settings: StorageSettings,
        staging_dir: Path,
        cache_dir: Path,
        client: Minio | None = None,
    ) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.staging_dir = staging_dir
        self.cache_dir = cache_dir
        self.client = client or Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key.get_secret_value() or None,
            secure=settings.s3_secure,
            region=settings.s3_region or None,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- naming ---------------------------------------------------------------------------------------

    def _folder_prefix(self, folder: str) -> str:
        check_name(folder, "folder")
        return f"{self.prefix}/{folder}/" if self.prefix else f"{folder}/"

    def _key(self, folder: str, name: str) -> str:
        return self._folder_prefix(folder) + check_name(name, "name")

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            with _s3_errors(f"preparing bucket {self.bucket}"):
                if not self.client.bucket_exists(self.bucket):
                    try:
                        self.client.make_bucket(self.bucket, location=self.settings.s3_region or None)
                    except S3Error as exc:
                        # Another service created it between our check and our request: fine.
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
            self._bucket_ready = True

    def _stat_object(self, key: str) -> Object | None:
        try:
            return self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NotFound", "ResourceNotFound"):
                return None
            raise

    @staticmethod
    def _object_sha256(obj: Object) -> str:
        value = (obj.metadata or {}).get("x-amz-meta-sha256") or ""
        return str(value).strip().lower()

    # -- upload ---------------------------------------------------------------------------------------

    def partial_path(self, folder: str, name: str) -> Path:
        check_name(name, "name")
        directory = self.staging_dir / check_name(folder, "folder")
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f".{name}.part"

    def commit(
        self, folder: str, name: str, *, sha256: str, progress: ProgressCallback | None = None
    ) -> None:
        """Uploads the partial file, then removes it (and its sidecar).

        Files up to one part go up in a single PUT. Larger ones use a multipart upload whose id and
        finished parts (number -> etag) are recorded in `<partial>.upload.json` after every part. A later
        commit of the same, unchanged partial (same size, mtime and sha256) reads that sidecar, asks the
        server which parts it really holds (ListParts), keeps those whose etag and size agree and uploads
        only the rest. Nothing is aborted on failure, precisely so that it can be resumed.
        """
        expected = _check_sha256(sha256)
        key = self._key(folder, name)
        partial = self.partial_path(folder, name)
        sidecar = partial.with_name(partial.name + ".upload.json")
        self._ensure_bucket()
        with _locked_partial(partial) as fd:
            st = os.fstat(fd)
            reported = False
            with _s3_errors(f"uploading {key}"):
                if self._already_uploaded(key, st.st_size, expected):
                    # A crash after the upload completed but before the cleanup below, or the same
                    # file downloaded again: nothing to send, only a leftover upload to drop.
                    state = _read_json(sidecar)
                    if state and state.get("bucket") == self.bucket and state.get("key") == key:
                        self._abort_quietly(key, str(state.get("upload_id")))
                elif st.st_size <= self.settings.s3_part_size and not sidecar.exists():
                    self._put_single(fd, key, st.st_size, expected)
                else:
                    self._put_multipart(fd, st, key, expected, sidecar, progress)
                    reported = True
                obj = self._stat_object(key)
            if obj is None or obj.size != st.st_size:
                raise StorageError(
                    f"uploading {key}: the bucket holds {None if obj is None else obj.size} bytes, "
                    f"expected {st.st_size}"
                )
            sidecar.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        if progress is not None and not reported:
            progress(st.st_size)

    def _already_uploaded(self, key: str, size: int, sha256: str) -> bool:
        # Only a known digest proves the object is this file; without one the upload is simply redone.
        if not sha256:
            return False
        obj = self._stat_object(key)
        return obj is not None and obj.size == size and self._object_sha256(obj) == sha256

    def _headers(self, sha256: str) -> dict[str, str | list[str] | tuple[str]]:
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": "application/octet-stream"}
        if sha256:
            headers["x-amz-meta-sha256"] = sha256
        return headers

    def _put_single(self, fd: int, key: str, size: int, sha256: str) -> None:
        data = _pread_exact(fd, size, 0)
        self.client._put_object(self.bucket, key, data, self._headers(sha256))

    def _server_parts(self, key: str, upload_id: str) -> dict[int, Part] | None:
        """Parts the server holds for an upload (all pages), None when the upload no longer exists."""
        parts: dict[int, Part] = {}
        marker: str | None = None
        while True:
            try:
                result = self.client._list_parts(
                    self.bucket, key, upload_id, max_parts=1000, part_number_marker=marker
                )
            except S3Error as exc:
                if exc.code == "NoSuchUpload":
                    return None
                raise
            for part in result.parts:
                parts[part.part_number] = part
            if not result.is_truncated or not result.next_part_number_marker:
                return parts
            marker = result.next_part_number_marker

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        # Best effort: an upload we cannot abort only costs space until the bucket's lifecycle rule.
        with contextlib.suppress(MinioException, urllib3.exceptions.HTTPError, ValueError):
            self.client._abort_multipart_upload(self.bucket, key, upload_id)

    def _put_multipart(
        self,
        fd: int,
        st: os.stat_result,
        key: str,
        sha256: str,
        sidecar: Path,
        progress: ProgressCallback | None,
    ) -> None:
        size = st.st_size
        identity = {"bucket": self.bucket, "key": key, "size": size, "mtime_ns": st.st_mtime_ns}
        state = _read_json(sidecar)
        done: dict[int, str] = {}
        if state is not None:
            same = state.get("version") == _UPLOAD_STATE_VERSION and state.get("sha256") == sha256
            same = same and all(state.get(k) == v for k, v in identity.items())
            if not same or not isinstance(state.get("upload_id"), str):
                # The partial was replaced since (a new download): its old upload is worthless.
                if state.get("bucket") == self.bucket and state.get("key") == key:
                    self._abort_quietly(key, str(state.get("upload_id")))
                state = None
        if state is not None:
            server = self._server_parts(key, state["upload_id"])
            if server is None:
                state = None  # aborted (delete) or expired: start over
            else:
                part_size = int(state["part_size"])
                for number_text, etag in dict(state.get("parts") or {}).items():
                    number = int(number_text)
                    on_server = server.get(number)
                    length = min(part_size, size - (number - 1) * part_size)
                    # Trust a part only if the server has it with the etag and size we recorded.
                    if on_server is not None and on_server.etag == etag and on_server.size == length:
                        done[number] = etag
        if state is None:
            # Keep within S3's 10,000-part limit for very large files, in whole MiB.
            part_size = max(self.settings.s3_part_size, -(-size // (S3_MAX_PARTS * MiB)) * MiB)
            upload_id = self.client._create_multipart_upload(self.bucket, key, self._headers(sha256))
            state = {
                "version": _UPLOAD_STATE_VERSION,
                **identity,
                "sha256": sha256,
                "upload_id": upload_id,
                "part_size": part_size,
            }
        upload_id = str(state["upload_id"])
        part_size = int(state["part_size"])
        state["parts"] = {str(n): e for n, e in sorted(done.items())}
        _atomic_write_json(sidecar, state)

        count = max(1, -(-size // part_size))
        uploaded = sum(min(part_size, size - (n - 1) * part_size) for n in done)
        if uploaded and progress is not None:
            progress(uploaded)
        for number in range(1, count + 1):
            if number in done:
                continue
            offset = (number - 1) * part_size
            # One part in memory at a time; the SDK signs and sends exactly these bytes.
            data = _pread_exact(fd, min(part_size, size - offset), offset)
            done[number] = self.client._upload_part(self.bucket, key, data, None, upload_id, number)
            uploaded += len(data)
            del data
            state["parts"] = {str(n): e for n, e in sorted(done.items())}
            _atomic_write_json(sidecar, state)  # recorded before moving on: this is what a resume trusts
            if progress is not None:
                progress(uploaded)
        parts = [Part(n, done[n]) for n in range(1, count + 1)]
        self.client._complete_multipart_upload(self.bucket, key, upload_id, parts)

    # -- queries --------------------------------------------------------------------------------------

    def stat(self, folder: str, name: str) -> int | None:
        key = self._key(folder, name)
        self._ensure_bucket()
        with _s3_errors(f"looking up {key}"):
            obj = self._stat_object(key)
        return None if obj is None else obj.size

    def _list(self, prefix: str) -> Iterator[tuple[str, str, int]]:
        """(folder, name, size) of the objects under `prefix`; the SDK follows the pagination."""
        base = f"{self.prefix}/" if self.prefix else ""
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.is_dir or not obj.object_name or obj.size is None:
                continue
            parts = obj.object_name[len(base) :].split("/")
            # Anything not shaped <folder>/<name> was not written by us: ignore it rather than fail.
            if len(parts) == 2 and _is_valid_name(parts[0]) and _is_valid_name(parts[1]):
                yield parts[0], parts[1], obj.size

    def list_folder(self, folder: str) -> dict[str, int]:
        prefix = self._folder_prefix(folder)
        self._ensure_bucket()
        with _s3_errors(f"listing {prefix}"):
            return {name: size for f, name, size in self._list(prefix) if f == folder}

    def list_all(self) -> dict[str, dict[str, int]]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        self._ensure_bucket()
        result: dict[str, dict[str, int]] = {}
        with _s3_errors(f"listing {self.bucket}/{prefix}"):
            for folder, name, size in self._list(prefix):
                result.setdefault(folder, {})[name] = size
        return result

    def free_bytes(self, folder: str) -> int | None:
        check_name(folder, "folder")
        if not self.settings.s3_quota_bytes:
            return None  # S3 reports no capacity: only a configured quota gives a number
        used = sum(size for files in self.list_all().values() for size in files.values())
        return max(0, self.settings.s3_quota_bytes - used)

    # -- delete ---------------------------------------------------------------------------------------

    def delete(self, folder: str, name: str) -> None:
        key = self._key(folder, name)
        self._ensure_bucket()
        with _s3_errors(f"deleting {key}"):
            self.client.remove_object(self.bucket, key)  # S3 deletes are idempotent
            # Uploads in progress hold storage too and would otherwise resurrect the binary on commit.
            # (A single page: the SDK's pagination of this listing is broken, and one key rarely has
            # more than a couple of uploads.)
            uploads = self.client._list_multipart_uploads(self.bucket, prefix=key, max_uploads=1000)
            for upload in uploads.uploads:
                if upload.object_name == key and upload.upload_id:
                    try:
                        self.client._abort_multipart_upload(self.bucket, key, upload.upload_id)
                    except S3Error as exc:
                        if exc.code != "NoSuchUpload":
                            raise
        # The cached copy would otherwise keep serving a binary that no longer exists. The lock file
        # stays: removing a file another process may hold a lock on would let two downloads run.
        directory = self.cache_dir / folder
        for path in (
            directory / name,
            directory / f".{name}.sha256",
            directory / f".{name}.part",
            directory / f".{name}.part.json",
        ):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()

    # -- materialize ----------------------------------------------------------------------------------

    def iter_binary(self, folder: str, name: str) -> Iterator[bytes]:
        key = self._key(folder, name)
        with _s3_errors(f"reading {key}"):
            response = self.client.get_object(self.bucket, key)
        try:
            with _s3_errors(f"reading {key}"):
                yield from response.stream(_CHUNK)
        finally:
            response.close()
            response.release_conn()

    def local_file(self, folder: str, name: str) -> Path | None:
        # A file at the final path of the cache was verified before it was renamed there.
        path = self.cache_dir / check_name(folder, "folder") / check_name(name, "name")
        return path if path.is_file() else None

    def materialize(self, folder: str, name: str, *, sha256: str = "") -> Path:
        """cache_dir/<folder>/<name>, downloaded once and verified.

        The download goes to the hidden `.<name>.part`, with `.<name>.part.json` recording the object's
        etag and size; an interrupted download resumes with a ranged GET from the partial's length when
        the object is unchanged (the bytes already there are re-hashed, not re-fetched). The result is
        checked against `sha256`, else the object's `sha256` metadata, else its size only. The marker
        `.<name>.sha256` (digest, etag, size) is written before the rename into place, so a file at the
        final path always has one; a later call that finds file and marker matching the object returns
        at once without downloading.
        """
        expected = _check_sha256(sha256)
        key = self._key(folder, name)
        self._ensure_bucket()
        with _s3_errors(f"looking up {key}"):
            obj = self._stat_object(key)
        if obj is None or obj.size is None:
            raise StorageError(f"{folder}/{name} is not in bucket {self.bucket} ({key} is missing)")
        meta_sha = self._object_sha256(obj)
        if expected and meta_sha and expected != meta_sha:
            # Fail before fetching gigabytes that cannot match.
            raise StorageError(f"{key} has sha256 {meta_sha}, expected {expected}")
        expected = expected or meta_sha
        directory = self.cache_dir / folder
        final = directory / name
        marker = directory / f".{name}.sha256"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with _lock_file(directory / f".{name}.lock"):
                if self._cached(final, marker, obj, expected):
                    return final
                # Whatever sits at the final path without a matching marker is stale.
                marker.unlink(missing_ok=True)
                final.unlink(missing_ok=True)
                partial = directory / f".{name}.part"
                digest = self._download(key, obj, partial, expected)
                _atomic_write_json(marker, {"sha256": digest, "etag": obj.etag, "size": obj.size})
                os.replace(partial, final)
                _fsync_dir(directory)
                (directory / f".{name}.part.json").unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot materialize {key} into {directory}: {exc}") from exc
        return final

    @staticmethod
    def _cached(final: Path, marker: Path, obj: Object, expected: str) -> bool:
        info = _read_json(marker)
        try:
            size = final.stat().st_size
        except OSError:
            return False
        if info is None or size != obj.size or info.get("size") != obj.size:
            return False
        # A known digest decides; without one, the etag tells whether the object is still the same.
        return info.get("sha256") == expected if expected else info.get("etag") == obj.etag

    def _download(self, key: str, obj: Object, partial: Path, expected: str) -> str:
        """Fills `partial` with the object (resuming when possible); returns its verified sha256."""
        size = int(obj.size or 0)
        meta = partial.with_name(partial.name + ".json")
        for attempt in (1, 2):
            start = 0
            info = _read_json(meta)
            if info is not None and info.get("etag") == obj.etag and info.get("size") == size:
                with contextlib.suppress(FileNotFoundError):
                    start = partial.stat().st_size
            if start > size:
                start = 0
            if start == 0:
                partial.unlink(missing_ok=True)
                _atomic_write_json(meta, {"etag": obj.etag, "size": size})
            free = shutil.disk_usage(partial.parent).free
            if size - start > free:
                raise StorageError(f"{key} needs {size - start} more bytes in {partial.parent}, {free} free")
            hasher, start = _hash_file(partial, start) if start else (hashlib.sha256(), 0)
            with open(partial, "r+b" if start else "wb") as f:
                f.seek(start)
                f.truncate()
                if start < size:
                    with _s3_errors(f"downloading {key}"):
                        response = self.client.get_object(
                            self.bucket,
                            key,
                            offset=start,
                            # Refuse bytes of a different object than the one the partial belongs to.
                            request_headers={"If-Match": f'"{obj.etag}"'} if obj.etag else None,
                        )
                        try:
                            for chunk in response.stream(_CHUNK):
                                f.write(chunk)
                                hasher.update(chunk)
                        finally:
                            response.close()
                            response.release_conn()
                f.flush()
                os.fsync(f.fileno())
                got = f.tell()
            if got != size:
                raise StorageError(f"downloading {key}: got {got} bytes, expected {size}")
            digest: str = hasher.hexdigest()
            if not expected or digest == expected:
                return digest
            # Corrupt bytes: never keep them around looking resumable.
            partial.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            if start == 0 or attempt == 2:
                raise StorageError(f"{key} downloaded with sha256 {digest}, expected {expected}")
            # The fault may lie in bytes kept from an earlier attempt: fetch everything once more.
        raise AssertionError("unreachable")


def make_storage(settings: StorageSettings, root: Path) -> Storage:
    """The configured backend for Jan root `root` (JAN_ROOT)."""
    if settings.backend == "s3":
        return S3Storage(
            settings,
            staging_dir=root / ".downloads" / "staging",
            cache_dir=settings.cache_dir or root / "cache",
        )
    return LocalStorage(root / "models")
