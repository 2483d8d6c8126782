"""Tests for services.common.netsafety.check_source_url (and require_safe_url, its form for requests).

Only stub resolvers are used: nothing here sends a packet. Public-looking answers are stand-ins that
are never connected to.
"""

import ipaddress

import pytest

from services.common.errors import InvalidArgument
from services.common.netsafety import UnsafeURLError, check_source_url, default_resolver, require_safe_url

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

DNS: dict[str, list[str]] = {
    "models.example.com": [PUBLIC_V4, PUBLIC_V6],
    "mixed.example.com": [PUBLIC_V4, "10.0.0.7"],
    "mixed6.example.com": [PUBLIC_V6, "fd00::7"],
    "rebind.example.com": ["127.0.0.1"],
    "metadata-alias.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:192.168.0.1"],
    "empty.example.com": [],
    "garbage.example.com": ["not-an-ip"],
    "localhost": ["127.0.0.1", "::1"],
    "foo.localhost": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    "metadata": ["169.254.169.254"],
    "xn--bcher-kva.example": [PUBLIC_V4],
}


class StubResolver:
    """Answers from DNS above and records what it was asked; unknown hosts fail like NXDOMAIN."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in DNS:
            raise LookupError(f"NXDOMAIN {host}")
        return list(DNS[host])


def no_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"IP literals must not be resolved (asked for {host}:{port})")


# Every spelling maps to the address it denotes; each must be refused by default and accepted (with
# exactly that address) when private networks are allowed.
IP_LITERALS: list[tuple[str, str]] = [
    ("http://127.0.0.1/", "127.0.0.1"),
    ("http://127.0.0.1./", "127.0.0.1"),
    ("http://2130706433/", "127.0.0.1"),
    ("http://0x7f000001/", "127.0.0.1"),
    ("http://0X7F000001/", "127.0.0.1"),
    ("http://0x7f.0.0.1/", "127.0.0.1"),
    ("http://0x7f.1/", "127.0.0.1"),
    ("http://0177.0.0.1/", "127.0.0.1"),
    ("http://017700000001/", "127.0.0.1"),
    ("http://127.1/", "127.0.0.1"),
    ("http://127.0.1/", "127.0.0.1"),
    ("http://0x7f.0x0.0x0.0x1/", "127.0.0.1"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "127.0.0.1"),  # fullwidth digits, IDNA-mapped
    ("http://127\u30020\u30020\u30021/", "127.0.0.1"),  # ideographic full stops
    ("http://0/", "0.0.0.0"),
    ("http://0.0.0.0/", "0.0.0.0"),
    ("http://0x/", "0.0.0.0"),
    ("http://10.0.0.1/", "10.0.0.1"),
    ("http://012.1/", "10.0.0.1"),
    ("http://172.16.0.1/", "172.16.0.1"),
    ("http://172.31.255.255/", "172.31.255.255"),
    ("http://192.168.1.1/", "192.168.1.1"),
    ("http://3232235777/", "192.168.1.1"),
    ("http://169.254.169.254/", "169.254.169.254"),
    ("http://0xa9fea9fe/", "169.254.169.254"),
    ("http://0251.0376.0251.0376/", "169.254.169.254"),
    ("http://169.254.43518/", "169.254.169.254"),
    ("http://100.64.0.1/", "100.64.0.1"),
    ("http://100.127.255.254/", "100.127.255.254"),
    ("http://224.0.0.1/", "224.0.0.1"),
    ("http://239.255.255.250/", "239.255.255.250"),
    ("http://240.0.0.1/", "240.0.0.1"),
    ("http://255.255.255.255/", "255.255.255.255"),
    ("http://4294967295/", "255.255.255.255"),
    ("http://[::1]/", "::1"),
    ("http://[0:0:0:0:0:0:0:1]/", "::1"),
    ("http://[::]/", "::"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1"),
    ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254"),
    ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1"),
    ("http://[fe80::1]/", "fe80::1"),
    ("http://[fe80::1%25eth0]/", "fe80::1%eth0"),
    ("http://[FE80::1%25eth0]:8080/", "fe80::1%eth0"),
    ("http://[fc00::1]/", "fc00::1"),
    ("http://[fd12:3456::1]/", "fd12:3456::1"),
    ("http://[ff02::1]/", "ff02::1"),
    ("http://[2002:7f00:1::]/", "2002:7f00:1::"),  # 6to4 of 127.0.0.1
    ("http://[2002:a9fe:a9fe::1]/", "2002:a9fe:a9fe::1"),  # 6to4 of 169.254.169.254
    ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1"),  # NAT64 of 127.0.0.1
    ("http://[64:ff9b::169.254.169.254]/", "64:ff9b::a9fe:a9fe"),
    ("http://[64:ff9b:1::a00:1]/", "64:ff9b:1::a00:1"),  # local-use NAT64
    ("http://[2001::1]/", "2001::1"),  # Teredo
    ("http://[::127.0.0.1]/", "::7f00:1"),  # deprecated IPv4-compatible form
    ("https://user:pw@127.0.0.1:8443/path?q=1#frag", "127.0.0.1"),
    ("HTTP://127.0.0.1/", "127.0.0.1"),
]


@pytest.mark.parametrize(("url", "address"), IP_LITERALS)
def test_internal_ip_literals_refused_by_default(url: str, address: str) -> None:
    with pytest.raises(UnsafeURLError):
        check_source_url(url, resolver=no_resolver)


@pytest.mark.parametrize(("url", "address"), IP_LITERALS)
def test_internal_ip_literals_accepted_when_private_allowed(url: str, address: str) -> None:
    assert check_source_url(url, allow_private=True, resolver=no_resolver) == [ipaddress.ip_address(address)]


INTERNAL_NAMES = [
    "http://localhost/",
    "http://LOCALHOST:8080/",
    "http://localhost./",
    "http://foo.localhost/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/",
    "http://\u24dbocalhost/",  # circled "l", which IDNA maps to "localhost"
]


@pytest.mark.parametrize("url", INTERNAL_NAMES)
def test_internal_names_refused_before_resolution(url: str) -> None:
    resolver = StubResolver()
    with pytest.raises(UnsafeURLError, match="local machine or a metadata service"):
        check_source_url(url, resolver=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("url", INTERNAL_NAMES)
def test_internal_names_resolved_when_private_allowed(url: str) -> None:
    addresses = check_source_url(url, allow_private=True, resolver=StubResolver())
    assert all(not a.is_global for a in addresses)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://rebind.example.com/", "loopback"),
        ("http://metadata-alias.example.com/", "link-local"),
        ("http://mapped.example.com/", "private"),
        ("http://mixed.example.com/", "private"),
        ("http://mixed6.example.com/", "private"),
    ],
)
def test_names_resolving_to_internal_addresses_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURLError, match=reason):
        check_source_url(url, resolver=StubResolver())
    assert check_source_url(url, allow_private=True, resolver=StubResolver())


def test_public_name_accepted_and_addresses_returned() -> None:
    resolver = StubResolver()
    addresses = check_source_url("https://Models.Example.com/tiny.gguf", resolver=resolver)
    assert addresses == [ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address(PUBLIC_V6)]
    assert resolver.calls == [("models.example.com", 443)]


def test_resolver_gets_explicit_port_and_normalized_name() -> None:
    resolver = StubResolver()
    check_source_url("http://models.example.com.:8080/x", resolver=resolver)
    assert resolver.calls == [("models.example.com", 8080)]


def test_idn_name_resolved_as_punycode() -> None:
    resolver = StubResolver()
    check_source_url("https://b\u00fccher.example/", resolver=resolver)
    assert resolver.calls == [("xn--bcher-kva.example", 443)]


@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_V4}/",
        f"https://{PUBLIC_V4}:8443/model.gguf",
        f"http://[{PUBLIC_V6}]/",
        f"http://[::ffff:{PUBLIC_V4}]/",  # an IPv4-mapped public address is that public address
        "http://1572394766/",  # PUBLIC_V4 as one integer
        "https://user@models.example.com/",
    ],
)
def test_public_addresses_accepted(url: str) -> None:
    assert check_source_url(url, resolver=StubResolver())


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://nxdomain.example.com/", "cannot resolve host"),
        ("http://empty.example.com/", "no addresses"),
        ("http://garbage.example.com/", "invalid address"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_resolution_failures(url: str, match: str, allow_private: bool) -> None:
    with pytest.raises(UnsafeURLError, match=match):
        check_source_url(url, allow_private=allow_private, resolver=StubResolver())


# Refused whatever allow_private says: these are syntax rules.
MALFORMED = [
    ("file:///etc/passwd", "scheme"),
    ("ftp://models.example.com/x", "scheme"),
    ("gopher://models.example.com:70/_x", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("data:text/plain,hi", "scheme"),
    ("models.example.com/tiny.gguf", "scheme"),
    ("//models.example.com/tiny.gguf", "scheme"),
    ("", "empty"),
    ("http:///path", "no host"),
    ("http:models.example.com", "no host"),
    ("http://:80/", "no host"),
    ("http://user@/", "no host"),
    ("http://models.example.com:0/", "port"),
    ("http://models.example.com:65536/", "port"),
    ("http://models.example.com:http/", "port"),
    ("http://models.example.com:+80/", "port"),
    ("http://models.example.com:-1/", "port"),
    ("http://models.example.com:\u0668\u0660/", "port"),  # Arabic-Indic digits
    ("http://models.example.com/ x", "whitespace"),
    ("http://models.example.com\t/", "whitespace"),
    (" http://models.example.com/", "whitespace"),
    ("http://models.exa\nmple.com/", "whitespace"),
    ("http://models.example.com\\@127.0.0.1/", "backslash"),
    ("http://a@b@models.example.com/", "more than one '@'"),
    ("http://::1/", "brackets"),
    ("http://[::1/", "malformed|unterminated"),
    ("http://[127.0.0.1]/", "malformed|not a valid IPv6"),
    ("http://[::1]x/", "after the bracketed host|malformed"),
    ("http://[fe80::1%eth0]/", "malformed|zone"),
    ("http://[fe80::1%25]/", "zone"),
    ("http://256.0.0.1/", "malformed IP"),
    ("http://1.2.3.4.5/", "malformed IP"),
    ("http://08.0.0.1/", "malformed IP"),
    ("http://127..1/", "malformed IP"),
    ("http://0x7g.0.0.1/", "malformed IP"),
    ("http://%31%32%37.0.0.1/", "malformed IP"),
    ("http://%6cocalhost/", "not a valid host name"),
    ("http://exa_mple..com/", "not a valid host name"),
    ("http://-bad.example.com/", "not a valid host name"),
    ("http://" + "a" * 64 + ".example.com/", "not a valid host name"),
]


@pytest.mark.parametrize(("url", "match"), MALFORMED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_malformed_urls_refused_always(url: str, match: str, allow_private: bool) -> None:
    resolver = StubResolver()
    with pytest.raises(UnsafeURLError, match=match):
        check_source_url(url, allow_private=allow_private, resolver=resolver)
    assert resolver.calls == []


def test_unsafe_url_error_is_a_value_error() -> None:
    assert issubclass(UnsafeURLError, ValueError)


def test_a_url_a_request_gave_is_refused_as_an_invalid_argument() -> None:
    require_safe_url("https://models.example.com/m.gguf", allow_private=False, resolver=StubResolver())
    with pytest.raises(InvalidArgument) as refused:
        require_safe_url("http://rebind.example.com/", allow_private=False, resolver=StubResolver())
    assert (refused.value.code, refused.value.param) == ("unsafe_source_url", "source_url")
    assert "127.0.0.1" in refused.value.message
    with pytest.raises(InvalidArgument) as named:
        require_safe_url("http://10.0.0.1/", allow_private=False, param=None, label="HF_ENDPOINT refused: ")
    assert named.value.param is None and named.value.message.startswith(
        "HF_ENDPOINT refused: address 10.0.0.1"
    )


def test_default_resolver_on_a_numeric_host() -> None:
    # A numeric host is answered by getaddrinfo itself; no DNS query is made.
    assert "127.0.0.1" in default_resolver("127.0.0.1", 80)
