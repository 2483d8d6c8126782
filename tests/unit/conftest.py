"""What the catalog's unit tests share: a real catalog over a temporary JAN_ROOT (`make_catalog`), and small
helpers to write its files and list its models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings


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


def ids(cat: Catalog) -> list[str]:
    return [m.id for m in cat.list_models(page_size=10_000)[0]]
