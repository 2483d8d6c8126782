"""A loopback HTTP server of images, for the image URLs requests give the gateway: real sockets on
127.0.0.1 (a port the kernel picks), served from the test's own event loop.

Each path answers what the test put there: bytes with a Content-Type (with a Content-Length, or chunked
without one; a large answer as one chunk repeated, never held whole), after an optional delay; a redirect;
or a bare status. The server records the paths asked for, in order, and the body bytes it managed to write
to each, so a test can tell how much a client read before it hung up. Small images of the formats the
runner decodes are here too (`PNG`, `GIF`, `BMP`: real, 1x1; `JPEG`: its signature).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

# A 1x1 PNG, GIF and BMP, as an image library writes them.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
BMP = base64.b64decode("Qk06AAAAAAAAADYAAAAoAAAAAQAAAAEAAAABABgAAAAAAAQAAAATCwAAEwsAAAAAAAAAAAAA/wAAAA==")
JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(64)) + b"\xff\xd9"
)


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


@dataclass
class _Answer:
    body: bytes = b""
    content_type: str = "image/png"
    repeat: int = 1  # the body is sent this many times
    chunked: bool = False  # no Content-Length
    delay_s: float = 0.0
    status: int = 200
    location: str = ""


class ImageServer:
    """`async with ImageServer() as server:`; `server.url` is `http://127.0.0.1:<port>`."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[str] = []  # the paths asked for, in order
        self.sent: dict[str, int] = {}  # path -> body bytes written before the answer ended
        self._answers: dict[str, _Answer] = {}
        self._runner: web.AppRunner | None = None

    def add(
        self,
        path: str,
        body: bytes,
        content_type: str = "image/png",
        *,
        repeat: int = 1,
        chunked: bool = False,
        delay_s: float = 0.0,
    ) -> str:
        """Serves `body` (`repeat` times over) at `path`; returns its URL."""
        self._answers[path] = _Answer(body, content_type, repeat, chunked, delay_s)
        return self.url + path

    def redirect(self, path: str, target: str, status: int = 302) -> str:
        self._answers[path] = _Answer(status=status, location=target)
        return self.url + path

    def status(self, path: str, status: int) -> str:
        self._answers[path] = _Answer(body=b"no", content_type="text/plain", status=status)
        return self.url + path

    async def __aenter__(self) -> ImageServer:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append(path)
        answer = self._answers.get(path)
        if answer is None:
            return web.Response(status=404, text="not here")
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        if answer.location:
            return web.Response(status=answer.status, headers={"Location": answer.location})
        resp = web.StreamResponse(status=answer.status, headers={"Content-Type": answer.content_type})
        if answer.chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(answer.body) * answer.repeat
        await resp.prepare(request)
        self.sent[path] = 0
        try:
            for _ in range(answer.repeat):
                await resp.write(answer.body)
                self.sent[path] += len(answer.body)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):  # the client hung up (RuntimeError: its transport closed)
            pass
        return resp
