"""How the gateway serves the page: at `/` for browsers (Ollama's answer for tools), its assets under
`/ui/`, the security headers, and no key needed to load it."""

from __future__ import annotations

import httpx

from cli.stack import Stack
from tests.browser.conftest import console_errors


def test_the_page_loads_in_a_browser_with_no_console_errors(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    browser.get(stack.url + "/")
    assert browser.title == "Jan Models"
    assert console_errors(browser) == []


def test_security_headers_and_assets(stack: Stack) -> None:
    page = httpx.get(stack.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    script = httpx.get(stack.url + "/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for bad in ("/ui/..%2Fweb.py", "/ui/.hidden.js", "/ui/nothing.js", "/ui/web.py"):
        assert httpx.get(stack.url + bad).status_code == 404, bad
    # Tools probing an Ollama server's root get Ollama's answer.
    assert httpx.get(stack.url + "/").text == "Ollama is running"


def test_the_page_needs_no_key_and_the_api_does(keyed_stack: Stack) -> None:
    assert httpx.get(keyed_stack.url + "/", headers={"Accept": "text/html"}).status_code == 200
    assert httpx.get(keyed_stack.url + "/ui/api.js").status_code == 200
    assert httpx.get(keyed_stack.url + "/v1/models").status_code == 401
    assert httpx.get(keyed_stack.url + "/v1/events").status_code == 401
