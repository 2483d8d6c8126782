"""The Models view (the hub) and the Running view in a real browser, against the real services: the list
with states, live updates from hand-written json files, search and filters, model names as text, imports
(a file URL, a local path refused in place, a Hugging Face repository with its quantization picker), a
download with its progress bar paused and resumed, settings, start, the Running view, stop, export,
delete with its confirmation, and the key prompt when the API wants a key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from cli.stack import Stack
from tests.browser.conftest import API_KEY, console_errors, screenshot
from tests.fakes.hub import FakeHub, Faults, MiB
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import CHAT_TEMPLATE

XSS = "<img src=x onerror=alert(1)>"
TIMEOUT = 30


def wait_for(driver: WebDriver, what: Callable[[WebDriver], Any], timeout: float = TIMEOUT) -> Any:
    return WebDriverWait(
        driver, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    ).until(what)


def shown(driver: WebDriver, by: str, value: str, timeout: float = TIMEOUT) -> WebElement:
    """The element once it is displayed and enabled (found in the DOM is not enough to type into it)."""

    def ready(d: WebDriver) -> WebElement | bool:
        element = d.find_element(by, value)
        return element if element.is_displayed() and element.is_enabled() else False

    return wait_for(driver, ready, timeout)


def row(driver: WebDriver, model_id: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'#models-view tr[data-id="{model_id}"]')


def has_row(driver: WebDriver, model_id: str) -> bool:
    return bool(driver.find_elements(By.CSS_SELECTOR, f'#models-view tr[data-id="{model_id}"]'))


def state(driver: WebDriver, model_id: str) -> str:
    return row(driver, model_id).find_element(By.CSS_SELECTOR, ".state").text


def capabilities(driver: WebDriver, model_id: str) -> list[str]:
    return [b.text for b in row(driver, model_id).find_elements(By.CSS_SELECTOR, ".capability")]


def wait_state(driver: WebDriver, model_id: str, wanted: str, timeout: float = TIMEOUT) -> None:
    wait_for(driver, lambda d: state(d, model_id) == wanted, timeout)


def button(driver: WebDriver, label: str) -> WebElement:
    """The visible, enabled button whose accessible name (aria-label) is label, once there."""
    return wait_for(
        driver,
        lambda d: next(
            (
                b
                for b in d.find_elements(By.CSS_SELECTOR, f'button[aria-label="{label}"]')
                if b.is_displayed() and b.is_enabled()
            ),
            False,
        ),
    )


def open_hub(driver: WebDriver, url: str) -> None:
    driver.get(url + "/")
    wait_for(driver, lambda d: has_row(d, "tiny/chat"))


def unexpected_errors(driver: WebDriver, *expected_statuses: int) -> list[str]:
    """Console errors, less Chromium's "Failed to load resource" lines for statuses a test provoked."""
    return [
        e
        for e in console_errors(driver)
        if not any(f"status of {status}" in e for status in expected_statuses)
    ]


