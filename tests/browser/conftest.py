"""The web page in a real browser: Debian's headless Chromium driven by selenium through chromedriver,
against the real service processes (as `make up` starts them) on loopback, with the tiny chat model
`tiny/chat` and the session's loopback fake Hugging Face Hub (tests/conftest.py `shared_hub`) as
HF_ENDPOINT.

`make test` installs chromium and chromium-driver (scripts/install-browser.sh); without them these tests
fail under CI and are skipped elsewhere, saying why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli.stack import Stack
from tests.fakes.hub import FakeHub
from tests.harness import TOOLS_CTX, process_stack, write_tiny_chat_model

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
API_KEY = "jan-browser-test-key"
# JAN_UPDATE_SCREENSHOTS=1 writes the screenshots of docs/images/ anew.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"


@contextmanager
def _stack(root: Path, hub: FakeHub, extra: dict[str, str] | None = None) -> Iterator[Stack]:
    """The stack over `root`; `stack.imports` (a dataclass attribute added here) is the folder it
    imports local files from."""
    write_tiny_chat_model(root, n_ctx=TOOLS_CTX)
    imports = root.parent / f"{root.name}-imports"
    imports.mkdir()
    env = {
        "JAN_IMPORT_ALLOWED_DIRS": str(imports),
        "JAN_ALLOW_PRIVATE_NETWORKS": "true",  # the fake Hub is on loopback
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": hub.token,
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_CATALOG_WATCH_DEBOUNCE_MS": "20",
        "JAN_RUNNER_THREADS": "1",
        **(extra or {}),
    }
    with process_stack(root, env) as s:
        s.imports = imports  # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="session")
def stack(shared_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack without API keys, Hugging Face at the session's shared fake Hub; its models: `tiny/chat`
    (downloaded, stopped)."""
    with _stack(tmp_path_factory.mktemp("janweb"), shared_hub) as s:
        yield s


@pytest.fixture(scope="session")
def keyed_stack(shared_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with one API key configured (API_KEY)."""
    with _stack(tmp_path_factory.mktemp("janwebkeys"), shared_hub, {"JAN_API_KEYS": API_KEY}) as s:
        yield s


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium; its console is read by `console_errors`."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = "chromium and chromium-driver are not installed (make test installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The browser console's errors since the last call (a CSP violation is one)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    """Saves docs/images/<name>.png when JAN_UPDATE_SCREENSHOTS=1 (the README and docs show them)."""
    if os.environ.get("JAN_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
