"""Blocking HTTP/1.1 GETs for the bytes of a download, run in threads of their own.

A download's body is read with `recv_into` straight into the fetcher's buffers (the GIL is released
while the kernel copies), instead of through the event loop: on a fast link the event loop's per-chunk
work cost more CPU than the transfer itself. Every hop of a redirect is checked against the address
rules of `netsafety`, and the connection goes to exactly the addresses that check returned (no second
DNS answer, no rebinding). Credentials are sent only to the host they were meant for.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import threading
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import urljoin, urlsplit

from services.common import netsafety

MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
_TLS = ssl.create_default_context()


class UnsafeURL(Exception):
    """A URL (the first or a redirect hop) that the address rules refuse."""


class TooManyRedirects(Exception):
    pass


class Stopped(Exception):
    """The transfer was stopped from outside (pause, cancel, another connection failed)."""


class _Dial:
    """Connects to the checked addresses, one after the other, instead of resolving the host again."""

    host: str
    port: int
    timeout: float | None
    addresses: Sequence[IPv4Address | IPv6Address]
    source_address: tuple[str, int] | None

    def _dial(self) -> socket.socket:
        err: OSError | None = None
        for address in self.addresses:
            try:
                sock = socket.create_connection((str(address), self.port), self.timeout)
            except OSError as exc:
                err = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise err or OSError(f"no address to connect to for {self.host}")


class _HTTP(_Dial, http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = self._dial()


class _HTTPS(_Dial, http.client.HTTPSConnection):
    def connect(self) -> None:
        self.sock = _TLS.wrap_socket(self._dial(), server_hostname=self.host)


class Transfer:
    """One GET in flight: its response, and a way for another thread to stop it at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._writing = False
        self.stopped = threading.Event()
        self.response: http.client.HTTPResponse | None = None
        self.url = ""
        self.first_headers: http.client.HTTPMessage | None = None  # of the first hop (case-insensitive)

    def _attach(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self.stopped.is_set():
                conn.close()
                raise Stopped()
            self._conn = conn

    def begin_writing(self) -> None:
        """The reading thread, before it touches the partial file: from here on, `stop` must wait."""
        with self._lock:
            if self.stopped.is_set():
                raise Stopped()
            self._writing = True

    def stop(self) -> bool:
        """Any thread: a blocked read returns now (the socket is shut down), later reads fail. True when
        the reading thread may be writing (the caller waits for it); a thread still connecting is left
        to end on its own, without writing anything."""
        with self._lock:
            self.stopped.set()
            conn = self._conn
            if conn is None or conn.sock is None:
                return self._writing
            # shutdown() acts on the connection, not the descriptor: a duplicate reaches it without
            # touching the socket object the reading thread is using (TLS included).
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.sock.fileno())) as dup:
                dup.shutdown(socket.SHUT_RDWR)
            return self._writing

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def open(
        self,
        url: str,
        headers: dict[str, str],
        auth: dict[str, str],
        *,
        allow_private: bool,
        resolver: netsafety.Resolver,
        connect_timeout: float,
        read_timeout: float,
    ) -> http.client.HTTPResponse:
        """GET following redirects by hand; returns the final response with its body unread."""
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            try:
                addresses = netsafety.check_source_url(url, allow_private=allow_private, resolver=resolver)
            except netsafety.UnsafeURLError as exc:
                raise UnsafeURL(f"refused {url}: {exc}") from None
            parts = urlsplit(url)
            cls = _HTTPS if parts.scheme == "https" else _HTTP
            port = parts.port or (443 if parts.scheme == "https" else 80)
            conn = cls(parts.hostname or "", port, timeout=connect_timeout)
            conn.addresses = addresses
            self._attach(conn)
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            extra = auth if parts.netloc == origin else {}
            conn.request("GET", path, headers={**headers, **extra})
            if conn.sock is not None:
                conn.sock.settimeout(read_timeout)  # a stall: no byte for this long
            resp = conn.getresponse()
            if self.first_headers is None:
                self.first_headers = resp.headers
            location = resp.getheader("Location")
            if resp.status in REDIRECTS and location:
                self.close()
                url = urljoin(url, location)
                continue
            self.response, self.url = resp, url
            return resp
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