def test_the_list_shows_models_live_and_names_as_text(stack: Stack, browser: WebDriver) -> None:
    open_hub(browser, stack.url)
    tiny = row(browser, "tiny/chat")
    tiny_state = state(browser, "tiny/chat")  # the chat tests may have left it running
    assert tiny_state in ("stopped", "running")
    cells = [c.text for c in tiny.find_elements(By.TAG_NAME, "td")]
    assert "tiny/chat" in cells[0] and cells[2] == "llamacpp"
    assert capabilities(browser, "tiny/chat") == ["completion"]  # its template takes no tools
    assert browser.find_element(By.ID, "nav-models").get_attribute("aria-current") == "page"

    # A json file written by hand shows up without a reload; its name is text, not markup.
    folder = stack.root / "models" / "webxss"
    folder.mkdir(parents=True, exist_ok=True)
    obj = {
        "name": XSS,
        "description": "<b>not bold</b>",
        "source_url": "https://huggingface.co/org/webxss-GGUF/resolve/main/webxss.Q4_K_M.gguf",
        "metadata": {"quantization": "Q4_K_M", "size": 123456789, "capabilities": ["tools", XSS]},
    }
    (folder / "webxss.json").write_text(json.dumps(obj))
    # A model with a projector among its binaries can see images before anything is downloaded.
    vision = stack.root / "models" / "webvision"
    vision.mkdir(parents=True, exist_ok=True)
    binaries = ["https://huggingface.co/org/v-GGUF/resolve/main/v.Q4_K_M.gguf", "mmproj-v-f16.gguf"]
    (vision / "webvision.json").write_text(json.dumps({"metadata": {"binaries": binaries}}))
    wait_for(browser, lambda d: has_row(d, "webxss/webxss") and has_row(d, "webvision/webvision"))
    assert capabilities(browser, "webvision/webvision") == ["completion", "vision"]
    assert capabilities(browser, "webxss/webxss") == ["tools", XSS]  # the object's own, as text
    evil = row(browser, "webxss/webxss")
    assert evil.find_element(By.CSS_SELECTOR, ".model-name").text == XSS
    assert evil.find_element(By.CSS_SELECTOR, ".model-description").text == "<b>not bold</b>"
    assert browser.execute_script("return document.querySelectorAll('img, #models-view b').length") == 0
    assert state(browser, "webxss/webxss") == "not-downloaded"
    cells = [c.text for c in evil.find_elements(By.TAG_NAME, "td")]
    assert cells[3] == "Q4_K_M" and cells[4] == "118 MiB" and cells[5] == "org"

    # An edit of the file updates the row in place.
    obj["name"] = "renamed by hand"
    (folder / "webxss.json").write_text(json.dumps(obj))
    wait_for(
        browser,
        lambda d: (
            row(d, "webxss/webxss").find_element(By.CSS_SELECTOR, ".model-name").text == "renamed by hand"
        ),
    )

    # Search and filters hide rows; "/" focuses the search box from anywhere.
    Select(browser.find_element(By.ID, "state-filter")).select_by_value(tiny_state)
    wait_for(browser, lambda d: not row(d, "webxss/webxss").is_displayed())
    assert row(browser, "tiny/chat").is_displayed()
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("")
    browser.find_element(By.TAG_NAME, "body").send_keys("/")
    search = browser.switch_to.active_element
    assert search.get_attribute("id") == "model-search"
    search.send_keys("WEBXSS")
    wait_for(browser, lambda d: not row(d, "tiny/chat").is_displayed())
    assert row(browser, "webxss/webxss").is_displayed()
    search.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
    search.send_keys("vision")  # a capability finds its models too
    wait_for(browser, lambda d: not row(d, "tiny/chat").is_displayed())
    assert (
        row(browser, "webvision/webvision").is_displayed()
        and not row(browser, "webxss/webxss").is_displayed()
    )
    search.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
    wait_for(browser, lambda d: row(d, "tiny/chat").is_displayed())
    screenshot(browser, "hub")

    # Delete asks first (Escape keeps the model), and says what goes.
    button(browser, "Delete webxss/webxss").click()
    dialog = shown(browser, By.CSS_SELECTOR, "dialog[open]")
    assert "no files on disk besides its json file" in dialog.text
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"))
    assert (folder / "webxss.json").exists()
    button(browser, "Delete webxss/webxss").click()
    button(browser, "Delete webxss/webxss now").click()
    wait_for(browser, lambda d: not has_row(d, "webxss/webxss"))
    assert not (folder / "webxss.json").exists()
    (vision / "webvision.json").unlink()
    wait_for(browser, lambda d: not has_row(d, "webvision/webvision"))
    assert unexpected_errors(browser) == []


def test_import_errors_show_in_place_and_a_file_url_imports(
    stack: Stack, shared_hub: FakeHub, browser: WebDriver, tmp_path: Path
) -> None:
    open_hub(browser, stack.url)
    source = browser.find_element(By.ID, "import-source")
    # tmp_path is outside the allowed import folder (stack.imports): the API's 403 is shown in place.
    outside = write_tiny_gguf(tmp_path / "outside.gguf")
    source.send_keys(str(outside), Keys.ENTER)
    status = browser.find_element(By.CSS_SELECTOR, ".import-status")
    wait_for(browser, lambda d: "outside" in status.text.lower() or "allowed" in status.text.lower())

    shared_hub.add_file("/files/webfile.Q5_K_M.gguf", b"GGUF" + b"\0" * 2000)
    source.clear()
    source.send_keys(f"{shared_hub.url}/files/webfile.Q5_K_M.gguf")
    browser.find_element(By.CSS_SELECTOR, ".import-form button[type=submit]").click()
    wait_for(browser, lambda d: "Imported webfile.Q5_K_M/webfile.Q5_K_M" in status.text)
    wait_for(browser, lambda d: has_row(d, "webfile.Q5_K_M/webfile.Q5_K_M"))
    assert state(browser, "webfile.Q5_K_M/webfile.Q5_K_M") == "not-downloaded"
    button(browser, "Delete webfile.Q5_K_M/webfile.Q5_K_M").click()
    button(browser, "Delete webfile.Q5_K_M/webfile.Q5_K_M now").click()
    wait_for(browser, lambda d: not has_row(d, "webfile.Q5_K_M/webfile.Q5_K_M"))
    assert unexpected_errors(browser, 403) == []


