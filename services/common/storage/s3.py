"""Binaries in an S3 or MinIO bucket, each content stored once (keyed by its sha256), with resumable
multipart uploads and a verified local cache for the runners."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import urllib3
from minio import Minio
from minio.datatypes import Object, Part
from minio.error import MinioException, S3Error

from services.common.filesafety import check_name, fsync_dir, is_valid_name
from services.common.storage.base import (
    CHUNK,
    SHA256_RE,
    ProgressCallback,
    Storage,
    StorageError,
    StorageUsage,
    check_sha256,
)
from services.common.storage.fileops import (
    atomic_write_json,
    hash_file,
    lock_file,
    locked_partial,
    pread_exact,
    read_json,
)
from services.common.storage.settings import S3_MAX_PARTS, MiB, StorageSettings

log = logging.getLogger(__name__)

_UPLOAD_STATE_VERSION = 1
# Contents live at <prefix>/.store/sha256/<hex>: the leading dot keeps them out of the folder listings.
_STORE = ".store/sha256/"
# User metadata of a pointer: the digest of the content it names, and that content's size.
_META_SHA256 = "x-amz-meta-jan-sha256"
_META_SIZE = "x-amz-meta-jan-size"
# Objects up to this size may be pointers (their body is a short json): listings read their metadata.
_POINTER_MAX_BYTES = 1024
_MISSING = ("NoSuchKey", "NotFound", "ResourceNotFound")


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Turns SDK and transport failures into StorageError with the operation that failed in front."""
    try:
        yield
    except S3Error as exc:
        raise StorageError(f"{what}: S3 error {exc.code}: {exc.message}") from exc
    except (MinioException, urllib3.exceptions.HTTPError) as exc:
        raise StorageError(f"{what}: {exc}") from exc


class _Pointer(NamedTuple):
    """The content a pointer object names."""

    sha256: str
    size: int


class _Staged(NamedTuple):
    """The partial file a commit sends: open and locked, its stat when locked, the sidecar recording its
    multipart upload, and whom to tell how many bytes went up."""

    fd: int
    st: os.stat_result
    sidecar: Path
    progress: ProgressCallback | None


class _Binary(NamedTuple):
    """A folder binary seen in a listing: its content's digest when it is a pointer, '' when plain."""

    folder: str
    name: str
    size: int
    sha256: str


def _pointer_of(metadata: Mapping[str, object] | None) -> _Pointer | None:
    """The pointer an object's headers describe, None for a plain object (one that holds its bytes)."""
    meta = metadata or {}
    digest = str(meta.get(_META_SHA256) or "").strip().lower()
    try:
        size = int(str(meta.get(_META_SIZE)))
    except ValueError:
        return None
    return _Pointer(digest, size) if SHA256_RE.match(digest) and size >= 0 else None


