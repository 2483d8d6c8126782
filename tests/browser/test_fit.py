"""The memory-fit badge of the hub in a real browser, against the real services: the tiny model fits the
runner's budget, a model declaring 10 TB does not, each badge says its figures in its title, and a model
added by hand gets its badge without a reload."""

from __future__ import annotations

import json

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cli.stack import Stack
from tests.browser.conftest import console_errors
from tests.browser.test_hub import has_row, open_hub, row, wait_for

HUGE = "fitbig/huge"


def badge_text(driver: WebDriver, model_id: str) -> str:
    badges = row(driver, model_id).find_elements(By.CSS_SELECTOR, ".fit")
    return badges[0].text if badges else ""


def test_badges_say_fits_and_wont_fit(stack: Stack, browser: WebDriver) -> None:
    folder = stack.root / "models" / HUGE.split("/")[0]
    try:
        open_hub(browser, stack.url)
        wait_for(browser, lambda d: badge_text(d, "tiny/chat") == "fits")
        badge = row(browser, "tiny/chat").find_element(By.CSS_SELECTOR, ".fit")
        title = badge.get_attribute("title") or ""
        assert "GiB" in title or "MiB" in title, title
        assert "free" in title
        assert (badge.get_attribute("aria-label") or "").startswith("fits: ")
        headers = browser.find_elements(By.CSS_SELECTOR, "#models-view th")
        assert "Memory" in [th.get_attribute("textContent") for th in headers]

        # Hand-written, not downloaded, 10 TB declared: it shows up, then its badge, without a reload.
        folder.mkdir(parents=True, exist_ok=True)
        obj = {
            "source_url": "https://example.invalid/org/huge-GGUF/resolve/main/huge.Q4_K_M.gguf",
            "metadata": {"size": 10 * 10**12},
        }
        (folder / "huge.json").write_text(json.dumps(obj))
        wait_for(browser, lambda d: has_row(d, HUGE))
        wait_for(browser, lambda d: badge_text(d, HUGE) == "won't fit")
        huge = row(browser, HUGE).find_element(By.CSS_SELECTOR, ".fit")
        assert "fit-wont_fit" in (huge.get_attribute("class") or "")
        assert "declared size" in (huge.get_attribute("title") or "")

        # The page shows what the API says, nothing of its own.
        answer = httpx.get(f"{stack.url}/v1/models/fit", params={"id": [HUGE, "tiny/chat"]}).json()
        assert {d["id"]: d["fit"] for d in answer["data"]} == {HUGE: "wont_fit", "tiny/chat": "fits"}
        assert console_errors(browser) == []
    finally:
        (folder / "huge.json").unlink(missing_ok=True)
