"""The web page: `/` and its assets `/ui/<file>`, shipped inside the gateway package (gateway/web/, plain
ES modules and CSS: nothing is built or installed at run time).

The page and its assets hold no data, so they load without an API key (the page then asks for one and
sends it with every API call). Every answer here carries the security headers below: a
Content-Security-Policy with no inline script and no other origin, `nosniff`, no referrer, no framing.
`GET /` answers the page to browsers (they ask for text/html) and Ollama's "Ollama is running" to the
tools that probe an Ollama server's root (Ollama's dialect: gateway/routes/ollama.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from gateway.errors import APIError

router = APIRouter(include_in_schema=False)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
OLLAMA_ROOT = "Ollama is running"


def _asset(name: str) -> Response:
    """A file of gateway/web/ by its plain name (no folders, no dot files), with its media type."""
    suffix = Path(name).suffix
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in MEDIA_TYPES:
        raise APIError(404, f"no such asset: {name!r}", code="not_found")
    path = WEB_DIR / name
    if not path.is_file():
        raise APIError(404, f"no such asset: {name!r}", code="not_found")
    return Response(path.read_bytes(), media_type=MEDIA_TYPES[suffix], headers=SECURITY_HEADERS)


@router.get("/")
async def root(request: Request) -> Response:
    """The page for a browser; Ollama's answer for a tool probing the root."""
    if "text/html" in request.headers.get("accept", ""):
        return _asset("index.html")
    return PlainTextResponse(OLLAMA_ROOT, headers=SECURITY_HEADERS)


@router.head("/")
async def root_head() -> Response:
    return PlainTextResponse(OLLAMA_ROOT, headers=SECURITY_HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    return _asset(name)
