"""The downloader's blocking GET (services/downloader/httpconn.py) against the loopback fake Hub: every
redirect hop is checked, credentials stay with their host, a redirect loop ends, the connection goes to
the checked address only, and `stop` ends a blocked read at once. Nothing here leaves loopback."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from services.common import netsafety
from services.downloader.httpconn import Stopped, TooManyRedirects, Transfer, UnsafeURL
from tests.fakes import FakeHub, Faults


@pytest.fixture
def hub(hub: FakeHub) -> FakeHub:
    hub.add_file("/files/a.bin", b"0123456789" * 1000)
    return hub


def _open(url: str, auth: dict[str, str] | None = None, **kw: object) -> Transfer:
    transfer = Transfer()
    options: dict[str, object] = {
        "allow_private": True,
        "resolver": netsafety.default_resolver,
        "connect_timeout": 5.0,
        "read_timeout": 5.0,
        **kw,
    }
    transfer.open(url, {"Accept-Encoding": "identity"}, auth or {}, **options)  # type: ignore[arg-type]
    return transfer


def test_a_plain_get_reads_the_body(hub: FakeHub) -> None:
    transfer = _open(f"{hub.url}/files/a.bin")
    assert transfer.response is not None and transfer.response.status == 200
    assert transfer.response.read() == b"0123456789" * 1000
    transfer.close()


def test_credentials_are_not_sent_to_another_host(hub: FakeHub) -> None:
    # 127.0.0.1 and localhost are two hosts to the client: the token is for the first one only.
    other = hub.url.replace("127.0.0.1", "localhost")
    hub.add_redirect("/r/away", f"{other}/files/a.bin")
    transfer = _open(f"{hub.url}/r/away", {"Authorization": "Bearer hf_secret"})
    assert transfer.url == f"{other}/files/a.bin"
    assert transfer.response is not None and transfer.response.read() == b"0123456789" * 1000
    transfer.close()
    assert ("/r/away", "Bearer hf_secret") in hub.authorizations
    assert ("/files/a.bin", None) in hub.authorizations


def test_every_redirect_hop_is_checked(hub: FakeHub) -> None:
    hub.add_redirect("/r/ftp", "ftp://127.0.0.1/a.bin")
    with pytest.raises(UnsafeURL, match="ftp"):
        _open(f"{hub.url}/r/ftp")


def test_a_redirect_to_a_refused_address_is_not_followed(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Private addresses are refused, except the fake Hub's own loopback URL (it has to be reached for
    # its redirect to be seen). The refusal comes before any connection: nothing is dialled but loopback.
    hub.add_redirect("/r/private", "http://10.1.2.3/a.bin")
    checked: list[str] = []
    real_check = netsafety.check_source_url

    def check(
        url: str, *, allow_private: bool = False, resolver: netsafety.Resolver = netsafety.default_resolver
    ):  # type: ignore[no-untyped-def]
        checked.append(url)
        return real_check(url, allow_private=url.startswith(hub.url), resolver=resolver)

    monkeypatch.setattr(netsafety, "check_source_url", check)
    with pytest.raises(UnsafeURL, match=r"10\.1\.2\.3"):
        _open(f"{hub.url}/r/private", allow_private=False)
    assert checked == [f"{hub.url}/r/private", "http://10.1.2.3/a.bin"]
    assert [r[1] for r in hub.requests] == ["/r/private"]


def test_a_redirect_loop_ends(hub: FakeHub) -> None:
    hub.add_redirect("/r/loop", "/r/loop")
    with pytest.raises(TooManyRedirects):
        _open(f"{hub.url}/r/loop")


def test_stop_ends_a_stalled_read_at_once(hub: FakeHub) -> None:
    hub.add_file("/files/slow.bin", b"x" * 200_000)
    hub.faults["/files/slow.bin"] = Faults(stall_at=1000, stall_seconds=30)
    transfer = _open(f"{hub.url}/files/slow.bin", read_timeout=60.0)
    transfer.begin_writing()
    assert transfer.response is not None
    response = transfer.response

    def read() -> None:
        with contextlib.suppress(Exception):  # a cut body: http.client may say IncompleteRead
            response.read()

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)  # the reader is blocked in the stall
    t = time.monotonic()
    assert transfer.stop() is True  # it was writing: the caller must wait for it
    reader.join(5)
    assert not reader.is_alive() and time.monotonic() - t < 2
    transfer.close()
    with pytest.raises(Stopped):
        transfer.begin_writing()