class S3Storage(Storage):
    """Binaries in an S3 or MinIO bucket, each content stored once.

    Under <prefix>/ the bucket holds:

    * `.store/sha256/<hex>`: the bytes of one content, with metadata `x-amz-meta-sha256`;
    * `<folder>/<name>`: a binary. Committed with a digest it is a pointer: its metadata
      `x-amz-meta-jan-sha256` / `x-amz-meta-jan-size` name the content, and its short json body repeats
      them so that pointers to different contents differ in etag (the listing cache relies on it). An
      object without that metadata is a plain binary holding its own bytes: committed without a digest,
      or before contents were shared. Both kinds are read, listed and deleted alike.

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
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        # What listings learnt from HEAD requests on small objects, by key: (etag, the pointer, or None
        # for a small plain object). A listing does not return user metadata on every server; as a
        # pointer's body names its content, an unchanged etag means an unchanged pointer, and a repeated
        # listing costs one LIST and no HEAD.
        self._small: dict[str, tuple[str, _Pointer | None]] = {}
        self._small_lock = threading.Lock()

    # -- naming ---------------------------------------------------------------------------------------

    def _folder_prefix(self, folder: str) -> str:
        return self._root + check_name(folder, "folder") + "/"

    def _key(self, folder: str, name: str) -> str:
        return self._folder_prefix(folder) + check_name(name, "name")

    def _content_key(self, sha256: str) -> str:
        return self._root + _STORE + sha256

    def _partial(self, folder: str, name: str) -> Path:
        return self.staging_dir / check_name(folder, "folder") / f".{check_name(name, 'name')}.part"

    @staticmethod
    def _upload_sidecar(partial: Path) -> Path:
        return partial.with_name(partial.name + ".upload.json")

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
            if exc.code in _MISSING:
                return None
            raise

    @staticmethod
    def _object_sha256(obj: Object) -> str:
        value = (obj.metadata or {}).get("x-amz-meta-sha256") or ""
        return str(value).strip().lower()

    def _content(self, sha256: str, size: int | None = None) -> Object | None:
        """The stored content with this digest (and size, when given), None when there is none."""
        obj = self._stat_object(self._content_key(sha256))
        if obj is None or self._object_sha256(obj) != sha256 or (size is not None and obj.size != size):
            return None
        return obj

    # -- upload ---------------------------------------------------------------------------------------

    def partial_path(self, folder: str, name: str) -> Path:
        partial = self._partial(folder, name)
        partial.parent.mkdir(parents=True, exist_ok=True)
        return partial

    def commit(
        self, folder: str, name: str, *, sha256: str, progress: ProgressCallback | None = None
    ) -> None:
        """Uploads the partial file, then removes it (and its sidecar).

        With a digest the bytes go to the content key `.store/sha256/<hex>`, unless that content is stored
        already (same size and digest: then nothing is sent), and the binary becomes a pointer to it.
        Without one the binary is a plain object holding the bytes. Content the binary named before is
        freed when no other binary names it.

        Files up to one part go up in a single PUT. Larger ones use a multipart upload whose id and
        finished parts (number -> etag) are recorded in `<partial>.upload.json` after every part. A later
        commit of the same, unchanged partial (same size, mtime and sha256) reads that sidecar, asks the
        server which parts it really holds (ListParts), keeps those whose etag and size agree and uploads
        only the rest. Nothing is aborted on failure, precisely so that it can be resumed.
        """
        expected = check_sha256(sha256)
        key = self._key(folder, name)
        partial = self.partial_path(folder, name)
        sidecar = self._upload_sidecar(partial)
        self._ensure_bucket()
        with locked_partial(partial) as fd:
            staged = _Staged(fd, os.fstat(fd), sidecar, progress)
            with _s3_errors(f"uploading {key}"):
                old = self._stat_object(key)
                previous = _pointer_of(old.metadata) if old is not None else None
                if expected:
                    reported = self._commit_content(staged, key, expected, previous)
                else:
                    reported = self._upload(staged, key, "")
                    self._check_uploaded(key, staged.st.st_size)
            sidecar.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        if progress is not None and not reported:
            progress(staged.st.st_size)
        if previous is not None and previous.sha256 != expected:
            with _s3_errors(f"freeing the content {key} named before"):
                self._release(previous.sha256)

    def _commit_content(self, staged: _Staged, key: str, sha256: str, previous: _Pointer | None) -> bool:
        """Stores content `sha256` from the partial unless it is there already, then points `key` at it;
        True when `progress` was told along the way."""
        content_key = self._content_key(sha256)
        size = staged.st.st_size
        target = _Pointer(sha256, size)
        reported = False
        for attempt in range(3):
            if self._content(sha256, size) is None:
                reported = self._upload(staged, content_key, sha256) or reported
                self._check_uploaded(content_key, size)
            else:
                # Stored already (by another folder, or by this commit before a crash ahead of the
                # cleanup): nothing to send, only an upload left behind to drop.
                recorded = self._recorded_upload(staged.sidecar)
                if recorded is not None:
                    self._abort_quietly(*recorded)
            if attempt or previous != target:
                self._put_pointer(key, target)
            # A delete of the last other binary naming this content, in another process, may have freed
            # it between the check above and the pointer: then it goes up again from the partial.
            if self._content(sha256, size) is not None:
                return reported
        raise StorageError(f"uploading {content_key}: the content was freed again as soon as it was stored")

    def _upload(self, staged: _Staged, key: str, sha256: str) -> bool:
        """Sends the partial file to `key`; True when `progress` was told along the way."""
        if staged.st.st_size <= self.settings.s3_part_size and not staged.sidecar.exists():
            self._put_single(staged.fd, key, staged.st.st_size, sha256)
            return False
        self._put_multipart(staged, key, sha256)
        return True

    def _check_uploaded(self, key: str, size: int) -> None:
        obj = self._stat_object(key)
        if obj is None or obj.size != size:
            raise StorageError(
                f"uploading {key}: the bucket holds {None if obj is None else obj.size} bytes, "
                f"expected {size}"
            )

    def _put_pointer(self, key: str, pointer: _Pointer) -> None:
        body = json.dumps({"sha256": pointer.sha256, "size": pointer.size}, separators=(",", ":"))
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": "application/json",
            _META_SHA256: pointer.sha256,
            _META_SIZE: str(pointer.size),
        }
        self.client._put_object(self.bucket, key, body.encode(), headers)

    def _headers(self, sha256: str) -> dict[str, str | list[str] | tuple[str]]:
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": "application/octet-stream"}
        if sha256:
            headers["x-amz-meta-sha256"] = sha256
        return headers

    def _recorded_upload(self, sidecar: Path) -> tuple[str, str] | None:
        """(key, upload id) of the multipart upload a sidecar records: it belongs to that partial alone."""
        state = read_json(sidecar)
        if state is None or state.get("bucket") != self.bucket:
            return None
        key, upload_id = state.get("key"), state.get("upload_id")
        return (key, upload_id) if isinstance(key, str) and isinstance(upload_id, str) else None

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

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client._abort_multipart_upload(self.bucket, key, upload_id)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        # Best effort: an upload we cannot abort only costs space until the bucket's lifecycle rule.
        with contextlib.suppress(MinioException, urllib3.exceptions.HTTPError, ValueError):
            self.client._abort_multipart_upload(self.bucket, key, upload_id)

    def _put_multipart(self, staged: _Staged, key: str, sha256: str) -> None:
        fd, st, sidecar, progress = staged
        size = st.st_size
        identity = {"bucket": self.bucket, "key": key, "size": size, "mtime_ns": st.st_mtime_ns}
        state = read_json(sidecar)
        done: dict[int, str] = {}
        if state is not None:
            same = state.get("version") == _UPLOAD_STATE_VERSION and state.get("sha256") == sha256
            same = same and all(state.get(k) == v for k, v in identity.items())
            if not same or not isinstance(state.get("upload_id"), str):
                # The partial was replaced since (a new download), or this commit now targets another
                # key: its old upload is worthless.
                recorded = self._recorded_upload(sidecar)
                if recorded is not None:
                    self._abort_quietly(*recorded)
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

    def _uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of the multipart uploads in progress under `prefix`: a single page of up to
        1000, as the SDK's pagination of this listing is broken."""
        result = self.client._list_multipart_uploads(self.bucket, prefix=prefix, max_uploads=1000)
        return [(u.object_name, u.upload_id) for u in result.uploads if u.object_name and u.upload_id]

    def pending_uploads(self) -> list[str]:
        """The keys of the multipart uploads in progress under the prefix, one per upload, sorted: what
        interrupted commits hold in the bucket until they are resumed, aborted or expire."""
        self._ensure_bucket()
        with _s3_errors(f"listing the uploads in {self.bucket}/{self._root}"):
            return sorted(key for key, _ in self._uploads(self._root))

    def stat(self, folder: str, name: str) -> int | None:
        key = self._key(folder, name)
        self._ensure_bucket()
        with _s3_errors(f"looking up {key}"):
            obj = self._stat_object(key)
        if obj is None:
            return None
        pointer = _pointer_of(obj.metadata)
        return obj.size if pointer is None else pointer.size

    def _objects(self, prefix: str) -> Iterator[tuple[str, Object]]:
        """(key below the storage prefix, object) of each object under `prefix`; the SDK follows the
        pagination."""
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.is_dir or not obj.object_name or obj.size is None:
                continue
            yield obj.object_name[len(self._root) :], obj

    def _binary(self, relative: str, obj: Object) -> _Binary | None:
        """The folder binary a listed object is; None for a key not shaped <folder>/<name> (a content, or
        something we did not write: ignored rather than failed on) and for an object gone since."""
        parts = relative.split("/")
        if len(parts) != 2 or not is_valid_name(parts[0]) or not is_valid_name(parts[1]):
            return None
        size = int(obj.size or 0)
        if size <= _POINTER_MAX_BYTES:
            key = str(obj.object_name)
            with self._small_lock:
                known = self._small.get(key)
            if known is None or not obj.etag or known[0] != obj.etag:
                head = self._stat_object(key)
                if head is None:
                    return None
                known = (str(head.etag or ""), _pointer_of(head.metadata))
                if known[0]:
                    with self._small_lock:
                        self._small[key] = known
            if known[1] is not None:
                return _Binary(parts[0], parts[1], known[1].size, known[1].sha256)
        return _Binary(parts[0], parts[1], size, "")

    def _binaries(self, prefix: str) -> Iterator[_Binary]:
        for relative, obj in self._objects(prefix):
            binary = self._binary(relative, obj)
            if binary is not None:
                yield binary

    def list_folder(self, folder: str) -> dict[str, int]:
        prefix = self._folder_prefix(folder)
        self._ensure_bucket()
        with _s3_errors(f"listing {prefix}"):
            return {b.name: b.size for b in self._binaries(prefix) if b.folder == folder}

    def list_all(self) -> dict[str, dict[str, int]]:
        self._ensure_bucket()
        result: dict[str, dict[str, int]] = {}
        with _s3_errors(f"listing {self.bucket}/{self._root}"):
            for binary in self._binaries(self._root):
                result.setdefault(binary.folder, {})[binary.name] = binary.size
        return result

    def usage(self) -> StorageUsage:
        self._ensure_bucket()
        stored = contents = binary_bytes = binaries = 0
        with _s3_errors(f"listing {self.bucket}/{self._root}"):
            for relative, obj in self._objects(self._root):
                if relative.startswith(_STORE):
                    if SHA256_RE.match(relative[len(_STORE) :]):
                        stored += int(obj.size or 0)
                        contents += 1
                    continue
                binary = self._binary(relative, obj)
                if binary is None:
                    continue
                binaries += 1
                binary_bytes += binary.size
                if not binary.sha256:  # a plain object holds its bytes itself
                    stored += binary.size
                    contents += 1
        return StorageUsage(stored, contents, binary_bytes, binaries)

    def free_bytes(self, folder: str) -> int | None:
        check_name(folder, "folder")
        if not self.settings.s3_quota_bytes:
            return None  # S3 reports no capacity: only a configured quota gives a number
        return max(0, self.settings.s3_quota_bytes - self.usage().stored_bytes)

    # -- content addressing ---------------------------------------------------------------------------

    def has_content(self, sha256: str) -> bool:
        digest = check_sha256(sha256)
        if not digest:
            return False
        self._ensure_bucket()
        with _s3_errors(f"looking up content {digest}"):
            return self._content(digest) is not None

    def link_content(self, folder: str, name: str, sha256: str) -> bool:
        key = self._key(folder, name)
        digest = check_sha256(sha256)
        if not digest:
            return False
        self._ensure_bucket()
        with _s3_errors(f"linking {key} to content {digest}"):
            content = self._content(digest)
            if content is None:
                return False
            target = _Pointer(digest, int(content.size or 0))
            old = self._stat_object(key)
            previous = _pointer_of(old.metadata) if old is not None else None
            if previous != target:
                self._put_pointer(key, target)
            if self._content(digest) is None:
                # Freed by a delete in another process between the check and the pointer (see
                # `_release`): the pointer would name nothing, so it goes and the caller downloads.
                self.client.remove_object(self.bucket, key)
                return False
            if previous is not None and previous.sha256 != digest:
                self._release(previous.sha256)
        return True

    def _release(self, sha256: str) -> None:
        """Removes content `sha256` when no binary points to it any more.

        S3 offers no transaction to make this safe against a commit or link_content of the same content
        in another process: one that writes its pointer after our listing and checks the content before
        our removal loses it. Both check the content after writing their pointer (a commit uploads it
        again, a link is undone), so the window is one LIST and one DELETE long. The listing after the
        removal catches what slips through: such pointers are logged and removed, so that the binary
        shows as absent (to be downloaded again) rather than present and unreadable.
        """
        if any(b.sha256 == sha256 for b in self._binaries(self._root)):
            return
        content_key = self._content_key(sha256)
        self.client.remove_object(self.bucket, content_key)
        late = [b for b in self._binaries(self._root) if b.sha256 == sha256]
        if late and self._content(sha256) is None:
            for binary in late:
                log.error(
                    "%s/%s was linked to content %s while it was freed: the binary must be downloaded again",
                    binary.folder,
                    binary.name,
                    sha256,
                )
                self.client.remove_object(self.bucket, self._key(binary.folder, binary.name))

    # -- delete ---------------------------------------------------------------------------------------

    def delete(self, folder: str, name: str) -> None:
        key = self._key(folder, name)
        self._ensure_bucket()
        with _s3_errors(f"deleting {key}"):
            obj = self._stat_object(key)
            pointer = _pointer_of(obj.metadata) if obj is not None else None
            self.client.remove_object(self.bucket, key)  # S3 deletes are idempotent
            with self._small_lock:
                self._small.pop(key, None)
            # Uploads in progress hold storage too and would otherwise resurrect the binary on commit.
            # A plain binary's go to its own key (which rarely has more than a couple of them).
            for upload_key, upload_id in self._uploads(key):
                if upload_key == key:
                    self._abort(key, upload_id)
            # A content's go to the content key, which other folders' commits may be uploading too: only
            # the upload this binary's own partial records is aborted. That sidecar is local, so an
            # upload run by another machine (its own staging directory) is not stopped by this delete.
            recorded = self._recorded_upload(self._upload_sidecar(self._partial(folder, name)))
            if recorded is not None:
                self._abort(*recorded)
            if pointer is not None:
                self._release(pointer.sha256)
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

    def _missing_content(self, folder: str, name: str, sha256: str) -> StorageError:
        return StorageError(
            f"{folder}/{name} points to content {sha256}, which is missing from bucket {self.bucket} "
            f"({self._content_key(sha256)}): download it again"
        )

    def iter_binary(self, folder: str, name: str) -> Iterator[bytes]:
        key = self._key(folder, name)
        with _s3_errors(f"reading {key}"):
            response = self.client.get_object(self.bucket, key)
            pointer = _pointer_of(response.headers)
            if pointer is not None:
                # The bytes are those of the content it names.
                response.close()
                response.release_conn()
                try:
                    response = self.client.get_object(self.bucket, self._content_key(pointer.sha256))
                except S3Error as exc:
                    if exc.code in _MISSING:
                        raise self._missing_content(folder, name, pointer.sha256) from exc
                    raise
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

        A pointer is read through: the content object is downloaded and checked against the digest the
        pointer names. The download goes to the hidden `.<name>.part`, with `.<name>.part.json` recording
        the object's etag and size; an interrupted download resumes with a ranged GET from the partial's
        length when the object is unchanged (the bytes already there are re-hashed, not re-fetched). The
        result is checked against `sha256`, else the pointer's digest, else the object's `sha256`
        metadata, else its size only. The marker `.<name>.sha256` (digest, etag, size) is written before
        the rename into place, so a file at the final path always has one; a later call that finds file
        and marker matching the object returns at once without downloading.
        """
        expected = check_sha256(sha256)
        key = self._key(folder, name)
        self._ensure_bucket()
        with _s3_errors(f"looking up {key}"):
            obj = self._stat_object(key)
            pointer = _pointer_of(obj.metadata) if obj is not None else None
            if pointer is not None:
                if expected and expected != pointer.sha256:
                    # Fail before fetching gigabytes that cannot match.
                    raise StorageError(
                        f"{key} points to content sha256 {pointer.sha256}, expected {expected}"
                    )
                expected = pointer.sha256
                key = self._content_key(pointer.sha256)
                obj = self._stat_object(key)
                if obj is None:
                    raise self._missing_content(folder, name, pointer.sha256)
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
