"""The Chat view in a real browser against the real services: a streamed answer with its time to first
token and tokens/s, Stop keeping the partial answer, conversations kept across a reload, the per-chat
settings reaching the model, API errors shown in place, model output and model names rendered as text,
and markdown.js's own safety checks run in the browser.

The tiny GGUF (`tiny/chat`) babbles and is too fast to stop; the other models are `api`-engine objects on
`FakeOpenAI` below, a loopback OpenAI-compatible server whose answers are known in advance (the stack
allows loopback remotes: JAN_ALLOW_PRIVATE_NETWORKS=true)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from cli.stack import Stack
from tests.browser.conftest import API_KEY, console_errors, screenshot

EVIL_NAME = "fake/<img src=x onerror=alert(1)>"
FAKE_MODELS = {  # model id -> the fake's model (its behaviour)
    "fake/echo": "echo",
    "fake/slow": "slow",
    "fake/broken": "broken",
    "fake/assistant": "assistant",
    EVIL_NAME: "echo",
}
THOUGHT = "The user wants a small example. A function and one call will do."
ANSWER = """Here is a **Python** function that greets someone:

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"
```

- Call it as `greet("Ada")`
- It returns a *new* string

See the [Python tutorial](https://docs.python.org/3/tutorial/) for more."""


class FakeOpenAI:
    """An OpenAI-compatible remote on loopback. Its models: `echo` says the last user message back,
    `slow` says `word1 word2 …` one word per 50 ms up to max_tokens, `broken` says two words and then
    fails mid-stream, `assistant` thinks THOUGHT and answers ANSWER. `bodies` records every request."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._json(
                    {"object": "list", "data": [{"id": m, "object": "model"} for m in ("echo", "slow")]}
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                fake.bodies.append(body)
                try:
                    fake.answer(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (Stop)

            def _json(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def pieces(model: str, body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], float]]:
        """(delta, pause before it) for each piece of `model`'s answer."""
        if model == "echo":
            text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            for i in range(0, len(text), 5):
                yield {"content": text[i : i + 5]}, 0.01
        elif model == "slow":
            for i in range(int(body.get("max_tokens") or 16)):
                yield {"content": f" word{i + 1}"}, 0.05
        elif model == "broken":
            yield {"content": "Two words"}, 0.01
            yield {"error": "the remote fell over"}, 0.01
        else:
            for i in range(0, len(THOUGHT), 8):
                yield {"reasoning_content": THOUGHT[i : i + 8]}, 0.01
            for i in range(0, len(ANSWER), 12):
                yield {"content": ANSWER[i : i + 12]}, 0.01

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = body["model"]
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()  # HTTP/1.0: the stream ends when the connection closes

        def event(payload: dict[str, Any]) -> None:
            handler.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            handler.wfile.flush()

        count = 0
        for delta, pause in self.pieces(model, body):
            time.sleep(pause)
            if "error" in delta:
                event({"error": {"message": delta["error"], "type": "server_error"}})
                return
            count += 1
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            event(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [choice],
                }
            )
        usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": 5 + count}
        event(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [],
                "usage": usage,
            }
        )
        handler.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI()
    yield f
    f.close()


@pytest.fixture(scope="module")
def site(stack: Stack, fake: FakeOpenAI) -> Iterator[str]:
    """The stack's URL with the fake's models added; afterwards the stack is as it was (the other browser
    tests share it): the fake models deleted and `tiny/chat` stopped."""
    for model_id, remote in FAKE_MODELS.items():
        body = {
            "id": model_id,
            "source_url": f"{fake.url}/models/{remote}",
            "parameters": {"API-KEY": "sk-fake-0123456789"},
            "metadata": {"engine": "api"},
        }
        resp = httpx.post(f"{stack.url}/v1/models", json=body)
        assert resp.status_code == 201, resp.text
    yield stack.url
    for model_id in [*FAKE_MODELS, "fake/gone"]:
        httpx.delete(f"{stack.url}/v1/models/{path(model_id)}", timeout=60)
    httpx.post(f"{stack.url}/v1/models/tiny/chat/stop", timeout=60)


def path(model_id: str) -> str:
    return "/".join(quote(part, safe="") for part in model_id.split("/"))


# Mounts the view on a section of its own when the page has no Chat navigation (yet).
MOUNT = """
const done = arguments[arguments.length - 1];
let section = document.querySelector("#chat-view");
if (!section) {
  section = document.createElement("section");
  section.id = "chat-view";
  document.body.append(section);
}
if (!document.querySelector('link[href="/ui/chat.css"]')) {
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "/ui/chat.css";
  document.head.append(link);
}
if (section.querySelector(".chat")) { done(true); return; }
import("/ui/chat.js").then((m) => { m.mountChat(section); done(true); }, (e) => done(String(e)));
"""


def wait(driver: Any, timeout: float = 20, **kw: Any) -> WebDriverWait:
    return WebDriverWait(driver, timeout, **kw)


def open_chat(driver: Any, url: str) -> None:
    driver.get(url + "/")
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")
    try:
        button = wait(driver, 3).until(
            EC.element_to_be_clickable((By.XPATH, "//nav//button[normalize-space()='Chat']"))
        )
        button.click()
    except TimeoutException:
        assert driver.execute_async_script(MOUNT) is True
    wait(driver).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#chat-view .chat-input")))


def q(driver: Any, css: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, "#chat-view " + css)


def qs(driver: Any, css: str) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#chat-view " + css)


PICKER = "document.querySelector('#chat-view .chat-model')"


def pick(driver: Any, model: str) -> None:
    """Chooses `model` in the picker (its options are rebuilt when the models' states change)."""
    wait(driver).until(
        lambda d: d.execute_script(
            f"return [...{PICKER}.options].some((o) => o.value === arguments[0])", model
        )
    )
    wait(driver, 5, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: Select(q(d, ".chat-model")).select_by_value(model) or chosen(d)[0] == model
    )


def chosen(driver: Any) -> list[str]:
    """The picker's chosen option: [value, text]."""
    return list(driver.execute_script(f"const o = {PICKER}.selectedOptions[0]; return [o.value, o.text]"))


def say(driver: Any, text: str) -> None:
    box = wait(driver).until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".chat-input")))
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def answers(driver: Any) -> list[Any]:
    return qs(driver, ".msg-assistant")


def finished(driver: Any, count: int) -> Any:
    """The count-th answer, once its stream has ended."""
    wait(driver, 60).until(
        lambda d: len(answers(d)) >= count and answers(d)[count - 1].get_attribute("aria-busy") == "false"
    )
    return answers(driver)[count - 1]


def test_markdown_renders_safely(site: str, browser: Any) -> None:
    browser.get(site + "/")
    results = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const cases = arguments[0];
        import("/ui/markdown.js").then(({ renderMarkdown }) => {
          done(cases.map((source) => {
            const box = document.createElement("div");
            box.append(renderMarkdown(source));
            const tags = [...box.querySelectorAll("*")].map((e) => e.tagName.toLowerCase());
            const links = [...box.querySelectorAll("a")]
              .map((a) => [a.getAttribute("href"), a.rel, a.target, a.textContent]);
            const code = [...box.querySelectorAll("pre code")].map((c) => c.textContent);
            const copy = [...box.querySelectorAll("button")].map((b) => b.getAttribute("aria-label"));
            return { tags, links, code, copy, text: box.textContent };
          }));
        }, (e) => done(String(e)));
        """,
        [
            "<script>alert(1)</script>",
            "Hi <img src=x onerror=alert(1)> and <iframe src=//x></iframe>",
            "[x](javascript:alert(1)) [y](data:text/html,<b>) [z](/relative) ![i](javascript:x)",
            '[ok](https://example.com/a?b=1 "T") <mailto:a@b.example> see https://example.com/x.',
            "````md\n```js\nalert(1)\n```\n````\nafter",
            "```python\nprint('<b>')",  # unclosed while streaming
            "# Title\n\n**bold** *em* `a <b> c` ~~gone~~ snake_case_name\n\n> quoted\n> **text**",
            "- one\n- two\n  1. nested\n  2. list\n- three",
            ">" * 200 + " deep",
            "| a | b |\n|---|--:|\n| <b>1</b> | **2** |",
        ],
    )
    assert isinstance(results, list), results
    script, img, links, safe, fences, unclosed, inline, lists, deep, table = results
    for r in results:
        assert not {"script", "img", "iframe", "style"} & set(r["tags"]), r
    assert script["text"] == "<script>alert(1)</script>" and script["tags"] == ["p"]
    assert img["text"] == "Hi <img src=x onerror=alert(1)> and <iframe src=//x></iframe>"
    assert links["links"] == [] and "[x](javascript:alert(1))" in links["text"]
    assert "[y](data:text/html,<b>)" in links["text"] and "[z](/relative)" in links["text"]
    assert safe["links"] == [
        ["https://example.com/a?b=1", "noopener noreferrer", "_blank", "ok"],
        ["mailto:a@b.example", "noopener noreferrer", "_blank", "mailto:a@b.example"],
        ["https://example.com/x", "noopener noreferrer", "_blank", "https://example.com/x"],
    ]
    assert fences["code"] == ["```js\nalert(1)\n```"] and fences["text"].endswith("after")
    assert fences["copy"] == ["Copy md code"]
    assert unclosed["code"] == ["print('<b>')"] and unclosed["copy"] == ["Copy python code"]
    assert inline["tags"][:1] == ["h3"] and {"strong", "em", "code", "del", "blockquote"} <= set(
        inline["tags"]
    )
    assert "a <b> c" in inline["text"] and "snake_case_name" in inline["text"] and "**" not in inline["text"]
    assert lists["tags"] == ["ul", "li", "li", "ol", "li", "li", "li"]
    assert "deep" in deep["text"]
    assert table["tags"] == ["div", "table", "thead", "tr", "th", "th", "tbody", "tr", "td", "td", "strong"]
    assert table["text"] == "ab<b>1</b>2"
    assert console_errors(browser) == []