def test_a_repository_import_downloads_starts_runs_and_deletes(
    stack: Stack, shared_hub: FakeHub, browser: WebDriver, tmp_path: Path
) -> None:
    repo = "org/tinyweb-GGUF"
    q4 = write_tiny_gguf(tmp_path / "q4.gguf", chat_template=CHAT_TEMPLATE, seed=1).read_bytes()
    q8 = write_tiny_gguf(tmp_path / "q8.gguf", chat_template=CHAT_TEMPLATE, seed=2).read_bytes()
    # Zeros after the tensors make the file 9 MiB (llama.cpp reads the tensors by offset): the downloader
    # reports progress per 4 MiB buffer, and the first transfer stops for a while after 5 MiB, long
    # enough to see the bar part full and pause.
    q8 += b"\0" * (9 * MiB - len(q8))
    shared_hub.add_repo(repo, {"tinyweb.Q4_K_M.gguf": q4, "tinyweb.Q8_0.gguf": q8})
    shared_hub.faults[f"{repo}/tinyweb.Q8_0.gguf"] = Faults(stall_at=5 * MiB, stall_seconds=25)
    picked, other = "tinyweb-GGUF/tinyweb.Q8_0", "tinyweb-GGUF/tinyweb.Q4_K_M"
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    open_hub(browser, stack.url)

    # The picker lists each quantization with its size before anything is downloaded.
    source = browser.find_element(By.ID, "import-source")
    source.send_keys(f"https://huggingface.co/{repo}", Keys.ENTER)
    picker = shown(browser, By.CSS_SELECTOR, ".picker fieldset")
    labels = [label.text for label in picker.find_elements(By.CSS_SELECTOR, ".quant label")]
    assert len(labels) == 2 and "Q4_K_M" in labels[0] and "Q8_0" in labels[1] and "9.0 MiB" in labels[1]
    assert state(browser, picked) == "not-downloaded" and state(browser, other) == "not-downloaded"
    picker.find_element(By.CSS_SELECTOR, f'input[value="{picked}"]').click()
    picker.find_element(By.ID, "quant-remove-others").click()
    button(browser, "Download the picked quantization").click()

    # A live progress bar with its numbers; Pause keeps the bytes, Resume goes on, it completes.
    progress = f'#models-view tr[data-id="{picked}"] progress'
    wait_for(
        browser, lambda d: float(d.find_element(By.CSS_SELECTOR, progress).get_attribute("value") or 0) > 0
    )
    assert "%" in row(browser, picked).find_element(By.CSS_SELECTOR, ".progress-text").text
    wait_for(browser, lambda d: not has_row(d, other))  # the quantization not picked is deleted
    screenshot(browser, "download")
    button(browser, f"Pause {picked}").click()
    wait_state(browser, picked, "paused")
    assert "paused" in row(browser, picked).find_element(By.CSS_SELECTOR, ".progress-text").text
    button(browser, f"Resume {picked}").click()
    wait_state(browser, picked, "stopped")
    binary = stack.root / "models" / "tinyweb-GGUF" / "tinyweb.Q8_0.gguf"
    assert binary.read_bytes() == q8
    wait_for(browser, lambda d: not row(d, picked).find_elements(By.TAG_NAME, "progress"))

    # Settings: invalid JSON is refused in place; a valid edit is saved with PATCH.
    button(browser, f"Settings {picked}").click()
    name = shown(browser, By.ID, "settings-name")
    params = browser.find_element(By.ID, "settings-parameters")
    name.clear()
    name.send_keys("Tiny web Q8")
    params.clear()
    params.send_keys('{"temperature": 0.5,')
    button(browser, f"Save settings of {picked}").click()
    error = browser.find_element(By.ID, "settings-error")
    wait_for(browser, lambda d: "not valid JSON" in error.text)
    assert params.get_attribute("aria-invalid") == "true"
    params.clear()
    params.send_keys('{"temperature": 0.5, "max_tokens": 8, "ctx_len": 256}')
    button(browser, f"Save settings of {picked}").click()
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"))
    wait_for(
        browser, lambda d: row(d, picked).find_element(By.CSS_SELECTOR, ".model-name").text == "Tiny web Q8"
    )
    saved = json.loads((stack.root / "models" / "tinyweb-GGUF" / "tinyweb.Q8_0.json").read_text())
    assert saved["name"] == "Tiny web Q8" and saved["parameters"]["temperature"] == 0.5

    # Start; the Running view lists it with its memory; Stop there.
    button(browser, f"Start {picked}").click()
    wait_state(browser, picked, "running", timeout=60)
    browser.find_element(By.ID, "nav-running").click()
    running = wait_for(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, f'#running-view tr[data-id="{picked}"]')
    )
    assert "Tiny web Q8" in running.text and "llamacpp" in running.text
    screenshot(browser, "running")
    button(browser, f"Stop {picked}").click()
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'#running-view tr[data-id="{picked}"]'))
    browser.find_element(By.ID, "nav-models").click()
    wait_state(browser, picked, "stopped")

    # Export saves the folder's archive (fetched with the key in a header, saved from a blob URL).
    button(browser, f"Export {picked}").click()
    wait_for(browser, lambda d: (tmp_path / "tinyweb-GGUF.tar.gz").exists(), timeout=TIMEOUT)

    # Delete says the downloaded file goes, and removes it.
    button(browser, f"Delete {picked}").click()
    dialog = shown(browser, By.CSS_SELECTOR, "dialog[open]")
    assert "downloaded files are deleted" in dialog.text and "tinyweb.Q8_0.gguf" in dialog.text
    button(browser, f"Delete {picked} now").click()
    wait_for(browser, lambda d: not has_row(d, picked))
    assert not binary.exists()
    assert unexpected_errors(browser) == []


