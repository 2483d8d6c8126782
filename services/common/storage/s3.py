"""Binaries as objects in an S3 or MinIO bucket, with resumable multipart uploads and a verified local
cache for the runners."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import urllib3
from minio import Minio
from minio.datatypes import Object, Part
from minio.error import MinioException, S3Error

from services.common.storage.base import (
    CHUNK,
    ProgressCallback,
    Storage,
    StorageError,
    check_name,
    check_sha256,
    is_valid_name,
)
from services.common.storage.fileops import (
    atomic_write_json,
    fsync_dir,
    hash_file,
    lock_file,
    locked_partial,
    pread_exact,
    read_json,
)
from services.common.storage.settings import S3_MAX_PARTS, MiB, StorageSettings

_UPLOAD_STATE_VERSION = 1


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Turns SDK and transport failures into StorageError with the operation that failed in front."""
    try:
        yield
    except S3Error as exc:
        raise StorageError(f"{what}: S3 error {exc.code}: {exc.message}") from exc
    except (MinioException, urllib3.exceptions.HTTPError) as exc:
        raise StorageError(f"{what}: {exc}") from exc


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
        expected = check_sha256(sha256)
        key = self._key(folder, name)
        partial = self.partial_path(folder, name)
        sidecar = partial.with_name(partial.name + ".upload.json")
        self._ensure_bucket()
        with locked_partial(partial) as fd:
            st = os.fstat(fd)
            reported = False
            with _s3_errors(f"uploading {key}"):
                if self._already_uploaded(key, st.st_size, expected):
                    # A crash after the upload completed but before the cleanup below, or the same
                    # file downloaded again: nothing to send, only a leftover upload to drop.
                    state = read_json(sidecar)
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
        data = pread_exact(fd, size, 0)
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
        state = read_json(sidecar)
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
        atomic_write_json(sidecar, state)

        count = max(1, -(-size // part_size))
        uploaded = sum(min(part_size, size - (n - 1) * part_size) for n in done)
        if uploaded and progress is not None:
            progress(uploaded)
        for number in range(1, count + 1):
            if number in done:
                continue
            offset = (number - 1) * part_size
            # One part in memory at a time; the SDK signs and sends exactly these bytes.
            data = pread_exact(fd, min(part_size, size - offset), offset)
            done[number] = self.client._upload_part(self.bucket, key, data, None, upload_id, number)
            uploaded += len(data)
            del data
            state["parts"] = {str(n): e for n, e in sorted(done.items())}
            atomic_write_json(sidecar, state)  # recorded before moving on: this is what a resume trusts
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
            if len(parts) == 2 and is_valid_name(parts[0]) and is_valid_name(parts[1]):
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
                yield from response.stream(CHUNK)
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
        expected = check_sha256(sha256)
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
            with lock_file(directory / f".{name}.lock"):
                if self._cached(final, marker, obj, expected):
                    return final
                # Whatever sits at the final path without a matching marker is stale.
                marker.unlink(missing_ok=True)
                final.unlink(missing_ok=True)
                partial = directory / f".{name}.part"
                digest = self._download(key, obj, partial, expected)
                atomic_write_json(marker, {"sha256": digest, "etag": obj.etag, "size": obj.size})
                os.replace(partial, final)
                fsync_dir(directory)
                (directory / f".{name}.part.json").unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot materialize {key} into {directory}: {exc}") from exc
        return final

    @staticmethod
    def _cached(final: Path, marker: Path, obj: Object, expected: str) -> bool:
        info = read_json(marker)
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
            info = read_json(meta)
            if info is not None and info.get("etag") == obj.etag and info.get("size") == size:
                with contextlib.suppress(FileNotFoundError):
                    start = partial.stat().st_size
            if start > size:
                start = 0
            if start == 0:
                partial.unlink(missing_ok=True)
                atomic_write_json(meta, {"etag": obj.etag, "size": size})
            free = shutil.disk_usage(partial.parent).free
            if size - start > free:
                raise StorageError(f"{key} needs {size - start} more bytes in {partial.parent}, {free} free")
            hasher, start = hash_file(partial, start) if start else (hashlib.sha256(), 0)
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
                            for chunk in response.stream(CHUNK):
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