def test_an_answer_streams_with_its_stats_and_survives_a_reload(site: str, browser: Any) -> None:
    open_chat(browser, site)
    pick(browser, "tiny/chat")
    q(browser, ".chat-max-tokens").send_keys("20")
    box = q(browser, ".chat-input")
    box.send_keys("Hello", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "there")  # Shift+Enter: a new line, not sent
    assert answers(browser) == [] and box.get_attribute("value") == "Hello\nthere"
    box.send_keys(Keys.ENTER)
    answer = finished(browser, 1)
    text = answer.find_element(By.CSS_SELECTOR, ".msg-body").text
    assert text.strip()
    stats = answer.find_element(By.CSS_SELECTOR, ".msg-stats").text
    assert re.search(r"TTFT \d+\.\d+ s", stats) and re.search(r"\d+\.\d tokens/s", stats), stats
    tokens = int(answer.find_element(By.CSS_SELECTOR, ".stat-tokens").text.split()[0])
    assert 0 < tokens <= 20
    assert q(browser, ".msg-user .msg-body").text == "Hello\nthere"
    assert q(browser, ".chat-open[aria-current='true']").text == "Hello"
    assert box.get_attribute("value") == ""

    browser.refresh()
    open_chat(browser, site)
    wait(browser).until(lambda d: len(answers(d)) == 1)
    assert answers(browser)[0].find_element(By.CSS_SELECTOR, ".msg-body").text == text
    assert answers(browser)[0].find_element(By.CSS_SELECTOR, ".msg-stats").text == stats
    assert chosen(browser)[0] == "tiny/chat"
    assert q(browser, ".chat-max-tokens").get_attribute("value") == "20"
    assert console_errors(browser) == []


