"""The web page's assets (gateway/web/): small enough, all present, and never building HTML from text.

Model names and model output reach the page as data; the page builds its DOM with createElement and
textContent only. These checks keep the APIs that parse text as HTML (or run it) out of every module,
so that rule cannot be broken by accident; the browser tests check the result in a real browser."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "gateway" / "web"
HTML_SINKS = re.compile(
    r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|\beval\(|new Function\(|"
    r"createContextualFragment|srcdoc|DOMParser"
)


def test_the_assets_are_under_200_kb_compressed() -> None:
    size = sum(len(gzip.compress(p.read_bytes(), 9)) for p in WEB.iterdir() if p.is_file())
    assert size < 200_000, f"{size} bytes compressed"


def test_every_asset_the_page_loads_is_there() -> None:
    index = (WEB / "index.html").read_text()
    for name in re.findall(r'(?:src|href)="/ui/([^"]+)"', index):
        assert (WEB / name).is_file(), name
    for module in WEB.glob("*.js"):
        for name in re.findall(r'(?:from\s+|import\()"\./([^"]+)"', module.read_text()):
            assert (WEB / name).is_file(), f"{module.name} imports {name}"


def test_no_module_turns_text_into_html_or_code() -> None:
    for module in WEB.glob("*.js"):
        found = HTML_SINKS.findall(module.read_text())
        assert not found, f"{module.name}: {found}"


def test_the_page_has_no_inline_script_or_style() -> None:
    index = (WEB / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", index), "inline <script>"
    assert not re.search(r"\son\w+=", index) and "style=" not in index and "<style" not in index
