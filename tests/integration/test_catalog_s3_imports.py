"""Imports when binaries live in a bucket (compose and Kubernetes, against a real S3 server from moto):
a local file and the binaries of an imported archive go into the bucket, where the runners read them,
and the model is downloaded at once; an export takes them from the bucket again. A failure leaves
neither a model nor an object behind."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from jan.model.v1 import model_pb2
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.errors import AlreadyExists, Unavailable
from services.common.storage import Storage, StorageSettings, make_storage

MiB = 1024 * 1024


@pytest.fixture
async def env(
    moto_s3: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Catalog, Storage, Path]]:
    root = tmp_path / "jan"
    imports = tmp_path / "imports"
    imports.mkdir()
    storage = make_storage(
        StorageSettings(
            backend="s3",
            s3_endpoint=moto_s3,
            s3_secure=False,
            s3_bucket=f"jan-imports-{request.node.name.replace('_', '-')[:40]}".lower(),
            s3_access_key="test",
            s3_secret_key="test",
            s3_region="us-east-1",
            s3_part_size=5 * MiB,
            cache_dir=tmp_path / "cache",
        ),
        root,
    )
    catalog = Catalog(
        CatalogSettings(root=root, port=0, seed_models_dir=None, import_allowed_dirs=[imports]),
        storage=storage,
    )
    await catalog.start()
    try:
        yield catalog, storage, imports
    finally:
        await catalog.close()


async def test_a_local_file_goes_into_the_bucket(env: tuple[Catalog, Storage, Path]) -> None:
    catalog, storage, imports = env
    data = bytes(range(256)) * (24 * 1024 + 7)  # 6 MiB and a bit: a multipart upload
    (imports / "tiny-Q4_K_M.gguf").write_bytes(data)
    model = await catalog.create(source_url=str(imports / "tiny-Q4_K_M.gguf"), model_id="tiny/q4")
    assert model.state == model_pb2.MODEL_STATE_STOPPED  # downloaded: nothing to fetch
    assert storage.stat("tiny", "tiny-Q4_K_M.gguf") == len(data)
    folder = catalog.models_dir / "tiny"
    # The folder keeps the json only: the bytes are in the bucket.
    assert sorted(p.name for p in folder.iterdir()) == ["q4.json"]
    local = storage.materialize("tiny", "tiny-Q4_K_M.gguf", sha256=hashlib.sha256(data).hexdigest())
    assert local.read_bytes() == data
    assert (imports / "tiny-Q4_K_M.gguf").exists()  # the user's file is left where it was

    # The same binary name again in that folder: refused, the first model untouched.
    (imports / "other").mkdir()
    (imports / "other" / "tiny-Q4_K_M.gguf").write_bytes(b"another file")
    with pytest.raises(AlreadyExists):
        await catalog.create(source_url=str(imports / "other" / "tiny-Q4_K_M.gguf"), model_id="tiny/again")
    assert storage.stat("tiny", "tiny-Q4_K_M.gguf") == len(data)
    assert not (folder / "again.json").exists()


async def test_an_archives_binaries_go_into_the_bucket(env: tuple[Catalog, Storage, Path]) -> None:
    catalog, storage, _ = env
    archive = catalog.new_upload_file()
    with tarfile.open(archive, "w") as tar:
        for name, content in (
            ("pack/a.json", orjson.dumps({"metadata": {"binaries": ["a.gguf"]}})),
            ("pack/a.gguf", b"A" * 1000),
            ("pack/b.json", orjson.dumps({"metadata": {"binaries": ["b.gguf"]}})),
            ("pack/b.gguf", b"B" * 2000),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    folder, models, problems = await catalog.import_archive(archive)
    assert folder == "pack" and not problems
    assert {m.id: m.state for m in models} == {
        "pack/a": model_pb2.MODEL_STATE_STOPPED,
        "pack/b": model_pb2.MODEL_STATE_STOPPED,
    }
    assert storage.list_folder("pack") == {"a.gguf": 1000, "b.gguf": 2000}
    assert sorted(p.name for p in (catalog.models_dir / "pack").iterdir()) == ["a.json", "b.json"]

    # Exported again, the folder is whole: the binaries come from the bucket into the archive.
    exported = b"".join(catalog.export_folder("pack"))
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert members["pack/a.gguf"] == b"A" * 1000 and members["pack/b.gguf"] == b"B" * 2000
    assert set(members) == {"pack/a.json", "pack/a.gguf", "pack/b.json", "pack/b.gguf"}


async def test_an_unreachable_bucket_is_a_clear_error_and_leaves_nothing(
    env: tuple[Catalog, Storage, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, storage, imports = env
    (imports / "m.gguf").write_bytes(b"x" * 100)
    from services.common.storage import StorageError

    def refuse(*args: object, **kwargs: object) -> None:
        raise StorageError("uploading tiny/m.gguf: S3 error ServiceUnavailable: try later")

    monkeypatch.setattr(storage, "commit", refuse)
    with pytest.raises(Unavailable) as err:
        await catalog.create(source_url=str(imports / "m.gguf"), model_id="tiny/m")
    assert err.value.code == "storage_unavailable" and "try later" in err.value.message
    assert not (catalog.models_dir / "tiny" / "m.json").exists()
    assert storage.stat("tiny", "m.gguf") is None
    assert not list(Path(storage.partial_path("tiny", "m.gguf")).parent.glob(".m.gguf.part*"))