def test_settings_are_sent_and_stop_keeps_the_partial_answer(
    site: str, browser: Any, fake: FakeOpenAI
) -> None:
    open_chat(browser, site)
    pick(browser, "fake/echo")
    q(browser, ".chat-system").send_keys("You answer in rhymes.")
    q(browser, ".chat-temperature").send_keys("0.3")
    q(browser, ".chat-max-tokens").send_keys("7")
    say(browser, "ping pong")
    assert finished(browser, 1).find_element(By.CSS_SELECTOR, ".msg-body").text == "ping pong"
    sent = fake.bodies[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You answer in rhymes."}
    assert sent["messages"][-1] == {"role": "user", "content": "ping pong"}
    assert sent["temperature"] == pytest.approx(0.3) and sent["max_tokens"] == 7

    # The same chat on a slow model with room for 400 tokens: Stop keeps what came.
    pick(browser, "fake/slow")
    q(browser, ".chat-max-tokens").send_keys(Keys.BACKSPACE, "400")
    say(browser, "count")
    wait(browser).until(lambda d: "word3" in answers(d)[1].text)
    assert fake.bodies[-1]["messages"][-3:-1] == [
        {"role": "user", "content": "ping pong"},
        {"role": "assistant", "content": "ping pong"},
    ]
    assert not q(browser, ".chat-send").is_displayed()
    q(browser, ".chat-stop").click()
    answer = finished(browser, 2)
    partial = answer.find_element(By.CSS_SELECTOR, ".msg-body").text
    assert partial.startswith("word1 word2 word3") and "word400" not in partial
    assert "stopped" in answer.find_element(By.CSS_SELECTOR, ".msg-stats").text
    assert "TTFT" in answer.find_element(By.CSS_SELECTOR, ".msg-stats").text
    assert not answer.find_element(By.CSS_SELECTOR, ".msg-error").is_displayed()
    assert q(browser, ".chat-send").is_displayed() and not q(browser, ".chat-stop").is_displayed()
    time.sleep(0.3)
    assert answer.find_element(By.CSS_SELECTOR, ".msg-body").text == partial  # nothing more arrives
    assert console_errors(browser) == []


def test_api_errors_show_in_place(site: str, browser: Any, fake: FakeOpenAI) -> None:
    body = {"id": "fake/gone", "source_url": f"{fake.url}/models/echo", "metadata": {"engine": "api"}}
    assert httpx.post(f"{site}/v1/models", json=body).status_code == 201
    open_chat(browser, site)

    pick(browser, "fake/echo")
    q(browser, ".chat-temperature").send_keys("9")
    say(browser, "too hot")
    error = finished(browser, 1).find_element(By.CSS_SELECTOR, ".msg-error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert error.text.startswith("Error 422:") and "temperature" in error.text and "5" in error.text

    pick(browser, "fake/broken")  # fails in the middle of its answer: the words so far stay
    q(browser, ".chat-temperature").send_keys(Keys.BACKSPACE)  # (clear() sends no input event)
    say(browser, "go")
    answer = finished(browser, 2)
    assert answer.find_element(By.CSS_SELECTOR, ".msg-body").text == "Two words"
    assert "the remote fell over" in answer.find_element(By.CSS_SELECTOR, ".msg-error").text

    pick(browser, "fake/gone")  # deleted while it is chosen
    assert httpx.delete(f"{site}/v1/models/fake/gone").status_code == 200
    say(browser, "anyone?")
    error = finished(browser, 3).find_element(By.CSS_SELECTOR, ".msg-error")
    assert error.text.startswith("Error 404:") and "not found" in error.text
    # Failed answers are not sent back as history.
    pick(browser, "fake/echo")
    say(browser, "still here")
    assert finished(browser, 4).find_element(By.CSS_SELECTOR, ".msg-body").text == "still here"
    assert [m["content"] for m in fake.bodies[-1]["messages"]] == [
        "too hot",
        "go",
        "Two words",
        "anyone?",
        "still here",
    ]
    # Chromium logs each error status of a fetch as "Failed to load resource": those two are expected.
    errors = console_errors(browser)
    expected = [e for e in errors if "/v1/chat/completions - Failed to load resource" in e]
    assert len(expected) == 2 and "422" in expected[0] and "404" in expected[1], errors
    assert [e for e in errors if e not in expected] == []


def test_html_in_answers_and_model_names_is_text(site: str, browser: Any) -> None:
    open_chat(browser, site)
    pick(browser, EVIL_NAME)
    evil = (
        "<script>window.pwned = 1</script> <img src=x onerror=window.pwned=2> [x](javascript:window.pwned=3)"
    )
    say(browser, evil)
    answer = finished(browser, 1)
    assert answer.find_element(By.CSS_SELECTOR, ".msg-body").text == evil  # the echo model said it back
    assert answer.find_element(By.CSS_SELECTOR, ".msg-who").text == EVIL_NAME
    assert chosen(browser) == [EVIL_NAME, EVIL_NAME]
    assert q(browser, ".chat-open").text.startswith("<script>")
    view = "#chat-view :is(script, img, iframe, a)"
    assert browser.execute_script(f"return document.querySelectorAll('{view}').length") == 0
    assert browser.execute_script("return window.pwned") is None
    assert console_errors(browser) == []


def test_conversations_new_switch_delete_and_the_hub_button(site: str, browser: Any) -> None:
    open_chat(browser, site)
    pick(browser, "fake/assistant")
    say(browser, "Show me a greeting function in Python")
    answer = finished(browser, 1)
    assert answer.find_element(By.CSS_SELECTOR, ".msg-body pre code").text.startswith("def greet")
    thinking = answer.find_element(By.CSS_SELECTOR, ".msg-thinking")
    assert thinking.is_displayed() and thinking.get_attribute("open") is None  # collapsed
    link = answer.find_element(By.CSS_SELECTOR, ".msg-body a")
    assert link.get_attribute("rel") == "noopener noreferrer" and link.get_attribute("target") == "_blank"
    copy = answer.find_element(By.CSS_SELECTOR, ".md-copy")
    assert copy.get_attribute("aria-label") == "Copy python code"
    copy.click()
    wait(browser, 5).until(lambda d: copy.text in ("Copied", "Copy failed"))

    # The hub's Chat button: a new chat with that model, the message box focused.
    browser.execute_script(
        "window.dispatchEvent(new CustomEvent('jan:chat', {detail: {model: 'fake/echo'}}))"
    )
    wait(browser, 5).until(lambda d: len(qs(d, ".chat-item")) == 2)
    assert chosen(browser)[0] == "fake/echo"
    assert browser.switch_to.active_element == q(browser, ".chat-input")
    assert answers(browser) == []
    assert q(browser, ".chat-temperature").get_attribute("value") == ""
    say(browser, "second chat")
    finished(browser, 1)
    q(browser, ".chat-new").click()  # a third, empty
    assert len(qs(browser, ".chat-item")) == 3 and qs(browser, ".chat-empty")

    # Switch back to the first, delete the others.
    first = next(b for b in qs(browser, ".chat-open") if b.text.startswith("Show me"))
    first.click()
    wait(browser, 5).until(lambda d: len(answers(d)) == 1 and "def greet" in answers(d)[0].text)
    for button in qs(browser, ".chat-item:not(.current) .chat-delete"):
        assert button.get_attribute("aria-label").startswith("Delete chat")
    while len(qs(browser, ".chat-item")) > 1:
        qs(browser, ".chat-item:not(.current) .chat-delete")[0].click()
    assert [b.text for b in qs(browser, ".chat-open")] == ["Show me a greeting function in Python"]
    stored = browser.execute_script("return JSON.parse(localStorage.getItem('jan.chats'))")
    assert [c["model"] for c in stored["chats"]] == ["fake/assistant"]
    screenshot(browser, "chat")
    assert console_errors(browser) == []


@pytest.fixture
def keyed_site(keyed_stack: Stack) -> Iterator[str]:
    """The keyed stack's URL; afterwards `tiny/chat` is stopped again (other tests share the stack)."""
    yield keyed_stack.url
    auth = {"Authorization": f"Bearer {API_KEY}"}
    httpx.post(f"{keyed_stack.url}/v1/models/tiny/chat/stop", headers=auth, timeout=60)


def test_without_a_key_the_prompt_opens_and_a_401_shows_in_place(keyed_site: str, browser: Any) -> None:
    browser.get(keyed_site + "/#chat")
    key = wait(browser).until(EC.visibility_of_element_located((By.ID, "api-key-input")))  # the page's prompt
    wait(browser).until(lambda d: "Error 401" in q(d, ".chat-notice").text)  # and the view says why
    key.send_keys(API_KEY)
    browser.find_element(By.XPATH, "//dialog//button[normalize-space()='Use key']").click()
    pick(browser, "tiny/chat")  # listed once the key is there
    assert not q(browser, ".chat-notice").is_displayed()
    q(browser, ".chat-max-tokens").send_keys("4")
    say(browser, "hi")
    assert finished(browser, 1).find_element(By.CSS_SELECTOR, ".stat-tokens").text == "4 tokens"

    # The key is gone: the next answer is refused. Cleared and sent in one script, since any background
    # call (the events stream, the memory fit) that meets the 401 first opens the key prompt, whose modal
    # dialog would leave the message box out of reach.
    browser.execute_script(
        """sessionStorage.clear();
        const box = document.querySelector(".chat-input");
        box.value = "again";
        box.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true}));"""
    )
    error = finished(browser, 2).find_element(By.CSS_SELECTOR, ".msg-error")
    assert error.text.startswith("Error 401:")
    wait(browser).until(EC.visibility_of_element_located((By.ID, "api-key-input")))
    errors = console_errors(browser)
    assert errors and all("status of 401" in e for e in errors), errors