def test_a_local_import_is_deleted_with_the_original_file_kept(stack: Stack, browser: WebDriver) -> None:
    original = write_tiny_gguf(stack.imports / "mine.Q4_K_M.gguf", chat_template=CHAT_TEMPLATE)  # type: ignore[attr-defined]
    before = original.read_bytes()
    open_hub(browser, stack.url)
    browser.find_element(By.ID, "import-source").send_keys(str(original), Keys.ENTER)
    model = "mine.Q4_K_M/mine.Q4_K_M"
    wait_for(browser, lambda d: has_row(d, model))
    wait_state(browser, model, "stopped")
    button(browser, f"Delete {model}").click()
    dialog = shown(browser, By.CSS_SELECTOR, "dialog[open]")
    assert "Your original file" in dialog.text and "is kept" in dialog.text, dialog.text
    button(browser, f"Delete {model} now").click()
    wait_for(browser, lambda d: not has_row(d, model))
    assert original.read_bytes() == before  # the user's file is untouched
    assert not (stack.root / "models" / "mine.Q4_K_M").exists()
    assert unexpected_errors(browser) == []


def test_a_folder_imports_in_place_from_the_form(stack: Stack, browser: WebDriver) -> None:
    folder = stack.imports / "webdir"  # type: ignore[attr-defined]
    write_tiny_gguf(folder / "WebDir-Q4_K_M.gguf", chat_template=CHAT_TEMPLATE, seed=1)
    write_tiny_gguf(folder / "deeper" / "WebDir-Q8_0.gguf", chat_template=CHAT_TEMPLATE, seed=2)
    (folder / "notes.gguf").write_bytes(b"<b>not a model</b>")
    open_hub(browser, stack.url)
    browser.find_element(By.ID, "import-source").send_keys(str(folder), Keys.ENTER)
    status = browser.find_element(By.CSS_SELECTOR, ".import-status")
    wait_for(browser, lambda d: "Imported 2 new models in place in WebDir" in status.text)
    assert "Skipped 1" in status.text and "notes.gguf" in status.text
    for model in ("WebDir/WebDir-Q4_K_M", "WebDir/WebDir-Q8_0"):
        wait_for(browser, lambda d, m=model: has_row(d, m))
        wait_state(browser, model, "stopped")  # there already: nothing to download
    assert (stack.root / "models" / "WebDir" / "WebDir-Q4_K_M.gguf").is_symlink()
    assert browser.find_elements(By.CSS_SELECTOR, ".import-status b") == []  # text, never HTML
    assert unexpected_errors(browser) == []


