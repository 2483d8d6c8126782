"""Benchmark: first render of the web page's hub with 1,000 models, in headless Chromium.

Starts the real services (as `make up` does) over a generated JAN_ROOT of N model objects, opens `/` in
Debian's headless Chromium (selenium + chromedriver, as tests/browser), and measures from navigation start
to the moment the page holds a table row for every model (a MutationObserver installed before any page
script runs, through the DevTools protocol, notes the time). The peer, measured in the same run and the
same browser: a static HTML page with the same N rows already in its markup, served from loopback (what
the browser itself needs to lay out such a table). Also prints the compressed size of the page's assets.

Usage: python bench/web/bench_hub.py [--models 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import gzip
import html
import http.server
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from selenium import webdriver

from cli.stack import SERVICES, Stack, free_port

WEB = Path(__file__).resolve().parents[2] / "gateway" / "web"
# Notes performance.now() when the document first holds `want` table rows (set before navigation).
OBSERVER = """
window.__rows = null;
new MutationObserver((_, observer) => {
  if (document.querySelectorAll("tbody tr").length >= %d) {
    window.__rows = performance.now();
    observer.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
"""


def make_root(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / "models" / f"model-{i:05d}"
        folder.mkdir(parents=True)
        quant = ("Q4_K_M", "Q5_K_S", "Q8_0")[i % 3]
        obj = {
            "source_url": f"https://huggingface.co/org{i % 50}/m-{i}-GGUF/resolve/main/m-{i}.{quant}.gguf",
            "name": f"Model {i} {quant}",
            "parameters": {"ctx_len": 4096, "temperature": 0.7},
            "metadata": {"engine": "llamacpp", "quantization": quant, "size": 4_000_000_000 + i},
        }
        (folder / f"model-{i:05d}-{quant}.json").write_text(json.dumps(obj))


def static_page(folder: Path, count: int) -> None:
    rows = "".join(
        f"<tr><td>{html.escape(f'model-{i:05d}/x')}</td><td>not-downloaded</td><td>llamacpp</td>"
        f"<td>Q4_K_M</td><td>3.7 GiB</td><td>fits</td><td>org{i % 50}</td>"
        "<td><button>Download</button></td></tr>"
        for i in range(count)
    )
    (folder / "index.html").write_text(
        f"<!doctype html><title>peer</title><table><tbody>{rows}</tbody></table>"
    )


def quiet_handler(folder: Path) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "chromedriver")
    return webdriver.Chrome(options=options, service=service)


def first_render_ms(driver: webdriver.Chrome, url: str, count: int) -> float:
    script = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OBSERVER % count})[
        "identifier"
    ]
    try:
        driver.get("about:blank")
        driver.get(url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            at = driver.execute_script("return window.__rows")
            if at is not None:
                return float(at)
            time.sleep(0.02)
        raise RuntimeError(f"{url}: {count} rows never appeared")
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script})


def assets_gzip_bytes() -> int:
    return sum(len(gzip.compress(p.read_bytes(), 9)) for p in WEB.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, peer = Path(tmp) / "jan", Path(tmp) / "peer"
        make_root(root, args.models)
        peer.mkdir()
        static_page(peer, args.models)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), quiet_handler(peer))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stack = Stack(root=root, ports={name: free_port() for name in SERVICES})
        stack.start(extra_env={"JAN_CATALOG_SEED_MODELS_DIR": ""})
        driver = browser()
        try:
            ours, theirs = [], []
            for _ in range(args.runs):
                ours.append(first_render_ms(driver, stack.url + "/", args.models))
                theirs.append(first_render_ms(driver, f"http://127.0.0.1:{server.server_port}/", args.models))
        finally:
            driver.quit()
            stack.stop()
            server.shutdown()
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"hub first render, {args.models} models, median of {args.runs}: {o:.0f} ms (runs {ours!r})")
    print(f"peer: static table of the same rows: {t:.0f} ms (runs {theirs!r})")
    print(f"ratio ours/peer: {o / t:.2f}x; target: under 1000 ms -> {'met' if o < 1000 else 'NOT met'}")
    size = assets_gzip_bytes()
    met = "met" if size < 200_000 else "NOT met"
    print(f"page assets (gateway/web), gzip -9: {size / 1024:.1f} KiB; target: under 200 KB -> {met}")


if __name__ == "__main__":
    main()
