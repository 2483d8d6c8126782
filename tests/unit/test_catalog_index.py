"""The index (services/catalog/index.py) against real folders: the files are the truth, bad files never
break the rest, pages and filters, ids that cannot leave the root, reports that stop coming."""

from __future__ import annotations

from pathlib import Path

import pytest

from jan.model.v1 import model_pb2
from services.catalog.model import Runtime
from services.common import errors
from tests.harness import eventually
from tests.unit.conftest import ids, write

STOPPED = model_pb2.MODEL_STATE_STOPPED
NOT_DOWNLOADED = model_pb2.MODEL_STATE_NOT_DOWNLOADED


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


async def test_ids_that_leave_the_root_never_touch_the_disk(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog()
    for bad in ("../x", "../../etc/passwd", "a/../../b", "/etc/passwd", ".hidden/x", "a/.b"):
        with pytest.raises(errors.InvalidArgument):
            await cat.get(bad)
        with pytest.raises(errors.InvalidArgument):
            await cat.delete(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imports", "jan"]


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


async def test_reports_that_stop_coming_expire(make_catalog, tmp_path: Path) -> None:
    write(tmp_path / "jan" / "models" / "m" / "m.json", {"source_url": "https://models.example/m.gguf"})
    cat = await make_catalog(report_ttl_s=0.3)
    model = await cat.report_runtime(
        "m/m", Runtime(state=model_pb2.MODEL_STATE_DOWNLOADING, bytes_done=5, bytes_total=10)
    )
    assert model.state == model_pb2.MODEL_STATE_DOWNLOADING and model.state_detail.bytes_done == 5
    await eventually(lambda: cat.index.models["m/m"].state == NOT_DOWNLOADED, timeout=3)
    assert "stopped reporting" in cat.index.models["m/m"].state_detail.reason
