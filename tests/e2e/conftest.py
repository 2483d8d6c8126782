"""e2e fixtures: the real service processes, started as `make up` starts them, on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import Stack
from tests.harness import process_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("janroot")
    imports = tmp_path_factory.mktemp("imports")
    env = {
        "JAN_IMPORT_ALLOWED_DIRS": str(imports),
        "JAN_ALLOW_PRIVATE_NETWORKS": "false",
        "JAN_CATALOG_WATCH_DEBOUNCE_MS": "20",
    }
    with process_stack(root, env) as s:
        s.imports = imports  # type: ignore[attr-defined]
        yield s


@pytest.fixture
def imports_dir(stack: Stack) -> Path:
    return stack.imports  # type: ignore[attr-defined,no-any-return]
