"""API keys: when any are configured, every route but the open ones needs a key, read where the route's
own clients send it: `Authorization: Bearer <key>` everywhere (OpenAI's SDK; Ollama's clients given the
header), and `x-api-key: <key>` on Anthropic's routes too (Anthropic's SDK).

Keys come from `JAN_API_KEYS` (comma-separated) and/or `JAN_API_KEYS_FILE` (one per line, blank lines
and `#` comments ignored). A missing or wrong key gets 401 in the one error shape with
`WWW-Authenticate: Bearer`. Keys are compared as sha256 digests with `hmac.compare_digest` against every
configured key, so neither the length nor the position of a match shows in the timing, and no key is
ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import Dialect, error_json

log = logging.getLogger(__name__)

# Paths that never need a key: liveness probes must work without a secret.
ALWAYS_OPEN = frozenset({"/healthz"})
# The API's description (no data in it), so tools and people can read how to call it.
DOC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# The web page and its assets (no data in them): the page asks for a key and sends it with every call.
PAGE_PATHS = frozenset({"/"})
PAGE_PREFIX = "/ui/"


class APIKeyConfigError(ValueError):
    """A key file or key list that cannot be used (the message says why; it never contains a key)."""


def parse_keys(text: str, *, separator: str | None, source: str) -> list[str]:
    """The keys in `text`: split by `separator` (None: one per line, with `#` comments), trimmed."""
    if separator is None:
        items = ["" if line.lstrip().startswith("#") else line for line in text.splitlines()]
    else:
        items = text.split(separator)
    keys = []
    for number, item in enumerate(items, start=1):
        key = item.strip()
        if not key:
            continue
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            # A Bearer token is one word of printable ASCII; saying which entry is wrong, not what it is.
            raise APIKeyConfigError(
                f"{source}: key #{number} contains spaces, control or non-ASCII characters"
            )
        keys.append(key)
    return keys


def load_keys(keys: str | None, keys_file: Path | None) -> list[str]:
    """Every configured key. A configured source that yields no key is an error, never "no auth"."""
    result: list[str] = []
    if keys is not None:
        found = parse_keys(keys, separator=",", source="JAN_API_KEYS")
        if not found:
            raise APIKeyConfigError("JAN_API_KEYS is set but holds no key (unset it to run without keys)")
        result += found
    if keys_file is not None:
        try:
            text = keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise APIKeyConfigError(f"JAN_API_KEYS_FILE {keys_file}: cannot read it ({reason})") from None
        found = parse_keys(text, separator=None, source=f"JAN_API_KEYS_FILE {keys_file}")
        if not found:
            raise APIKeyConfigError(f"JAN_API_KEYS_FILE {keys_file} holds no key")
        result += found
    return result


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class KeyChecker:
    """Constant-time membership of a presented key among the configured ones."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def valid(self, presented: bytes) -> bool:
        digest = _digest(presented)
        found = False
        for known in self._digests:  # no early exit: every key is compared every time
            found |= hmac.compare_digest(digest, known)
        return found


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def api_key_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The value of the `x-api-key` header, else None."""
    for name, value in headers:
        if name.lower() == b"x-api-key":
            return value.strip() or None
    return None


def presented_key(path: str, headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request to `path` presents: its Bearer token, or on Anthropic's routes its x-api-key."""
    headers = list(headers)
    token = bearer_token(headers)
    if token is None and Dialect.of_path(path) is Dialect.ANTHROPIC:
        token = api_key_header(headers)
    return token


class APIKeyMiddleware:
    """Pure ASGI (so it guards streaming routes and unknown paths alike, before any routing or body)."""

    def __init__(self, app: ASGIApp, checker: KeyChecker, open_paths: frozenset[str]) -> None:
        self.app = app
        self.checker = checker
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in self.open_paths
            or scope["path"].startswith(PAGE_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        token = presented_key(scope["path"], scope["headers"])
        if token is not None and self.checker.valid(token):
            await self.app(scope, receive, send)
            return
        if token is None:
            how = "'x-api-key: <key>' or " if Dialect.of_path(scope["path"]) is Dialect.ANTHROPIC else ""
            message = f"missing API key: send it as {how}'Authorization: Bearer <key>'"
            code = "missing_api_key"
        else:
            message = "invalid API key"
            code = "invalid_api_key"
        client = scope.get("client")
        log.info("401 %s %s from %s: %s", scope["method"], scope["path"], client[0] if client else "?", code)
        response = error_json(401, message, code, None, path=scope["path"])
        response.headers["WWW-Authenticate"] = 'Bearer realm="jan"'
        await response(scope, receive, send)


def install_api_keys(app: FastAPI, keys: list[str], *, metrics_public: bool) -> None:
    """Guards `app` with `keys` (nothing to do when there are none) and says so in its OpenAPI document."""
    if not keys:
        return
    open_paths = ALWAYS_OPEN | DOC_PATHS | PAGE_PATHS | ({"/metrics"} if metrics_public else frozenset())
    app.add_middleware(APIKeyMiddleware, checker=KeyChecker(keys), open_paths=frozenset(open_paths))
    log.info("API keys required (%d configured)", len(keys))

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the gateway's API keys (JAN_API_KEYS / JAN_API_KEYS_FILE).",
            }
            schema["components"]["securitySchemes"]["anthropicApiKey"] = {
                "type": "apiKey",
                "in": "header",
                "name": "x-api-key",
                "description": "The same keys, as Anthropic's SDK sends them (Anthropic's routes only).",
            }
            schema["security"] = [{"apiKey": []}]
            unauthorized = {
                "description": "authentication_error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    if path in open_paths:
                        operation["security"] = []
                    else:
                        if Dialect.of_path(path) is Dialect.ANTHROPIC:
                            operation["security"] = [{"apiKey": []}, {"anthropicApiKey": []}]
                        operation.setdefault("responses", {})["401"] = unauthorized
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
