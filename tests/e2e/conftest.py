"""e2e fixtures: the real service processes, started as `make up` starts them, on free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import SERVICES, Stack, free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("janroot")
    imports = tmp_path_factory.mktemp("imports")
    s = Stack(root=root, ports={name: free_port() for name in SERVICES})
    s.start(
        extra_env={
            "JAN_IMPORT_ALLOWED_DIRS": str(imports),
            "JAN_ALLOW_PRIVATE_NETWORKS": "false",
            "JAN_CATALOG_WATCH_DEBOUNCE_MS": "20",
        }
    )
    s.imports = imports  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def imports_dir(stack: Stack) -> Path:
    return stack.imports  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback traffic must never go through a proxy configured on the machine.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        if var in os.environ:
            monkeypatch.delenv(var)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
