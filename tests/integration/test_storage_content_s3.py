"""S3 content addressing against a real S3 server (moto): each content is stored once under
<prefix>/.store/sha256/<hex> and folder binaries point to it; plain objects from before keep working."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.common.storage import MiB, S3Storage, StorageError, StorageUsage
from tests.integration.test_storage import BIG, S3Env, SimulatedCrash, SpyMinio, put, sha

PREFIX = "jan/models"


@pytest.fixture
def s3env(moto_s3: str, tmp_path: Path) -> S3Env:
    return S3Env(moto_s3, tmp_path, f"jan-{uuid.uuid4().hex[:16]}")


def content_key(digest: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/.store/sha256/{digest}" if prefix else f".store/sha256/{digest}"


def keys(storage: S3Storage) -> list[str]:
    """Every object in the bucket."""
    return sorted(str(o.object_name) for o in storage.client.list_objects(storage.bucket, recursive=True))


# -- one copy per content ----------------------------------------------------------------------------


def test_two_folders_with_the_same_bytes_store_them_once(s3env: S3Env) -> None:
    data = os.urandom(300_000)
    spy = s3env.client()
    storage = s3env.storage(spy)
    put(storage, "a", "m.gguf", data)
    put(storage, "b", "copy.gguf", data)
    # The second commit sent no bytes: only its pointer.
    assert spy.put_keys == [content_key(sha(data)), f"{PREFIX}/a/m.gguf", f"{PREFIX}/b/copy.gguf"]
    assert keys(storage) == sorted([content_key(sha(data)), f"{PREFIX}/a/m.gguf", f"{PREFIX}/b/copy.gguf"])
    pointer = storage.client.stat_object(storage.bucket, f"{PREFIX}/b/copy.gguf")
    assert pointer.size is not None and pointer.size < 1024
    assert pointer.metadata["x-amz-meta-jan-sha256"] == sha(data)
    assert pointer.metadata["x-amz-meta-jan-size"] == str(len(data))
    # Sizes are the content's, never the pointer's.
    assert storage.stat("b", "copy.gguf") == len(data)
    assert storage.list_folder("a") == {"m.gguf": len(data)}
    assert storage.list_all() == {"a": {"m.gguf": len(data)}, "b": {"copy.gguf": len(data)}}
    assert storage.usage() == StorageUsage(
        stored_bytes=len(data), contents=1, binary_bytes=2 * len(data), binaries=2
    )
    assert storage.materialize("b", "copy.gguf", sha256=sha(data)).read_bytes() == data
    assert b"".join(storage.iter_binary("a", "m.gguf")) == data


def test_has_content_and_link_content(s3env: S3Env) -> None:
    data = os.urandom(100_000)
    storage = s3env.storage()
    assert storage.has_content(sha(data)) is False
    assert storage.has_content("") is False
    assert storage.link_content("b", "m.gguf", sha(data)) is False
    assert keys(storage) == []  # nothing changed
    put(storage, "a", "m.gguf", data)
    assert storage.has_content(sha(data).upper()) is True
    spy = s3env.client()
    linking = s3env.storage(spy)
    assert linking.link_content("b", "m.gguf", sha(data)) is True
    assert spy.put_keys == [f"{PREFIX}/b/m.gguf"] and spy.parts == []
    assert linking.stat("b", "m.gguf") == len(data)
    assert linking.materialize("b", "m.gguf", sha256=sha(data)).read_bytes() == data
    assert linking.link_content("b", "m.gguf", sha(data)) is True  # linked already: nothing written
    assert spy.put_keys == [f"{PREFIX}/b/m.gguf"]
    with pytest.raises(ValueError, match="sha256"):
        storage.has_content("not-a-digest")
    with pytest.raises(ValueError, match="sha256"):
        storage.link_content("b", "m.gguf", "abc")
    with pytest.raises(ValueError):
        storage.link_content(".store", "m.gguf", sha(data))


def test_delete_frees_the_content_with_its_last_binary(s3env: S3Env) -> None:
    data = os.urandom(200_000)
    storage = s3env.storage()
    put(storage, "a", "m.gguf", data)
    assert storage.link_content("b", "m.gguf", sha(data))
    storage.delete("a", "m.gguf")
    assert storage.stat("a", "m.gguf") is None
    assert storage.has_content(sha(data))
    assert storage.materialize("b", "m.gguf").read_bytes() == data
    assert storage.usage() == StorageUsage(len(data), 1, len(data), 1)
    storage.delete("b", "m.gguf")
    assert not storage.has_content(sha(data))
    assert keys(storage) == []
    assert storage.usage() == StorageUsage(0, 0, 0, 0)


def test_a_new_commit_of_a_binary_frees_the_content_it_named(s3env: S3Env) -> None:
    old, new = os.urandom(5000), os.urandom(7000)
    storage = s3env.storage()
    put(storage, "a", "m.gguf", old)
    put(storage, "b", "keep.gguf", new)
    assert storage.list_all() == {"a": {"m.gguf": 5000}, "b": {"keep.gguf": 7000}}
    put(storage, "a", "m.gguf", new)  # the same name, other bytes: linked to the stored content
    assert storage.list_all() == {"a": {"m.gguf": 7000}, "b": {"keep.gguf": 7000}}
    assert not storage.has_content(sha(old))
    put(storage, "a", "m.gguf", old, digest="")  # a plain object now; `new` is still b's
    assert storage.has_content(sha(new))
    assert storage.usage() == StorageUsage(12_000, 2, 12_000, 2)
    assert storage.materialize("a", "m.gguf").read_bytes() == old


def test_link_content_replacing_a_binary_frees_its_old_content(s3env: S3Env) -> None:
    old, new = os.urandom(3000), os.urandom(4000)
    storage = s3env.storage()
    put(storage, "a", "m.gguf", old)
    put(storage, "b", "m.gguf", new)
    assert storage.link_content("a", "m.gguf", sha(new))
    assert not storage.has_content(sha(old))
    assert storage.usage() == StorageUsage(4000, 1, 8000, 2)


# -- reading through a pointer ----------------------------------------------------------------------


def test_materialize_reads_the_content_through_the_pointer(s3env: S3Env) -> None:
    data = os.urandom(2 * MiB + 3)
    put(s3env.storage(), "a", "m.gguf", data)
    spy = s3env.client()
    storage = s3env.storage(spy)
    with pytest.raises(StorageError, match="sha256"):
        storage.materialize("a", "m.gguf", sha256="0" * 64)
    assert spy.gets == []  # refused before fetching anything
    path = storage.materialize("a", "m.gguf")  # the pointer's digest is the check
    assert path == s3env.tmp / "root" / "cache" / "a" / "m.gguf" and path.read_bytes() == data
    assert spy.get_keys == [content_key(sha(data))]
    assert storage.local_file("a", "m.gguf") == path
    assert storage.materialize("a", "m.gguf", sha256=sha(data)) == path
    assert spy.get_keys == [content_key(sha(data))]  # cached: not fetched again


def test_materialize_verifies_the_content_against_the_digest(s3env: S3Env) -> None:
    data = os.urandom(50_000)
    storage = s3env.storage()
    put(storage, "a", "m.gguf", data)
    # The content object rotted in the bucket, metadata and size unchanged.
    rotten = io.BytesIO(os.urandom(50_000))
    storage.client.put_object(
        storage.bucket, content_key(sha(data)), rotten, 50_000, metadata={"x-amz-meta-sha256": sha(data)}
    )
    with pytest.raises(StorageError, match="sha256"):
        storage.materialize("a", "m.gguf")
    assert storage.local_file("a", "m.gguf") is None


def test_a_pointer_whose_content_is_gone_is_a_clear_error(s3env: S3Env) -> None:
    data = os.urandom(1000)
    storage = s3env.storage()
    put(storage, "a", "m.gguf", data)
    storage.client.remove_object(storage.bucket, content_key(sha(data)))
    with pytest.raises(StorageError, match="missing"):
        storage.materialize("a", "m.gguf")
    with pytest.raises(StorageError, match="missing"):
        b"".join(storage.iter_binary("a", "m.gguf"))


# -- plain objects from before -----------------------------------------------------------------------


def test_plain_objects_keep_working(s3env: S3Env) -> None:
    big, small = os.urandom(300_000), b"tiny"
    storage = s3env.storage()
    client = storage.client
    put(storage, "new", "m.gguf", big)
    # What commit wrote before contents were shared: the bytes at the binary's own key.
    client.put_object(
        storage.bucket,
        f"{PREFIX}/old/big.gguf",
        io.BytesIO(big),
        len(big),
        metadata={"x-amz-meta-sha256": sha(big)},
    )
    client.put_object(storage.bucket, f"{PREFIX}/old/small.gguf", io.BytesIO(small), len(small))
    assert storage.stat("old", "big.gguf") == len(big)
    assert storage.list_folder("old") == {"big.gguf": len(big), "small.gguf": 4}
    assert storage.list_all() == {
        "old": {"big.gguf": len(big), "small.gguf": 4},
        "new": {"m.gguf": len(big)},
    }
    # Plain objects hold their own bytes, even when the same content is stored too.
    assert storage.usage() == StorageUsage(2 * len(big) + 4, 3, 2 * len(big) + 4, 3)
    assert storage.materialize("old", "big.gguf", sha256=sha(big)).read_bytes() == big
    with pytest.raises(StorageError, match="sha256"):
        storage.materialize("old", "big.gguf", sha256="1" * 64)
    assert b"".join(storage.iter_binary("old", "small.gguf")) == small
    storage.delete("old", "big.gguf")
    assert storage.stat("old", "big.gguf") is None
    assert storage.has_content(sha(big))  # the delete of a plain object frees no content
    # A commit without a digest still writes a plain object.
    put(storage, "old", "nodigest.gguf", b"n" * 10, digest="")
    obj = client.stat_object(storage.bucket, f"{PREFIX}/old/nodigest.gguf")
    assert obj.size == 10 and "x-amz-meta-jan-sha256" not in obj.metadata
    assert storage.list_folder("old") == {"small.gguf": 4, "nodigest.gguf": 10}


# -- uploads -----------------------------------------------------------------------------------------


def test_multipart_content_upload_resumes_after_a_crash(s3env: S3Env) -> None:
    data = os.urandom(BIG)
    first = s3env.storage(s3env.client(crash_on_part_call=2))
    first.partial_path("a", "m.gguf").write_bytes(data)
    with pytest.raises(SimulatedCrash):
        first.commit("a", "m.gguf", sha256=sha(data))
    partial = first.partial_path("a", "m.gguf")
    state = json.loads(partial.with_name(partial.name + ".upload.json").read_text())
    assert state["key"] == content_key(sha(data)) and list(state["parts"]) == ["1"]
    assert first.pending_uploads() == [content_key(sha(data))]
    assert first.stat("a", "m.gguf") is None and not first.has_content(sha(data))

    spy = s3env.client()
    second = s3env.storage(spy)
    second.commit("a", "m.gguf", sha256=sha(data))
    assert spy.parts == [2, 3] and spy.creates == 0
    assert second.stat("a", "m.gguf") == BIG and second.has_content(sha(data))
    assert second.pending_uploads() == []
    assert second.materialize("a", "m.gguf", sha256=sha(data)).read_bytes() == data


def test_delete_aborts_only_the_upload_of_its_own_partial(s3env: S3Env) -> None:
    data = os.urandom(BIG)
    for folder in ("a", "b"):  # two folders were uploading the same content when they crashed
        crashing = s3env.storage(s3env.client(crash_on_part_call=2))
        crashing.partial_path(folder, "m.gguf").write_bytes(data)
        with pytest.raises(SimulatedCrash):
            crashing.commit(folder, "m.gguf", sha256=sha(data))
    storage = s3env.storage()
    assert storage.pending_uploads() == [content_key(sha(data))] * 2
    storage.delete("a", "m.gguf")
    assert storage.pending_uploads() == [content_key(sha(data))]
    spy = s3env.client()
    s3env.storage(spy).commit("b", "m.gguf", sha256=sha(data))
    assert spy.parts == [2, 3]  # b's upload survived a's delete
    # a's partial is still there: its commit finds the content stored and sends nothing.
    spy = s3env.client()
    s3env.storage(spy).commit("a", "m.gguf", sha256=sha(data))
    assert spy.parts == [] and spy.put_keys == [f"{PREFIX}/a/m.gguf"]
    assert storage.pending_uploads() == []
    assert storage.usage() == StorageUsage(BIG, 1, 2 * BIG, 2)


# -- listings, quota ---------------------------------------------------------------------------------


def test_listings_read_pointers_once(s3env: S3Env) -> None:
    spy = s3env.client()
    storage = s3env.storage(spy)
    put(storage, "a", "one.gguf", b"1" * 2000)
    put(storage, "a", "two.gguf", b"2" * 3000)
    spy.heads.clear()
    assert storage.list_folder("a") == {"one.gguf": 2000, "two.gguf": 3000}
    assert sorted(spy.heads) == [f"{PREFIX}/a/one.gguf", f"{PREFIX}/a/two.gguf"]
    spy.heads.clear()
    assert storage.list_all() == {"a": {"one.gguf": 2000, "two.gguf": 3000}}
    assert storage.list_folder("a") == {"one.gguf": 2000, "two.gguf": 3000}
    assert spy.heads == []
    # Another process points one.gguf at other content: its etag changes, so the listing sees it.
    put(s3env.storage(), "a", "one.gguf", b"3" * 4000)
    assert storage.list_folder("a") == {"one.gguf": 4000, "two.gguf": 3000}
    assert spy.heads == [f"{PREFIX}/a/one.gguf"]


@pytest.mark.parametrize("prefix", [PREFIX, ""])
def test_the_store_is_never_a_folder(s3env: S3Env, prefix: str) -> None:
    storage = s3env.storage(s3_prefix=prefix)
    put(storage, "a", "m.gguf", b"x" * 100)
    assert content_key(sha(b"x" * 100), prefix) in keys(storage)
    assert storage.list_all() == {"a": {"m.gguf": 100}}
    assert storage.usage() == StorageUsage(100, 1, 100, 1)


def test_free_bytes_counts_each_content_once(s3env: S3Env) -> None:
    storage = s3env.storage(s3_quota_bytes=1_000_000)
    data = b"q" * 300_000
    put(storage, "a", "m.gguf", data)
    put(storage, "b", "m.gguf", data)
    assert storage.link_content("c", "m.gguf", sha(data))
    assert storage.free_bytes("a") == 700_000


# -- another process freeing the content meanwhile ---------------------------------------------------


class FreeingMinio(SpyMinio):
    """Removes the content object right after a pointer is written, as a concurrent delete would."""

    def __init__(self, *args: Any, content: str, times: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.content, self.times = content, times

    def _put_object(self, bucket_name, object_name, data, headers=None, query_params=None):  # type: ignore[no-untyped-def]
        result = super()._put_object(bucket_name, object_name, data, headers, query_params)
        if self.times and "x-amz-meta-jan-sha256" in (headers or {}):
            self.times -= 1
            self.remove_object(bucket_name, self.content)
        return result


def test_link_content_is_undone_when_the_content_is_freed_meanwhile(s3env: S3Env) -> None:
    data = os.urandom(1000)
    put(s3env.storage(), "a", "m.gguf", data)
    storage = s3env.storage(
        FreeingMinio(
            s3env.endpoint, "test", "test", secure=False, region="us-east-1", content=content_key(sha(data))
        )
    )
    assert storage.link_content("b", "m.gguf", sha(data)) is False
    assert storage.stat("b", "m.gguf") is None


def test_commit_uploads_again_when_the_content_is_freed_meanwhile(s3env: S3Env) -> None:
    data = os.urandom(1000)
    put(s3env.storage(), "a", "m.gguf", data)
    client = FreeingMinio(
        s3env.endpoint, "test", "test", secure=False, region="us-east-1", content=content_key(sha(data))
    )
    storage = s3env.storage(client)
    put(storage, "b", "m.gguf", data)
    assert client.put_keys == [f"{PREFIX}/b/m.gguf", content_key(sha(data)), f"{PREFIX}/b/m.gguf"]
    assert storage.materialize("b", "m.gguf").read_bytes() == data

    client.times = 5  # freed after every pointer: the commit gives up, with the partial kept
    storage.partial_path("c", "m.gguf").write_bytes(data)
    with pytest.raises(StorageError, match="freed"):
        storage.commit("c", "m.gguf", sha256=sha(data))
    assert storage.partial_path("c", "m.gguf").exists()


class LinkingMinio(SpyMinio):
    """Writes a pointer to the content just before the content is removed, as a link_content in another
    process that checked the content a moment earlier would."""

    def __init__(self, *args: Any, content: str, pointer: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.content, self.pointer = content, pointer

    def remove_object(self, bucket_name, object_name, version_id=None):  # type: ignore[no-untyped-def]
        if object_name == self.content:
            digest = self.content.rsplit("/", 1)[1]
            body = json.dumps({"sha256": digest, "size": 1000}).encode()
            headers = {"x-amz-meta-jan-sha256": digest, "x-amz-meta-jan-size": "1000"}
            super()._put_object(bucket_name, self.pointer, body, headers)
        return super().remove_object(bucket_name, object_name, version_id)


def test_a_link_lost_to_a_delete_is_logged_and_removed(
    s3env: S3Env, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(1000)
    put(s3env.storage(), "a", "m.gguf", data)
    storage = s3env.storage(
        LinkingMinio(
            s3env.endpoint,
            "test",
            "test",
            secure=False,
            region="us-east-1",
            content=content_key(sha(data)),
            pointer=f"{PREFIX}/b/m.gguf",
        )
    )
    with caplog.at_level(logging.ERROR, logger="services.common.storage.s3"):
        storage.delete("a", "m.gguf")
    assert "b/m.gguf" in caplog.text and "downloaded again" in caplog.text
    # Absent, to be downloaded again, rather than listed and unreadable.
    assert storage.list_all() == {}
    assert keys(storage) == []
