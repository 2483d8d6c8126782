"""Fixtures every test directory shares: the loopback fake Hugging Face Hub (tests/fakes/hub.py) and no
proxy for loopback traffic. The helpers that start services are in tests/harness.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fakes.hub import FakeHub

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    """A fake Hub of the test's own, empty; the test adds the repos and files it needs."""
    with FakeHub() as h:
        yield h


@pytest.fixture
def cdn_hub() -> Iterator[FakeHub]:
    """A fake Hub whose CDN has another host name (localhost), as the real Hub's has: huggingface_hub's
    own `hf_hub_download` reads a file's metadata from the redirect only then, and fills its cache."""
    with FakeHub(cdn_host="localhost") as h:
        yield h


@pytest.fixture(scope="session")
def shared_hub() -> Iterator[FakeHub]:
    """One fake Hub for the session, for stacks started once per module or session: each test adds repos
    and files under names of its own."""
    with FakeHub() as h:
        yield h


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback traffic (fake Hub, services, their child processes) must never go through a proxy
    # configured on the machine.
    for var in PROXY_VARIABLES:
        if var in os.environ:
            monkeypatch.delenv(var)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
