"""A remote API's models as objects (services/catalog/remote_imports.py): named models need no listing, a
second import keeps what exists, and requests that cannot work are refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from services.common import errors


async def test_named_models_become_api_objects_in_one_folder(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog()
    folder, models = await cat.import_remote(
        "openai", "https://models.example/v1", "env:REMOTE_KEY", models=["gpt-x", "org/other"]
    )
    assert folder == "models.example"
    assert [m.id for m in models] == ["models.example/gpt-x", "models.example/org_other"]
    assert {m.engine for m in models} == {"api"}
    assert orjson.loads(models[0].parameters_json) == {"API-KEY": "env:REMOTE_KEY"}
    await cat.update("models.example/gpt-x", name="Mine")
    _, again = await cat.import_remote("openai", "https://models.example/v1", models=["gpt-x"])
    assert [m.name for m in again] == ["Mine"]  # left as it was


async def test_requests_that_cannot_work_are_refused(make_catalog, tmp_path: Path) -> None:
    cat = await make_catalog()
    refused = [
        ("nonsense", "https://models.example/v1", "", [], "importer"),
        ("openai", "ftp://models.example/v1", "", ["m"], "base_url"),
        ("openai", "https://models.example/v1", "env:KEY", [], "models"),  # a reference cannot list
        ("azure_openai", "https://res.example", "key", [], "models"),  # Azure cannot list deployments
    ]
    for importer, base_url, key, names, param in refused:
        with pytest.raises(errors.InvalidArgument) as exc:
            await cat.import_remote(importer, base_url, key, models=names)
        assert exc.value.param == param
    assert list((tmp_path / "jan" / "models").iterdir()) == []
