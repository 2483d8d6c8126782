"""A client's image reference → the image's bytes, filled into the request's image parts before it goes to
the runner.

A reference (`ImageRef`, made by the dialects' pure translations) is a data: URL or base64 text, decoded
here, or an http(s) URL, fetched under the same address rules as model downloads: every URL and every
redirect hop goes through `netsafety.check_source_url` (which also reads IP literals, which no resolver
sees), and connections resolve through `safehttp.SafeResolver`, which applies the rules again at connect
time, so a DNS answer cannot change in between. Each image is capped (`JAN_GATEWAY_MAX_IMAGE_BYTES`; a
URL's answer is not read past it) and must be an image; a request's images together must fit the one gRPC
message that takes them to the runner. Every failure is a 400 naming the field the reference came from.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from gateway.errors import APIError
from gateway.protocol.common import ImageRef
from gateway.settings import GatewaySettings
from jan.runner.v1 import runner_service_pb2 as runner_pb
from services.common import netsafety
from services.common.grpcserver import MESSAGE_LIMIT

if TYPE_CHECKING:
    import aiohttp

USER_AGENT = "jan-models-gateway"
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
READ_CHUNK = 64 * 1024
# What one image part adds to the runner's request besides its bytes (tags, lengths, the media type).
PART_OVERHEAD = 128
# Base64 longer than this is decoded off the event loop (20 MiB take tens of milliseconds).
DECODE_INLINE_CHARS = 256 * 1024
# The signatures of the formats clients send, for bytes whose type nobody declared (or declared wrongly).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
SNIFF_BYTES = 12


def sniff(data: bytes) -> str:
    """The media type of an image file by its first bytes ("" when they are no format known here)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((media_type for signature, media_type in _SIGNATURES if data.startswith(signature)), "")


def _media_type(value: str) -> str:
    """A Content-Type or a data: URL's type without its parameters, lower case."""
    return value.split(";", 1)[0].strip().lower()


def _refused(ref: ImageRef, why: str, code: str = "invalid_image") -> APIError:
    # The message starts with the field: Anthropic's and Ollama's error bodies carry no `param`.
    return APIError(400, f"{ref.param}: {why}", code=code, param=ref.param)


def _shown(url: str) -> str:
    return repr(url if len(url) <= 200 else url[:200] + "...")


class _Budget:
    """What a request's images may add up to: the runner takes the request in one gRPC message."""

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, ref: ImageRef, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _refused(
                ref,
                f"the request's images add up to more than one request to the runner can carry "
                f"({MESSAGE_LIMIT >> 20} MiB with its text)",
                "image_too_large",
            )


