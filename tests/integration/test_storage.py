"""The model storage backends: one contract run against local disk and a real S3 server (moto), plus the
S3 crash/resume paths (multipart commit, ranged-GET materialize)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio import Minio

from services.common.envsettings import SettingsError
from services.common.storage import (
    LocalStorage,
    MiB,
    S3Storage,
    Storage,
    StorageError,
    StorageSettings,
    make_storage,
)

FOLDER = "tinyllama"
NAME = "tinyllama-Q4_K_M.gguf"


class SimulatedCrash(Exception):
    """Stands for the process dying in the middle of an S3 operation."""


class SpyMinio(Minio):
    """A real client that records the requests that matter and can fail on cue."""

    def __init__(self, *args: Any, crash_on_part_call: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash_on_part_call = crash_on_part_call
        self.break_stream_after: int | None = None
        self.parts: list[int] = []  # part numbers sent, in order
        self.gets: list[int] = []  # offset of every GET of object data
        self.get_keys: list[str] = []  # and its key
        self.puts = 0  # single-request uploads (not counting parts)
        self.put_keys: list[str] = []  # their keys, in order
        self.creates = 0  # multipart uploads started
        self.heads: list[str] = []  # keys of every HEAD (stat_object)

    def _upload_part(self, bucket_name, object_name, data, headers, upload_id, part_number):  # type: ignore[no-untyped-def]
        if self.crash_on_part_call is not None and len(self.parts) + 1 >= self.crash_on_part_call:
            raise SimulatedCrash(f"crash before part {part_number}")
        self.parts.append(part_number)
        return super()._upload_part(bucket_name, object_name, data, headers, upload_id, part_number)

    def _put_object(self, bucket_name, object_name, data, headers=None, query_params=None):  # type: ignore[no-untyped-def]
        if not query_params:  # parts go through here too, with uploadId in the query
            self.puts += 1
            self.put_keys.append(object_name)
        return super()._put_object(bucket_name, object_name, data, headers, query_params)

    def _create_multipart_upload(self, bucket_name, object_name, headers):  # type: ignore[no-untyped-def]
        self.creates += 1
        return super()._create_multipart_upload(bucket_name, object_name, headers)

    def stat_object(self, bucket_name, object_name, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.heads.append(object_name)
        return super().stat_object(bucket_name, object_name, *args, **kwargs)

    def get_object(self, bucket_name, object_name, offset=0, length=0, **kwargs):  # type: ignore[no-untyped-def]
        self.gets.append(offset)
        self.get_keys.append(object_name)
        response = super().get_object(bucket_name, object_name, offset=offset, length=length, **kwargs)
        limit = self.break_stream_after
        if limit is not None:
            real_stream = response.stream

            def broken(amt: int = 65536, decode_content: bool | None = None):  # type: ignore[no-untyped-def]
                sent = 0
                for chunk in real_stream(amt, decode_content):
                    piece = chunk[: limit - sent]
                    sent += len(piece)
                    yield piece
                    if sent >= limit:
                        raise urllib3.exceptions.ProtocolError("connection reset by peer (simulated)")

            response.stream = broken  # type: ignore[method-assign]
        return response


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(
    storage: Storage, folder: str, name: str, data: bytes, *, digest: str | None = None, **kw: Any
) -> None:
    """What the downloader does: fill the partial file, then commit it."""
    storage.partial_path(folder, name).write_bytes(data)
    storage.commit(folder, name, sha256=sha(data) if digest is None else digest, **kw)


@dataclass
class S3Env:
    endpoint: str
    tmp: Path
    bucket: str

    def settings(self, **overrides: Any) -> StorageSettings:
        values: dict[str, Any] = {
            "backend": "s3",
            "s3_endpoint": self.endpoint,
            "s3_secure": False,
            "s3_bucket": self.bucket,
            "s3_prefix": "jan/models",
            "s3_access_key": "test",
            "s3_secret_key": "test",
            "s3_region": "us-east-1",
            "s3_part_size": 5 * MiB,
            **overrides,
        }
        return StorageSettings(**values)

    def client(self, **kw: Any) -> SpyMinio:
        return SpyMinio(self.endpoint, "test", "test", secure=False, region="us-east-1", **kw)

    def storage(self, client: SpyMinio | None = None, **overrides: Any) -> S3Storage:
        """A fresh S3Storage, as a restarted process would build it (same bucket, staging and cache)."""
        return S3Storage(
            self.settings(**overrides),
            staging_dir=self.tmp / "root" / ".downloads" / "staging",
            cache_dir=self.tmp / "root" / "cache",
            client=client or self.client(),
        )


@pytest.fixture
def s3env(moto_s3: str, tmp_path: Path) -> S3Env:
    # One bucket per test keeps tests independent on the shared server.
    return S3Env(moto_s3, tmp_path, f"jan-{uuid.uuid4().hex[:16]}")


@dataclass
class Backend:
    storage: Storage
    root: Path
    spy: SpyMinio | None = None

    def cache_names(self, folder: str) -> list[str]:
        """Non-hidden files in the materialize cache (S3): anything a runner could mistake for a model."""
        directory = self.root / "cache" / folder
        return (
            sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
            if directory.exists()
            else []
        )


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        root = tmp_path / "root"
        return Backend(LocalStorage(root / "models"), root)
    env = S3Env(request.getfixturevalue("moto_s3"), tmp_path, f"jan-{uuid.uuid4().hex[:16]}")
    spy = env.client()
    return Backend(env.storage(spy), tmp_path / "root", spy)


# -- the contract, on both backends -----------------------------------------------------------------


def test_partial_path_is_hidden_and_not_listed(backend: Backend) -> None:
    partial = backend.storage.partial_path(FOLDER, NAME)
    assert partial.name.startswith(".") and partial.name.endswith(".part")
    assert partial.parent.is_dir()
    assert partial.is_relative_to(backend.root)
    if backend.storage.kind == "local":
        # Same directory as the binary, so commit is a rename on one filesystem.
        assert partial.parent == backend.root / "models" / FOLDER
    else:
        assert partial.parent == backend.root / ".downloads" / "staging" / FOLDER
    partial.write_bytes(b"half a model")
    assert backend.storage.stat(FOLDER, NAME) is None
    assert backend.storage.list_folder(FOLDER) == {}
    assert backend.storage.list_all() == {}


def test_commit_makes_the_binary_visible(backend: Backend) -> None:
    data = os.urandom(300_000)
    seen: list[int] = []
    put(backend.storage, FOLDER, NAME, data, progress=seen.append)
    assert backend.storage.stat(FOLDER, NAME) == len(data)
    assert backend.storage.list_folder(FOLDER) == {NAME: len(data)}
    assert not backend.storage.partial_path(FOLDER, NAME).exists()
    assert seen and seen[-1] == len(data)
    assert backend.storage.materialize(FOLDER, NAME).read_bytes() == data


def test_commit_without_a_partial_file_fails(backend: Backend) -> None:
    with pytest.raises(StorageError, match="nothing to commit"):
        backend.storage.commit(FOLDER, NAME, sha256="")


def test_stat_and_listings(backend: Backend) -> None:
    put(backend.storage, "a", "one.gguf", b"1" * 10)
    put(backend.storage, "a", "two.gguf", b"2" * 20)
    put(backend.storage, "b", "three.gguf", b"3" * 30)
    if backend.storage.kind == "local":
        # Model objects and hidden files share the folder in local mode; neither is a binary.
        (backend.root / "models" / "a" / "one.json").write_text("{}")
        (backend.root / "models" / "a" / ".notes").write_text("x")
        (backend.root / "models" / "empty").mkdir()
    assert backend.storage.stat("a", "one.gguf") == 10
    assert backend.storage.stat("a", "missing.gguf") is None
    assert backend.storage.stat("nowhere", "one.gguf") is None
    assert backend.storage.list_folder("a") == {"one.gguf": 10, "two.gguf": 20}
    assert backend.storage.list_folder("nowhere") == {}
    assert backend.storage.list_all() == {"a": {"one.gguf": 10, "two.gguf": 20}, "b": {"three.gguf": 30}}


def test_delete(backend: Backend) -> None:
    put(backend.storage, FOLDER, NAME, b"x" * 100)
    put(backend.storage, FOLDER, "other.gguf", b"y" * 5)
    backend.storage.materialize(FOLDER, NAME)
    backend.storage.delete(FOLDER, NAME)
    assert backend.storage.stat(FOLDER, NAME) is None
    assert backend.storage.list_all() == {FOLDER: {"other.gguf": 5}}
    assert backend.cache_names(FOLDER) == []  # the S3 cache copy went with it
    backend.storage.delete(FOLDER, NAME)  # absent: no error
    backend.storage.delete("nowhere", NAME)
    with pytest.raises(StorageError):
        backend.storage.materialize(FOLDER, NAME)


def test_free_bytes(backend: Backend) -> None:
    free = backend.storage.free_bytes("not-yet-created")
    if backend.storage.kind == "local":
        assert isinstance(free, int) and free > 0
    else:
        assert free is None  # no quota configured: S3 cannot tell


def test_materialize_downloads_once(backend: Backend) -> None:
    data = os.urandom(2 * MiB + 123)
    put(backend.storage, FOLDER, NAME, data)
    first = backend.storage.materialize(FOLDER, NAME, sha256=sha(data))
    assert first.read_bytes() == data
    mtime = first.stat().st_mtime_ns
    second = backend.storage.materialize(FOLDER, NAME, sha256=sha(data))
    third = backend.storage.materialize(FOLDER, NAME)
    assert first == second == third
    assert second.stat().st_mtime_ns == mtime
    if backend.spy is not None:
        assert backend.spy.gets == [0]
        assert first == backend.root / "cache" / FOLDER / NAME
    else:
        assert first == backend.root / "models" / FOLDER / NAME


def test_materialize_with_a_wrong_sha256(backend: Backend) -> None:
    data = os.urandom(100_000)
    put(backend.storage, FOLDER, NAME, data)
    with pytest.raises(StorageError, match="sha256"):
        backend.storage.materialize(FOLDER, NAME, sha256="0" * 64)
    assert backend.cache_names(FOLDER) == []
    # The stored binary itself is untouched.
    assert backend.storage.materialize(FOLDER, NAME, sha256=sha(data)).read_bytes() == data


def test_materialize_missing_binary(backend: Backend) -> None:
    with pytest.raises(StorageError, match="missing"):
        backend.storage.materialize(FOLDER, NAME)


BAD_NAMES = ["", ".", "..", ".hidden", "a/b", "../up", "a\\b", "nul\x00byte", "line\nbreak", "x" * 201]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_folder_or_name_is_refused(backend: Backend, bad: str) -> None:
    s = backend.storage
    calls: list[Callable[[str, str], object]] = [
        s.partial_path,
        lambda f, n: s.commit(f, n, sha256=""),
        s.stat,
        s.delete,
        s.materialize,
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call(bad, NAME)
        with pytest.raises(ValueError):
            call(FOLDER, bad)
    for folder_call in (s.list_folder, s.free_bytes):
        with pytest.raises(ValueError):
            folder_call(bad)


def test_malformed_sha256_is_refused(backend: Backend) -> None:
    backend.storage.partial_path(FOLDER, NAME).write_bytes(b"x")
    with pytest.raises(ValueError, match="sha256"):
        backend.storage.commit(FOLDER, NAME, sha256="not-a-digest")
    with pytest.raises(ValueError, match="sha256"):
        backend.storage.materialize(FOLDER, NAME, sha256="abc")


# -- S3: multipart commit and its resumption ----------------------------------------------------------

BIG = 12 * MiB + 4321  # three parts of 5 MiB, 5 MiB and ~2 MiB


def sidecar_of(storage: Storage) -> Path:
    partial = storage.partial_path(FOLDER, NAME)
    return partial.with_name(partial.name + ".upload.json")


def test_multipart_commit_resumes_after_a_crash(s3env: S3Env) -> None:
    data = os.urandom(BIG)
    first = s3env.storage(s3env.client(crash_on_part_call=2))
    first.partial_path(FOLDER, NAME).write_bytes(data)
    with pytest.raises(SimulatedCrash):
        first.commit(FOLDER, NAME, sha256=sha(data))
    state = json.loads(sidecar_of(first).read_text())
    assert list(state["parts"]) == ["1"]
    assert state["part_size"] == 5 * MiB
    assert first.stat(FOLDER, NAME) is None  # nothing visible before completion

    # A new process: it must find the upload, confirm part 1 with ListParts and send only parts 2-3.
    spy = s3env.client()
    second = s3env.storage(spy)
    seen: list[int] = []
    second.commit(FOLDER, NAME, sha256=sha(data), progress=seen.append)
    assert spy.parts == [2, 3]
    assert spy.creates == 0
    assert seen[0] == 5 * MiB and seen[-1] == BIG  # resumed bytes are reported first
    assert second.stat(FOLDER, NAME) == BIG
    assert not second.partial_path(FOLDER, NAME).exists()
    assert not sidecar_of(second).exists()
    # The bytes went to the content key; the binary points to them.
    content = second.client.stat_object(s3env.bucket, f"jan/models/.store/sha256/{sha(data)}")
    assert (content.size, content.metadata["x-amz-meta-sha256"]) == (BIG, sha(data))
    pointer = second.client.stat_object(s3env.bucket, f"jan/models/{FOLDER}/{NAME}")
    assert pointer.metadata["x-amz-meta-jan-sha256"] == sha(data)
    path = second.materialize(FOLDER, NAME, sha256=sha(data))
    assert path.read_bytes() == data


def test_resume_reuploads_parts_the_server_does_not_confirm(s3env: S3Env) -> None:
    data = os.urandom(BIG)
    first = s3env.storage(s3env.client(crash_on_part_call=2))
    first.partial_path(FOLDER, NAME).write_bytes(data)
    with pytest.raises(SimulatedCrash):
        first.commit(FOLDER, NAME, sha256=sha(data))
    # The sidecar claims a part that ListParts does not show with that etag: it must be sent again.
    sidecar = sidecar_of(first)
    state = json.loads(sidecar.read_text())
    state["parts"]["2"] = "0123456789abcdef0123456789abcdef"
    sidecar.write_text(json.dumps(state))
    spy = s3env.client()
    s3env.storage(spy).commit(FOLDER, NAME, sha256=sha(data))
    assert spy.parts == [2, 3]
    assert s3env.storage().materialize(FOLDER, NAME).read_bytes() == data


def test_a_changed_partial_starts_a_new_upload(s3env: S3Env) -> None:
    old = os.urandom(BIG)
    first = s3env.storage(s3env.client(crash_on_part_call=2))
    first.partial_path(FOLDER, NAME).write_bytes(old)
    with pytest.raises(SimulatedCrash):
        first.commit(FOLDER, NAME, sha256=sha(old))
    new = os.urandom(BIG)  # a fresh download replaced the partial: the old parts must not be reused
    spy = s3env.client()
    storage = s3env.storage(spy)
    put(storage, FOLDER, NAME, new)
    assert spy.creates == 1 and spy.parts == [1, 2, 3]
    assert storage.materialize(FOLDER, NAME).read_bytes() == new
    assert storage.pending_uploads() == []  # the stale upload was aborted


def test_delete_aborts_an_upload_in_progress(s3env: S3Env) -> None:
    data = os.urandom(BIG)
    first = s3env.storage(s3env.client(crash_on_part_call=2))
    first.partial_path(FOLDER, NAME).write_bytes(data)
    with pytest.raises(SimulatedCrash):
        first.commit(FOLDER, NAME, sha256=sha(data))
    storage = s3env.storage()
    assert storage.pending_uploads() == [f"jan/models/.store/sha256/{sha(data)}"]
    storage.delete(FOLDER, NAME)
    assert storage.pending_uploads() == []
    # The sidecar now names an aborted upload: the next commit notices and starts over.
    spy = s3env.client()
    s3env.storage(spy).commit(FOLDER, NAME, sha256=sha(data))
    assert spy.parts == [1, 2, 3]
    assert storage.stat(FOLDER, NAME) == BIG


def test_commit_after_a_crash_between_upload_and_cleanup(s3env: S3Env) -> None:
    data = os.urandom(1000)
    put(s3env.storage(), FOLDER, NAME, data)
    # The partial is still there on restart (crash before its removal): no second upload.
    spy = s3env.client()
    put(s3env.storage(spy), FOLDER, NAME, data)
    assert spy.puts == 0 and spy.creates == 0 and spy.parts == []
    assert s3env.storage().stat(FOLDER, NAME) == 1000


# -- S3: materialize ----------------------------------------------------------------------------------


def test_interrupted_materialize_resumes_with_a_ranged_get(s3env: S3Env) -> None:
    data = os.urandom(3 * MiB + 17)
    put(s3env.storage(), FOLDER, NAME, data)
    broken = s3env.client()
    broken.break_stream_after = MiB + 5
    with pytest.raises(StorageError, match="downloading"):
        s3env.storage(broken).materialize(FOLDER, NAME, sha256=sha(data))
    cache = s3env.tmp / "root" / "cache" / FOLDER
    assert not (cache / NAME).exists()
    assert (cache / f".{NAME}.part").stat().st_size == MiB + 5
    spy = s3env.client()
    path = s3env.storage(spy).materialize(FOLDER, NAME, sha256=sha(data))
    assert spy.gets == [MiB + 5]
    assert path.read_bytes() == data
    assert not (cache / f".{NAME}.part").exists()
    assert json.loads((cache / f".{NAME}.sha256").read_text())["sha256"] == sha(data)


def test_materialize_checks_the_object_sha256_metadata(s3env: S3Env) -> None:
    data = os.urandom(50_000)
    storage = s3env.storage()
    put(storage, FOLDER, NAME, data, digest=sha(b"something else"))
    with pytest.raises(StorageError, match="sha256"):
        storage.materialize(FOLDER, NAME)
    assert not (s3env.tmp / "root" / "cache" / FOLDER / NAME).exists()


def test_wrong_sha256_found_after_download_leaves_nothing(s3env: S3Env) -> None:
    data = os.urandom(50_000)
    spy = s3env.client()
    storage = s3env.storage(spy)
    put(storage, FOLDER, NAME, data, digest="")  # no metadata: only the download can tell
    with pytest.raises(StorageError, match="sha256"):
        storage.materialize(FOLDER, NAME, sha256="1" * 64)
    assert spy.gets == [0]
    cache = s3env.tmp / "root" / "cache" / FOLDER
    assert sorted(p.name for p in cache.iterdir()) == [f".{NAME}.lock"]
    # Without any digest, the size is the check.
    assert storage.materialize(FOLDER, NAME).read_bytes() == data


def test_a_replaced_object_is_downloaded_again(s3env: S3Env) -> None:
    spy = s3env.client()
    storage = s3env.storage(spy)
    put(storage, FOLDER, NAME, b"a" * 1000, digest="")
    assert storage.materialize(FOLDER, NAME).read_bytes() == b"a" * 1000
    put(storage, FOLDER, NAME, b"b" * 1000, digest="")  # same size, no digest: the etag tells
    assert storage.materialize(FOLDER, NAME).read_bytes() == b"b" * 1000
    assert spy.gets == [0, 0]


# -- S3: listing, quota, settings ---------------------------------------------------------------------


def test_list_all_ignores_keys_outside_the_layout(s3env: S3Env) -> None:
    storage = s3env.storage()
    put(storage, FOLDER, NAME, b"m" * 10)
    client = storage.client
    for key in ("other/file.gguf", "jan/models/top-level.gguf", "jan/models/a/b/deep.gguf"):
        client.put_object(s3env.bucket, key, io.BytesIO(b"x"), 1)
    assert storage.list_all() == {FOLDER: {NAME: 10}}


def test_free_bytes_with_a_quota(s3env: S3Env) -> None:
    storage = s3env.storage(s3_quota_bytes=1_000_000)
    assert storage.free_bytes(FOLDER) == 1_000_000
    put(storage, FOLDER, NAME, b"q" * 300_000)
    assert storage.free_bytes(FOLDER) == 700_000


def test_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAN_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("JAN_STORAGE_S3_ENDPOINT", "minio:9000")
    monkeypatch.setenv("JAN_STORAGE_S3_PREFIX", "/jan/models/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk")
    settings = StorageSettings()
    assert (settings.backend, settings.s3_prefix) == ("s3", "jan/models")
    assert (settings.s3_access_key, settings.s3_secret_key.get_secret_value()) == ("ak", "sk")
    assert "sk" not in repr(settings)
    monkeypatch.setenv("JAN_STORAGE_S3_ACCESS_KEY", "own")
    assert StorageSettings().s3_access_key == "own"

    for bad in (
        {"s3_part_size": MiB},
        {"s3_endpoint": "http://minio:9000"},
        {"s3_endpoint": ""},
        {"s3_prefix": "a/../b"},
        {"s3_bucket": "Bad_Bucket"},
    ):
        with pytest.raises(SettingsError):
            StorageSettings(**bad)

    storage = make_storage(settings, tmp_path)
    assert isinstance(storage, S3Storage) and storage.kind == "s3"
    assert storage.partial_path("f", "m.gguf").parent == tmp_path / ".downloads" / "staging" / "f"
    assert storage.cache_dir == tmp_path / "cache"
    local = make_storage(StorageSettings(backend="local"), tmp_path)
    assert isinstance(local, LocalStorage) and local.models_dir == tmp_path / "models"
