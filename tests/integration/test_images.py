"""A client's image reference → bytes (gateway/images.py): data: URLs and base64 decoded strictly within the
size cap; http(s) URLs fetched from a real loopback server (tests/fakes/images.py) under the platform's
address rules (every redirect hop checked, nothing dialled that they refuse), not read past the cap, and
only when the answer is an image; every failure a 400 naming the field. Nothing here leaves loopback: URLs
name 127.0.0.1, and a host name goes through a stub resolver."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import APIError
from gateway.images import ImageReader, sniff
from gateway.protocol.common import ImageRef
from gateway.settings import GatewaySettings
from jan.runner.v1 import runner_service_pb2 as runner_pb
from services.common import netsafety
from tests.fakes.images import BMP, GIF, JPEG, PNG, ImageServer, data_url
from tests.harness import loopback_resolver

MiB = 1024 * 1024
FIELD = "messages.0.content.1.image_url.url"


def reader(**settings: Any) -> ImageReader:
    values: dict[str, Any] = {"allow_private_networks": True, **settings}
    return ImageReader(GatewaySettings(**values), resolver=loopback_resolver)


async def read(url: str = "", **fields: Any) -> tuple[bytes, str]:
    images = reader(**fields.pop("settings", {}))
    try:
        return await images.read(ImageRef(param=FIELD, url=url, **fields))
    finally:
        await images.close()


async def refused(url: str = "", **fields: Any) -> APIError:
    with pytest.raises(APIError) as err:
        await read(url, **fields)
    error = err.value
    assert error.status == 400 and error.param == FIELD and error.message.startswith(f"{FIELD}: ")
    return error


@pytest.fixture
async def server() -> AsyncIterator[ImageServer]:
    async with ImageServer() as s:
        yield s


@pytest.fixture
async def images() -> AsyncIterator[ImageReader]:
    """A reader with the default settings (loopback allowed), closed after the test."""
    made = reader()
    yield made
    await made.close()


# --- inline ---------------------------------------------------------------------------------------------


def test_formats_are_known_by_their_first_bytes() -> None:
    assert [sniff(d) for d in (PNG, JPEG, GIF, BMP)] == ["image/png", "image/jpeg", "image/gif", "image/bmp"]
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff(b"<html>") == ""


async def test_a_data_url_is_decoded_with_its_media_type() -> None:
    assert await read(data_url(PNG)) == (PNG, "image/png")
    assert await read(data_url(GIF, "IMAGE/GIF").replace(";base64", ";name=x.gif;base64")) == (
        GIF,
        "image/gif",
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("data:image/png;base64,iVBORw0KGgo*", "not valid base64"),
        ("data:image/png;base64,iVBO Rw0K", "not valid base64"),
        ("data:image/png;base64,", "empty"),
        ("data:image/png;base64", "','"),
        ("data:image/png,%89PNG", "only base64 data: URLs"),
        ("data:text/plain;base64,aGk=", "'text/plain' is not an image"),
        ("data:;base64,aGk=", "'text/plain' is not an image"),
        ("file:///etc/passwd", "a data: URL (data:image/png;base64,...) or an http(s) URL"),
        ("ftp://127.0.0.1/a.png", "a data: URL (data:image/png;base64,...) or an http(s) URL"),
    ],
)
async def test_a_bad_data_url_is_a_400_naming_the_field(url: str, said: str) -> None:
    error = await refused(url)
    assert error.code == "invalid_image" and said in error.message


async def test_an_image_over_the_cap_is_refused_before_or_after_decoding() -> None:
    cap = {"max_image_bytes": 4096}
    assert await read(data_url(b"\x89PNG" + bytes(4092)), settings=cap) == (
        b"\x89PNG" + bytes(4092),
        "image/png",
    )
    for size in (4097, 100_000):  # just over (known once decoded), far over (known from the length alone)
        error = await refused(data_url(bytes(size)), settings=cap)
        assert error.code == "image_too_large" and "JAN_GATEWAY_MAX_IMAGE_BYTES" in error.message


async def test_base64_without_a_data_url_takes_its_declared_type_or_the_one_its_bytes_show() -> None:
    text = base64.b64encode(JPEG).decode()
    assert await read(base64=text) == (JPEG, "image/jpeg")  # Ollama's images: no type given
    assert await read(base64=text, media_type="image/png") == (JPEG, "image/png")  # as the client said
    assert await read(base64=base64.b64encode(b"not an image").decode()) == (b"not an image", "")
    error = await refused(base64=text, media_type="application/pdf")
    assert error.code == "invalid_image" and "'application/pdf' is not an image" in error.message
    assert (await refused(base64="data:image/png;base64,aGk=")).code == "invalid_image"


async def test_fill_puts_each_image_in_its_part_in_order(images: ImageReader) -> None:
    request = runner_pb.GenerateRequest(model_id="m/m")
    first = request.chat.messages.add(role="user")
    first.parts.add(text="a")
    first.parts.add(image=runner_pb.Image())
    first.parts.add(image=runner_pb.Image())
    request.chat.messages.add(role="assistant", content="b")
    request.chat.messages.add(role="user").parts.add(image=runner_pb.Image())
    refs = [
        ImageRef(param="p0", url=data_url(PNG)),
        ImageRef(param="p1", base64=base64.b64encode(GIF).decode()),
        ImageRef(param="p2", url=data_url(BMP, "image/bmp")),
    ]
    await images.fill(request, refs)
    filled = [
        (p.image.data, p.image.media_type) for m in request.chat.messages for p in m.parts if p.image.data
    ]
    assert filled == [(PNG, "image/png"), (GIF, "image/gif"), (BMP, "image/bmp")]
    assert request.chat.messages[0].parts[0].text == "a"
    await images.fill(request, [])  # nothing to read: nothing changes
    with pytest.raises(ValueError, match="3 image parts for 2 references"):
        await images.fill(request, refs[:2])


async def test_more_images_than_allowed_are_refused_naming_the_first_one_too_many() -> None:
    request = runner_pb.GenerateRequest(model_id="m/m")
    user = request.chat.messages.add(role="user")
    for _ in range(3):
        user.parts.add(image=runner_pb.Image())
    refs = [ImageRef(param=f"messages.0.content.{j}", url=data_url(PNG)) for j in range(3)]
    with pytest.raises(APIError) as err:
        await reader(max_images=2).fill(request, refs)
    assert (err.value.status, err.value.code, err.value.param) == (
        400,
        "too_many_images",
        "messages.0.content.2",
    )
    with pytest.raises(APIError) as err:
        await reader(max_images=0).fill(request, refs)
    assert err.value.param == "messages.0.content.0" and "JAN_GATEWAY_MAX_IMAGES" in err.value.message


# --- URLs -----------------------------------------------------------------------------------------------


async def test_an_image_url_is_fetched_with_its_type(server: ImageServer) -> None:
    assert await read(server.add("/a.png", PNG)) == (PNG, "image/png")
    assert await read(server.add("/b.jpg", JPEG, "image/jpeg; charset=binary")) == (JPEG, "image/jpeg")
    # A server that does not say what it sends: the bytes do.
    assert await read(server.add("/c", GIF, "application/octet-stream", chunked=True)) == (GIF, "image/gif")
    # A host name resolves through the resolver the rules check (here a stub that knows only loopback).
    assert await read(server.add("/d.png", PNG).replace("127.0.0.1", "localhost")) == (PNG, "image/png")
    assert await read(server.redirect("/moved", "/a.png")) == (PNG, "image/png")
    assert server.requests == ["/a.png", "/b.jpg", "/c", "/d.png", "/moved", "/a.png"]


async def test_fill_fetches_urls_and_decodes_data_urls_of_one_request(
    server: ImageServer, images: ImageReader
) -> None:
    request = runner_pb.GenerateRequest(model_id="m/m")
    user = request.chat.messages.add(role="user")
    for _ in range(3):
        user.parts.add(image=runner_pb.Image())
    refs = [
        ImageRef(param="a", url=server.add("/a.png", PNG)),
        ImageRef(param="b", url=data_url(GIF, "image/gif")),
        ImageRef(param="c", url=server.add("/c.jpg", JPEG, "image/jpeg", delay_s=0.05)),
    ]
    await images.fill(request, refs)
    assert [(p.image.data, p.image.media_type) for p in user.parts] == [
        (PNG, "image/png"),
        (GIF, "image/gif"),
        (JPEG, "image/jpeg"),
    ]


async def test_an_answer_that_is_not_an_image_is_refused_at_its_first_bytes(server: ImageServer) -> None:
    page = b"<!doctype html><html>" + b"x" * 64 * 1024
    error = await refused(server.add("/page", page, "text/html", repeat=1024, chunked=True))
    assert error.code == "invalid_image" and "answered text/html, not an image" in error.message
    assert server.sent["/page"] < 1024 * len(page) // 8
    error = await refused(server.add("/empty", b"", "image/png"))
    assert "answered no bytes" in error.message


async def test_an_unreachable_or_failing_url_is_a_400_naming_the_field(server: ImageServer) -> None:
    error = await refused(server.status("/gone", 404))
    assert error.code == "image_unreachable" and "HTTP 404" in error.message
    error = await refused(server.status("/broken", 500))
    assert "HTTP 500" in error.message
    closed = server.url.rsplit(":", 1)[0] + ":1/a.png"  # nothing listens on port 1
    error = await refused(closed)
    assert error.code == "image_unreachable" and "cannot be fetched" in error.message
    error = await refused(server.add("/slow.png", PNG, delay_s=5), settings={"image_timeout_s": 0.2})
    assert error.code == "image_unreachable" and "within 0.2 s" in error.message
    server.redirect("/loop", "/loop")
    error = await refused(server.url + "/loop")
    assert "redirects more than 5 times" in error.message


async def test_a_large_answer_is_refused_without_being_read(server: ImageServer) -> None:
    chunk = PNG + bytes(64 * 1024 - len(PNG))
    total = 4096 * len(chunk)  # 256 MiB, never held by the server either
    cap = {"max_image_bytes": MiB}
    error = await refused(server.add("/huge", chunk, repeat=4096, chunked=True), settings=cap)
    assert error.code == "image_too_large" and f"larger than {MiB} bytes" in error.message
    # What the server wrote is what sat in the sockets' buffers when the reader hung up past the cap.
    assert MiB < server.sent["/huge"] < total // 8
    # A declared length over the cap is refused on the headers.
    error = await refused(server.add("/declared", chunk, repeat=4096), settings=cap)
    assert error.code == "image_too_large" and server.sent["/declared"] < total // 8


async def test_an_address_the_rules_refuse_is_never_dialled(server: ImageServer) -> None:
    url = server.add("/a.png", PNG)
    error = await refused(url, settings={"allow_private_networks": False})
    assert error.code == "unsafe_image_url" and "127.0.0.1 is a loopback address" in error.message
    error = await refused("http://localhost/a.png", settings={"allow_private_networks": False})
    assert error.code == "unsafe_image_url" and "refers to the local machine" in error.message
    error = await refused(server.redirect("/to-ftp", "ftp://127.0.0.1/a.png"))
    assert error.code == "unsafe_image_url" and "redirects to 'ftp://127.0.0.1/a.png'" in error.message
    assert server.requests == ["/to-ftp"]


async def test_a_redirect_to_a_private_address_is_not_followed(
    server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Private addresses are refused, except the loopback server's own (it has to be reached for its
    # redirect to be seen), as the downloader's tests do: the rule itself decides every other URL.
    server.redirect("/to-private", "http://10.1.2.3/a.png")
    server.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/")
    real_check = netsafety.check_source_url
    checked: list[str] = []

    def check(
        url: str, *, allow_private: bool = False, resolver: netsafety.Resolver = netsafety.default_resolver
    ):  # type: ignore[no-untyped-def]
        checked.append(url)
        return real_check(url, allow_private=url.startswith(server.url), resolver=resolver)

    monkeypatch.setattr(netsafety, "check_source_url", check)
    for path, address in (("/to-private", "10.1.2.3 is a private address"), ("/to-metadata", "link-local")):
        error = await refused(server.url + path, settings={"allow_private_networks": False})
        assert (
            error.code == "unsafe_image_url" and address in error.message and "redirects to" in error.message
        )
    assert server.requests == ["/to-private", "/to-metadata"]
    # Every hop was checked, the one refused included; the connection to the server went through the
    # resolver that checks again at connect time only for names (an IP literal needs no resolving).
    assert checked == [
        f"{server.url}/to-private",
        "http://10.1.2.3/a.png",
        f"{server.url}/to-metadata",
        "http://169.254.169.254/latest/meta-data/",
    ]


async def test_a_requests_images_together_must_fit_one_message_to_the_runner(
    server: ImageServer, images: ImageReader
) -> None:
    # Each image is within the cap (20 MiB), four of them are more than one gRPC message carries (64 MiB).
    chunk = PNG + bytes(MiB - len(PNG))
    url = server.add("/twenty.png", chunk, repeat=20)
    request = runner_pb.GenerateRequest(model_id="m/m")
    user = request.chat.messages.add(role="user")
    for _ in range(4):
        user.parts.add(image=runner_pb.Image())
    refs = [ImageRef(param=f"messages.0.content.{j}.image_url.url", url=url) for j in range(4)]
    with pytest.raises(APIError) as err:
        await images.fill(request, refs)
    assert (err.value.status, err.value.code) == (400, "image_too_large")
    assert "add up to more than one request to the runner can carry (64 MiB" in err.value.message
    three = runner_pb.GenerateRequest(model_id="m/m")
    for _ in range(3):
        three.chat.messages.add(role="user").parts.add(image=runner_pb.Image())
    await images.fill(three, refs[:3])
    assert [len(m.parts[0].image.data) for m in three.chat.messages] == [20 * MiB] * 3