def test_cancel_stops_a_download_and_leaves_no_partial_file(
    stack: Stack, shared_hub: FakeHub, browser: WebDriver, tmp_path: Path
) -> None:
    data = write_tiny_gguf(tmp_path / "slow.gguf", chat_template=CHAT_TEMPLATE).read_bytes()
    data += b"\0" * (9 * MiB - len(data))
    shared_hub.add_file("/files/slow.Q4_K_M.gguf", data)
    shared_hub.faults["/files/slow.Q4_K_M.gguf"] = Faults(stall_at=5 * MiB, stall_seconds=25)
    folder = stack.root / "models" / "slow"
    folder.mkdir()
    (folder / "slow.Q4_K_M.json").write_text(
        json.dumps({"source_url": f"{shared_hub.url}/files/slow.Q4_K_M.gguf"})
    )
    model = "slow/slow.Q4_K_M"
    open_hub(browser, stack.url)
    wait_for(browser, lambda d: has_row(d, model))
    button(browser, f"Download {model}").click()
    progress = f'#models-view tr[data-id="{model}"] progress'
    wait_for(
        browser, lambda d: float(d.find_element(By.CSS_SELECTOR, progress).get_attribute("value") or 0) > 0
    )
    button(browser, f"Cancel {model}").click()
    wait_state(browser, model, "not-downloaded")
    wait_for(browser, lambda d: not row(d, model).find_elements(By.TAG_NAME, "progress"))
    leftovers = [p.name for p in folder.iterdir() if p.name != "slow.Q4_K_M.json"]
    assert leftovers == [], leftovers  # no half file that looks like a model
    assert unexpected_errors(browser) == []


def test_chat_button_switches_to_the_chat_view(stack: Stack, browser: WebDriver) -> None:
    open_hub(browser, stack.url)
    browser.execute_script(
        "window.__chat = null; window.addEventListener('jan:chat', e => window.__chat = e.detail.model)"
    )
    button(browser, "Chat tiny/chat").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "chat-view").is_displayed())
    assert browser.execute_script("return window.__chat") == "tiny/chat"
    assert not browser.find_element(By.ID, "models-view").is_displayed()
    assert browser.find_element(By.ID, "nav-chat").get_attribute("aria-current") == "page"
    browser.back()
    wait_for(browser, lambda d: d.find_element(By.ID, "models-view").is_displayed())
    assert unexpected_errors(browser) == []


def test_the_key_prompt_when_the_api_wants_a_key(keyed_stack: Stack, browser: WebDriver) -> None:
    browser.get(keyed_stack.url + "/")
    key = shown(browser, By.ID, "api-key-input")
    assert key.get_attribute("type") == "password"
    assert browser.find_element(By.CSS_SELECTOR, "label[for=api-key-input]").text == "API key"
    assert browser.switch_to.active_element == key
    screenshot(browser, "key-prompt")
    # Dismissed (Escape): the page says a key is needed and offers the prompt again.
    key.send_keys(Keys.ESCAPE)
    again = shown(browser, By.CSS_SELECTOR, ".load-error button")
    assert "API key is needed" in browser.find_element(By.CSS_SELECTOR, ".load-error").text
    again.click()
    key = shown(browser, By.ID, "api-key-input")
    key.send_keys("wrong-key", Keys.ENTER)
    # A wrong key: asked again, saying why.
    wait_for(browser, lambda d: "invalid" in d.find_element(By.CSS_SELECTOR, "dialog[open]").text.lower())
    key = browser.find_element(By.ID, "api-key-input")
    key.send_keys(API_KEY, Keys.ENTER)
    wait_for(browser, lambda d: has_row(d, "tiny/chat"))
    assert API_KEY not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('jan.apiKey')") == API_KEY
    # Live updates work with the key too.
    folder = keyed_stack.root / "models" / "keyed"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keyed.json").write_text(json.dumps({"name": "keyed model"}))
    wait_for(browser, lambda d: has_row(d, "keyed/keyed"))
    assert unexpected_errors(browser, 401) == []


@pytest.fixture(autouse=True)
def _no_alert(browser: WebDriver) -> Any:
    """No test may leave a JavaScript alert open (a name run as markup would open one)."""
    yield
    alerts = browser.execute_script("return 0")  # raises UnexpectedAlertPresentException if one is open
    assert alerts == 0