class ImageReader:
    """Reads the images requests refer to (kept in app.state; one HTTP session, opened on first use)."""

    def __init__(
        self, settings: GatewaySettings, resolver: netsafety.Resolver = netsafety.default_resolver
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def fill(self, request: runner_pb.GenerateRequest, refs: Sequence[ImageRef]) -> None:
        """Reads every image the request refers to into its image part (the i-th image part of its
        messages, in order, is `refs[i]`'s), the URLs concurrently; raises the 400 of the first that cannot
        be read (the others are then cancelled)."""
        if not refs:
            return
        limit = self.settings.max_images
        if len(refs) > limit:
            why = f"more than {limit} images in one request (JAN_GATEWAY_MAX_IMAGES)"
            if not limit:
                why = "images are not accepted here (JAN_GATEWAY_MAX_IMAGES is 0)"
            raise _refused(refs[limit], why, "too_many_images")
        parts = [
            part.image
            for m in request.chat.messages
            for part in m.parts
            if part.WhichOneof("part") == "image"
        ]
        if len(parts) != len(refs):
            raise ValueError(f"the request has {len(parts)} image parts for {len(refs)} references")
        budget = _Budget(MESSAGE_LIMIT - request.ByteSize() - PART_OVERHEAD * len(refs))
        try:
            async with asyncio.TaskGroup() as group:
                reads = [group.create_task(self._read(ref, budget)) for ref in refs]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        for part, read in zip(parts, reads, strict=True):
            part.data, part.media_type = read.result()

    async def read(self, ref: ImageRef) -> tuple[bytes, str]:
        """One image's bytes and media type ("" when the client did not say and the bytes do not show it)."""
        return await self._read(ref, _Budget(MESSAGE_LIMIT))

    async def _read(self, ref: ImageRef, budget: _Budget) -> tuple[bytes, str]:
        if not ref.url:
            return await self._decoded(ref, ref.base64, ref.media_type, budget)
        scheme = ref.url[:8].lower()
        if scheme.startswith("data:"):
            text, media_type = self._data_url(ref)
            return await self._decoded(ref, text, media_type, budget)
        if scheme.startswith(("http://", "https://")):
            return await self._fetch(ref, budget)
        raise _refused(ref, "an image URL must be a data: URL (data:image/png;base64,...) or an http(s) URL")

    # --- inline bytes -------------------------------------------------------------------------------------

    @staticmethod
    def _data_url(ref: ImageRef) -> tuple[str, str]:
        """The base64 text and the media type of a data: URL."""
        header, comma, text = ref.url[len("data:") :].partition(",")
        if not comma:
            raise _refused(ref, "a data: URL has a ',' before its data")
        *kinds, encoding = header.split(";")
        if encoding.strip().lower() != "base64" or not kinds:
            raise _refused(ref, "only base64 data: URLs are accepted (data:image/png;base64,...)")
        media_type = _media_type(kinds[0]) or "text/plain"
        if not media_type.startswith("image/"):
            raise _refused(ref, f"a data: URL of type {media_type!r} is not an image")
        return text, media_type

    async def _decoded(self, ref: ImageRef, text: str, media_type: str, budget: _Budget) -> tuple[bytes, str]:
        """Base64 text decoded (strictly: an invalid character is an error, not skipped), within the cap."""
        declared = _media_type(media_type)
        if declared and not declared.startswith("image/"):
            raise _refused(ref, f"media type {declared!r} is not an image")
        cap = self.settings.max_image_bytes
        if len(text) // 4 * 3 - 2 > cap:  # the fewest bytes this much base64 holds
            raise self._too_large(ref)
        try:
            if len(text) <= DECODE_INLINE_CHARS:
                data = base64.b64decode(text, validate=True)
            else:
                data = await asyncio.to_thread(base64.b64decode, text, validate=True)
        except (binascii.Error, ValueError):
            raise _refused(ref, "the image's data is not valid base64") from None
        if not data:
            raise _refused(ref, "the image is empty")
        if len(data) > cap:
            raise self._too_large(ref)
        budget.take(ref, len(data))
        return data, declared or sniff(data)

    def _too_large(self, ref: ImageRef) -> APIError:
        cap = self.settings.max_image_bytes
        return _refused(
            ref, f"the image is larger than {cap} bytes (JAN_GATEWAY_MAX_IMAGE_BYTES)", "image_too_large"
        )

    # --- URLs ---------------------------------------------------------------------------------------------

    async def _fetch(self, ref: ImageRef, budget: _Budget) -> tuple[bytes, str]:
        timeout = self.settings.image_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self._follow(ref, budget)
        except TimeoutError:
            why = f"the image's URL did not answer within {timeout:g} s (JAN_GATEWAY_IMAGE_TIMEOUT_S)"
            raise _refused(ref, why, "image_unreachable") from None

    async def _follow(self, ref: ImageRef, budget: _Budget) -> tuple[bytes, str]:
        """GET the URL, following redirects by hand: each hop is checked before it is dialled."""
        import aiohttp

        url = ref.url
        for _ in range(MAX_REDIRECTS + 1):
            await self._check(ref, url)
            try:
                async with self._session().get(url, allow_redirects=False) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in REDIRECTS and location:
                        url = urljoin(url, location)
                        continue
                    if resp.status != 200:
                        raise _refused(
                            ref, f"the image's URL answered HTTP {resp.status}", "image_unreachable"
                        )
                    return await self._body(ref, resp, budget)
            except aiohttp.ClientError as exc:
                why = f"the image's URL cannot be fetched: {type(exc).__name__}: {exc}"
                raise _refused(ref, why, "image_unreachable") from None
        raise _refused(ref, f"the image's URL redirects more than {MAX_REDIRECTS} times", "image_unreachable")

    async def _check(self, ref: ImageRef, url: str) -> None:
        """The platform's URL rules (netsafety), off the event loop: they may resolve the host."""
        allow_private = self.settings.allow_private_networks
        try:
            await asyncio.to_thread(
                netsafety.check_source_url, url, allow_private=allow_private, resolver=self.resolver
            )
        except netsafety.UnsafeURLError as exc:
            what = (
                "the image's URL" if url == ref.url else f"the image's URL redirects to {_shown(url)}, which"
            )
            raise _refused(ref, f"{what} is refused: {exc}", "unsafe_image_url") from None

    async def _body(self, ref: ImageRef, resp: aiohttp.ClientResponse, budget: _Budget) -> tuple[bytes, str]:
        """The answer's bytes, not read past the cap; an answer that is no image stops at its first bytes."""
        cap = self.settings.max_image_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise self._too_large(ref)
        declared = _media_type(resp.headers.get("Content-Type", ""))
        media_type = declared if declared.startswith("image/") else ""
        data = bytearray()
        async for chunk in resp.content.iter_chunked(READ_CHUNK):
            data += chunk
            if len(data) > cap:
                raise self._too_large(ref)
            budget.take(ref, len(chunk))
            if not media_type and len(data) >= SNIFF_BYTES:
                media_type = self._sniffed(ref, bytes(data[:SNIFF_BYTES]), declared)
        if not data:
            raise _refused(ref, "the image's URL answered no bytes")
        return bytes(data), media_type or self._sniffed(ref, bytes(data), declared)

    @staticmethod
    def _sniffed(ref: ImageRef, head: bytes, declared: str) -> str:
        """The type the bytes show, for an answer whose Content-Type is no image type (a server that says
        application/octet-stream); bytes that show none are not an image."""
        media_type = sniff(head)
        if not media_type:
            raise _refused(ref, f"the image's URL answered {declared or 'no Content-Type'}, not an image")
        return media_type

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            # Imported on first use: the HTTP client costs memory, and most gateways never fetch an image.
            import aiohttp

            from services.common.safehttp import safe_session

            self._http = safe_session(
                self.settings.allow_private_networks,
                self.resolver,
                timeout=aiohttp.ClientTimeout(total=None),  # the deadline is _fetch's, redirects included
                headers={"User-Agent": USER_AGENT, "Accept": "image/*"},
            )
        return self._http
