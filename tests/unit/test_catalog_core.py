"""The catalog core against real folders: the files are the truth, bad files never break the rest."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from jan.model.v1 import model_pb2
from services.catalog.core import Catalog
from services.catalog.model import Runtime
from services.catalog.settings import CatalogSettings
from services.common import errors

STOPPED = model_pb2.MODEL_STATE_STOPPED
NOT_DOWNLOADED = model_pb2.MODEL_STATE_NOT_DOWNLOADED


def stub_resolver(host: str, port: int) -> list[str]:
    table = {"models.example": ["93.184.215.14"], "internal.example": ["10.1.2.3"]}
    if host not in table:
        raise OSError(f"unknown host {host}")
    return table[host]


def settings_for(root: Path, **kw: object) -> CatalogSettings:
    values: dict[str, object] = {
        "root": root,
        "seed_models_dir": None,
        "import_allowed_dirs": [root.parent / "imports"],
        "watch_debounce_ms": 10,
        "rescan_interval_s": 3600,
    }
    values.update(kw)
    return CatalogSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def make_catalog(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Catalog]]]:
    made: list[Catalog] = []
    (tmp_path / "imports").mkdir()

    async def make(**kw: object) -> Catalog:
        cat = Catalog(settings_for(tmp_path / "jan", **kw), resolver=stub_resolver)
        await cat.start()
        made.append(cat)
        return cat

    yield make
    for cat in made:
        await cat.close()


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else orjson.dumps(data))
    return path


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def ids(cat: Catalog) -> list[str]:
    return [m.id for m in cat.list_models(page_size=10_000)[0]]


async def test_a_broken_file_is_reported_and_the_rest_still_served(make_catalog, tmp_path: Path) -> None:
    models = tmp_path / "jan" / "models"
    write(models / "good" / "good.json", {"name": "Good"})
    write(models / "bad" / "bad.json", b'{"parameters": 3}')
    write(models / "worse" / "x.json", b"{oops")
    cat = await make_catalog()
    assert ids(cat) == ["good/good"]
    problems = {p.path: p.reason for p in cat.problems()}
    assert problems == {
        "models/bad/bad.json": "'parameters' must be an object, not a number",
        "models/worse/x.json": problems["models/worse/x.json"],
    }
    assert "not valid JSON" in problems["models/worse/x.json"]
    with pytest.raises(errors.FailedPrecondition) as exc:
        await cat.get("bad/bad")
    assert exc.value.code == "invalid_model_file"


async def test_hand_edits_new_folders_and_deletions_show_up_without_restart(
    make_catalog, tmp_path: Path
) -> None:
    models = tmp_path / "jan" / "models"
    write(models / "a" / "a.json", {"name": "A"})
    cat = await make_catalog()
    write(models / "a" / "a.json", {"name": "A edited"})
    # Get always looks at the disk first.
    assert (await cat.get("a/a")).name == "A edited"
    # List follows the file watcher.
    write(models / "copied" / "m.json", {})
    await eventually(lambda: "copied/m" in ids(cat))
    (models / "a" / "a.json").unlink()
    await eventually(lambda: "a/a" not in ids(cat))
    with pytest.raises(errors.NotFound):
        await cat.get("a/a")


async def test_without_the_watcher_the_periodic_rescan_catches_up(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog(watch=False, rescan_interval_s=0.5)
    write(tmp_path / "jan" / "models" / "late" / "m.json", {})
    await eventually(lambda: "late/m" in ids(cat))


async def test_seeding_never_overwrites_and_never_resurrects(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    write(seed / "rec" / "rec.json", {"name": "Recommended"})
    write(seed / "mine" / "mine.json", {"name": "Shipped"})
    root = tmp_path / "jan"
    write(root / "models" / "mine" / "mine.json", {"name": "User's own"})
    cat = Catalog(settings_for(root, seed_models_dir=seed))
    await cat.start()
    assert (await cat.get("mine/mine")).name == "User's own"
    assert (await cat.get("rec/rec")).name == "Recommended"
    await cat.delete("rec/rec")
    await cat.close()
    again = Catalog(settings_for(root, seed_models_dir=seed))
    await again.start()
    try:
        assert "rec/rec" not in ids(again)
    finally:
        await again.close()


async def test_create_from_a_local_file_links_it_and_delete_keeps_the_original(
    make_catalog, tmp_path: Path
) -> None:
    original = tmp_path / "imports" / "tiny-Q4_K_M.gguf"
    original.write_bytes(b"GGUF" + b"\0" * 100)
    cat = await make_catalog()
    model = await cat.create(source_url=str(original), name="Tiny")
    assert model.id == "tiny-Q4_K_M/tiny-Q4_K_M"
    assert model.state == STOPPED
    assert orjson.loads(model.metadata_json)["quantization"] == "Q4_K_M"
    placed = tmp_path / "jan" / "models" / "tiny-Q4_K_M" / "tiny-Q4_K_M.gguf"
    assert placed.stat().st_ino == original.stat().st_ino  # a hard link on the same filesystem
    with pytest.raises(errors.AlreadyExists):
        await cat.create(source_url=str(original))
    removed = await cat.delete(model.id)
    assert "models/tiny-Q4_K_M/tiny-Q4_K_M.gguf" in removed
    assert original.read_bytes().startswith(b"GGUF")
    assert not placed.parent.exists()


async def test_create_by_symlink_and_by_copy(make_catalog, tmp_path: Path) -> None:
    original = tmp_path / "imports" / "w.gguf"
    original.write_bytes(b"weights")
    cat = await make_catalog()
    linked = await cat.create(source_url=str(original), model_id="w/linked", import_mode="symlink")
    link = tmp_path / "jan" / "models" / "w" / "w.gguf"
    assert link.is_symlink() and cat.links.is_ours(link)
    assert linked.state == STOPPED
    await cat.delete("w/linked")
    assert original.exists() and not link.exists()
    copied = await cat.create(source_url=str(original), model_id="c/copied", import_mode="copy")
    copy = tmp_path / "jan" / "models" / "c" / "w.gguf"
    assert copied.state == STOPPED and not copy.is_symlink() and copy.stat().st_ino != original.stat().st_ino


async def test_local_imports_only_from_allowed_directories(make_catalog, tmp_path: Path) -> None:
    outside = write(tmp_path / "elsewhere" / "x.gguf", b"x")
    cat = await make_catalog()
    with pytest.raises(errors.PermissionDenied):
        await cat.create(source_url=str(outside))
    sneaky = tmp_path / "imports" / "link.gguf"
    sneaky.symlink_to(outside)  # resolves outside the allowed directory
    with pytest.raises(errors.PermissionDenied):
        await cat.create(source_url=str(sneaky))
    with pytest.raises(errors.InvalidArgument):
        await cat.create(source_url="relative/x.gguf")
    assert not any((tmp_path / "jan" / "models").iterdir())


async def test_create_from_a_url_is_not_downloaded_and_private_addresses_are_refused(make_catalog) -> None:
    cat = await make_catalog()
    model = await cat.create(source_url="https://models.example/files/m.Q8_0.gguf")
    assert model.id == "m.Q8_0/m.Q8_0"
    assert model.state == NOT_DOWNLOADED
    for url in ("https://internal.example/x.gguf", "http://127.0.0.1/x.gguf", "http://[::1]/x.gguf"):
        with pytest.raises(errors.InvalidArgument) as exc:
            await cat.create(source_url=url)
        assert exc.value.code == "unsafe_source_url"
    with pytest.raises(errors.InvalidArgument):
        await cat.create(source_url="ftp://models.example/x.gguf")


async def test_ids_that_leave_the_root_never_touch_the_disk(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog()
    for bad in ("../x", "../../etc/passwd", "a/../../b", "/etc/passwd", ".hidden/x", "a/.b"):
        with pytest.raises(errors.InvalidArgument):
            await cat.get(bad)
        with pytest.raises(errors.InvalidArgument):
            await cat.delete(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imports", "jan"]


async def test_update_merges_and_keeps_unknown_properties(make_catalog, tmp_path: Path) -> None:
    path = write(
        tmp_path / "jan" / "models" / "m" / "m.json",
        {
            "x-custom": [1, 2],
            "parameters": {"temperature": 0.7, "top_k": 40},
            "metadata": {"quantization": "Q4_0"},
        },
    )
    cat = await make_catalog()
    created_before = (await cat.get("m/m")).created
    model = await cat.update(
        "m/m",
        name="Renamed",
        parameters_patch={"top_k": None, "ctx_len": 4096},
        metadata_patch={"size": "7B"},
    )
    assert model.name == "Renamed"
    assert orjson.loads(model.parameters_json) == {"temperature": 0.7, "ctx_len": 4096}
    on_disk = orjson.loads(path.read_bytes())
    assert on_disk["x-custom"] == [1, 2]
    assert on_disk["metadata"] == {"quantization": "Q4_0", "size": "7B"}
    assert on_disk["created"] == created_before
    with pytest.raises(errors.InvalidArgument):
        await cat.update("m/m", metadata_patch={"engine": "nonsense"})
    assert orjson.loads(path.read_bytes()) == on_disk
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


async def test_delete_keeps_binaries_other_objects_share(make_catalog, tmp_path: Path) -> None:
    folder = tmp_path / "jan" / "models" / "llava"
    write(folder / "llava-Q4_K_M.json", {})
    write(folder / "llava-Q5_K_M.json", {})
    for name in ("llava.Q4_K_M.gguf", "llava.Q5_K_M.gguf", "mmproj-f16.gguf"):
        write(folder / name, b"x")
    cat = await make_catalog()
    assert (await cat.get("llava/llava-Q4_K_M")).state == STOPPED
    removed = await cat.delete("llava/llava-Q4_K_M")
    assert sorted(removed) == ["models/llava/llava-Q4_K_M.json", "models/llava/llava.Q4_K_M.gguf"]
    assert sorted(os.listdir(folder)) == ["llava-Q5_K_M.json", "llava.Q5_K_M.gguf", "mmproj-f16.gguf"]


async def test_a_user_original_behind_a_hand_made_symlink_is_never_deleted(
    make_catalog, tmp_path: Path
) -> None:
    original = write(tmp_path / "precious.gguf", b"mine")
    folder = tmp_path / "jan" / "models" / "m"
    write(folder / "m.json", {})
    (folder / "m.gguf").symlink_to(original)
    cat = await make_catalog()
    assert (await cat.get("m/m")).state == STOPPED
    await cat.delete("m/m")
    assert original.read_bytes() == b"mine"


async def test_paging_and_filters(make_catalog, tmp_path: Path) -> None:
    models = tmp_path / "jan" / "models"
    for i in range(25):
        write(models / f"f{i:02d}" / "m.json", {"metadata": {"engine": "api"}} if i % 5 == 0 else {})
    cat = await make_catalog()
    seen, token = [], ""
    while True:
        page, token, total = cat.list_models(page_size=10, page_token=token)
        assert total == 25
        seen += [m.id for m in page]
        if not token:
            break
    assert seen == sorted(f"f{i:02d}/m" for i in range(25))
    api, _, total = cat.list_models(engines=["api"])
    assert total == 5 and all(m.engine == "api" and m.state == STOPPED for m in api)
    _, _, total = cat.list_models(states=[NOT_DOWNLOADED])
    assert total == 20
    with pytest.raises(errors.InvalidArgument):
        cat.list_models(page_token="!!not-ours")


async def test_watch_streams_changes(make_catalog, tmp_path: Path) -> None:
    models = tmp_path / "jan" / "models"
    write(models / "a" / "a.json", {})
    cat = await make_catalog()
    events: list[tuple[str, str]] = []

    async def consume() -> None:
        async for change in cat.watch(include_initial=True):
            events.append((change.kind, change.id))

    task = asyncio.create_task(consume())
    await eventually(lambda: ("added", "a/a") in events)
    write(models / "b" / "b.json", {})
    await eventually(lambda: ("added", "b/b") in events)
    await cat.update("a/a", name="new")
    await eventually(lambda: ("updated", "a/a") in events)
    write(models / "b" / "b.json", b"[]")
    await eventually(lambda: ("invalid", "b/b") in events)
    await cat.report_runtime("a/a", Runtime(state=model_pb2.MODEL_STATE_RUNNING, runner="r1"))
    assert (await cat.get("a/a")).state == model_pb2.MODEL_STATE_RUNNING
    await cat.delete("a/a")
    await eventually(lambda: ("removed", "a/a") in events)
    task.cancel()


async def test_export_then_import_round_trips_a_folder(make_catalog, tmp_path: Path) -> None:
    folder = tmp_path / "jan" / "models" / "tiny"
    write(folder / "tiny.json", {"name": "Tiny", "x-keep": True})
    write(folder / "tiny.gguf", b"weights" * 1000)
    write(folder / ".tiny.gguf.part", b"half")  # hidden partial: never exported
    (folder / "stolen.gguf").symlink_to(write(tmp_path / "secret.gguf", b"secret"))  # not made by the catalog
    cat = await make_catalog()
    data = b"".join(cat.export_folder("tiny"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == ["tiny/tiny.gguf", "tiny/tiny.json"]
    upload = cat.new_upload_file()
    upload.write_bytes(data)
    name, models, problems = await cat.import_archive(upload, folder="tiny-copy")
    assert name == "tiny-copy" and not problems
    assert [m.id for m in models] == ["tiny-copy/tiny"] and models[0].state == STOPPED
    imported = tmp_path / "jan" / "models" / "tiny-copy"
    assert orjson.loads((imported / "tiny.json").read_bytes())["x-keep"] is True
    with pytest.raises(errors.AlreadyExists):
        await cat.import_archive(upload)  # "tiny" exists
    with pytest.raises(errors.NotFound):
        cat.export_folder("nope")
    with pytest.raises(errors.InvalidArgument):
        cat.export_folder("..")


async def test_an_unsafe_archive_is_refused_and_leaves_nothing(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    upload = cat.new_upload_file()
    upload.write_bytes(buf.getvalue())
    with pytest.raises(errors.InvalidArgument) as exc:
        await cat.import_archive(upload, folder="x")
    assert exc.value.code == "unsafe_archive"
    assert not (tmp_path / "evil.json").exists()
    assert os.listdir(tmp_path / "jan" / "models") == []


async def test_reports_that_stop_coming_expire(make_catalog, tmp_path: Path) -> None:
    write(tmp_path / "jan" / "models" / "m" / "m.json", {"source_url": "https://models.example/m.gguf"})
    cat = await make_catalog(report_ttl_s=0.3)
    model = await cat.report_runtime(
        "m/m", Runtime(state=model_pb2.MODEL_STATE_DOWNLOADING, bytes_done=5, bytes_total=10)
    )
    assert model.state == model_pb2.MODEL_STATE_DOWNLOADING and model.state_detail.bytes_done == 5
    await eventually(lambda: cat._by_id["m/m"].state == NOT_DOWNLOADED, timeout=3)
    assert "stopped reporting" in cat._by_id["m/m"].state_detail.reason


async def test_runner_heartbeats_drive_running_state_and_placement(make_catalog, tmp_path: Path) -> None:
    from jan.catalog.v1 import catalog_service_pb2 as catalog_pb

    models = tmp_path / "jan" / "models"
    write(models / "a" / "a.json", {})
    write(models / "a" / "a.gguf", b"x")
    write(models / "r" / "r.json", {"metadata": {"engine": "api"}})
    cat = await make_catalog(report_ttl_s=0.6)
    with pytest.raises(errors.Unavailable) as exc:
        await cat.placement.place("a/a")
    assert exc.value.code == "no_runner"
    small = catalog_pb.Runner(
        name="small", address="127.0.0.1:1", memory_budget_bytes=100, engines=["llamacpp"]
    )
    big = catalog_pb.Runner(name="big", address="127.0.0.1:2", memory_budget_bytes=1000, engines=["llamacpp"])
    interval, assignments = await cat.register_runner(small)
    assert interval > 0 and assignments == []
    await cat.register_runner(big)
    placed = await cat.placement.place("a/a")
    assert (placed.runner.name, placed.loaded) == ("big", False)
    with pytest.raises(errors.Unavailable):
        await cat.placement.place("r/r")  # nobody runs api models
    small.model_ids.append("a/a")
    await cat.register_runner(small)
    assert (await cat.get("a/a")).state == model_pb2.MODEL_STATE_RUNNING
    assert (await cat.get("a/a")).state_detail.runner == "small"
    placed = await cat.placement.place("a/a")
    assert (placed.runner.name, placed.loaded) == ("small", True)
    # The runner unloads it: the files decide again.
    del small.model_ids[:]
    await cat.register_runner(small)
    assert (await cat.get("a/a")).state == STOPPED
    # A runner that stops calling is dead: its models stop being running, it is not chosen.
    small.model_ids.append("a/a")
    await cat.register_runner(small)
    await eventually(lambda: cat._by_id["a/a"].state == STOPPED, timeout=3)
    assert cat.live_runners() == []


async def test_what_changed_since_a_version(make_catalog, tmp_path: Path) -> None:
    models = tmp_path / "jan" / "models"
    write(models / "a" / "a.json", {})
    write(models / "b" / "b.json", {})
    cat = await make_catalog()
    start = cat.version
    assert cat.changed_since(start) == ([], [])
    await cat.update("a/a", name="A")
    await cat.delete("b/b")
    changed, removed = cat.changed_since(start)  # type: ignore[misc]
    assert [m.id for m in changed] == ["a/a"] and changed[0].name == "A" and removed == ["b/b"]
    assert cat.version != start
    assert cat.changed_since("another-start-0") is None
    assert cat.changed_since(start.rsplit("-", 1)[0] + "-999999") is None  # a version it never had
