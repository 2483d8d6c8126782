"""SSRF guard for URLs that the server fetches on a user's behalf (model downloads, remote sources).

check_source_url refuses URLs whose scheme, syntax or destination a server must not fetch: only
http(s), and, unless private networks are explicitly allowed, only hosts whose every address is
publicly routable. Hosts written as IP literals are parsed here with the same leniency as inet_aton and
the WHATWG URL parser (integers, hex, octal, short forms, bracketed IPv6) so that no spelling of an
internal address slips past to a resolver that would accept it.

The returned addresses are the ones that were checked: callers must connect to exactly those (for
example by pinning them in the HTTP transport) and re-check every redirect target, otherwise a DNS
answer that changes between check and connect (DNS rebinding) defeats the check.

require_safe_url is the same check for a URL a request gave (or a setting named): its refusal is the
services' one error for it, InvalidArgument `unsafe_source_url`.
"""

import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from services.common.errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_ALLOWED_SCHEMES = {"http": 80, "https": 443}
# Names that resolve to the machine itself or to cloud metadata services in common setups, refused
# before resolution so a local /etc/hosts entry or search domain cannot turn them into something else.
_BLOCKED_HOSTNAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_BLOCKED_HOST_SUFFIXES = (".localhost",)
_HOST_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_ZONE_ID = re.compile(r"^[A-Za-z0-9_.~-]+$")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215 local-use NAT64 prefix: translates into whatever the operator's network holds.
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_TEREDO = ipaddress.IPv6Network("2001::/32")


class UnsafeURLError(ValueError):
    """The URL must not be fetched by the server; str(e) is a clear reason."""


def default_resolver(host: str, port: int) -> list[str]:
    """Resolves host with the system resolver, returning every address as a string."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def check_source_url(
    url: str, *, allow_private: bool = False, resolver: Resolver = default_resolver
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Refuses URLs a server must not fetch; returns the checked addresses.

    Callers connect to exactly those addresses so that a second DNS answer cannot change the target.

    With allow_private=True only the syntax rules (scheme, host, port) apply; the host is still
    resolved and its addresses returned. Raises UnsafeURLError with the reason otherwise.
    """
    host, port = _parse_url(url)
    literal = _parse_ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        name = _normalize_hostname(host)
        if not allow_private and _is_blocked_hostname(name):
            raise UnsafeURLError(f"host {name!r} refers to the local machine or a metadata service")
        addresses = _resolve(name, port, resolver)
    if not allow_private:
        for address in addresses:
            reason = _refusal_reason(address)
            if reason is not None:
                where = "" if literal is not None else f" (resolved from {host!r})"
                raise UnsafeURLError(f"address {address}{where} is {reason}")
    return addresses


def require_safe_url(
    url: str,
    *,
    allow_private: bool,
    resolver: Resolver = default_resolver,
    param: str | None = "source_url",
    label: str = "",
) -> None:
    """check_source_url for a URL a request gave: a refusal is InvalidArgument `unsafe_source_url` naming
    `param`, its message led by `label` (where the URL came from) when given. It resolves the host: call
    it off the event loop."""
    try:
        check_source_url(url, allow_private=allow_private, resolver=resolver)
    except UnsafeURLError as exc:
        raise InvalidArgument(f"{label}{exc}", code="unsafe_source_url", param=param) from None


def _parse_url(url: str) -> tuple[str, int]:
    """Returns (raw host, port) after the scheme and authority syntax checks."""
    if not isinstance(url, str) or not url:
        raise UnsafeURLError("URL is empty")
    # urlsplit silently strips or removes whitespace and control characters while other clients keep
    # them; refusing them avoids parsing a different URL from the one that will be fetched.
    if any(ord(c) <= 0x20 or c == "\x7f" for c in url):
        raise UnsafeURLError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise UnsafeURLError(f"URL is malformed: {e}") from e
    scheme = parts.scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        shown = f"{scheme!r}" if scheme else "missing"
        raise UnsafeURLError(f"URL scheme {shown} is not allowed; use http or https")
    netloc = parts.netloc
    if not netloc:
        raise UnsafeURLError("URL has no host")
    # WHATWG parsers treat "\" as "/", so "http://a.com\@10.0.0.1/" targets a.com for them but
    # 10.0.0.1 for urlsplit; refuse anything where the two could disagree.
    if "\\" in netloc:
        raise UnsafeURLError("URL host part contains a backslash")
    userinfo, at, hostport = netloc.rpartition("@")
    if at and "@" in userinfo:
        raise UnsafeURLError("URL contains more than one '@' in its host part")
    host, port_text = _split_host_port(hostport)
    if not host:
        raise UnsafeURLError("URL has no host")
    if port_text is None or port_text == "":
        port = _ALLOWED_SCHEMES[scheme]
    else:
        # int() would also take "+80", " 80" or non-ASCII digits; only plain ASCII digits are a port.
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
            raise UnsafeURLError(f"URL port {port_text!r} is not a valid port number")
        port = int(port_text)
    return host, port


def _split_host_port(hostport: str) -> tuple[str, str | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UnsafeURLError("URL has an unterminated '[' in its host")
        rest = hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UnsafeURLError("URL has unexpected text after the bracketed host")
        return hostport[: end + 1], (rest[1:] if rest else None)
    if hostport.count(":") > 1:
        raise UnsafeURLError("IPv6 addresses in URLs must be enclosed in brackets")
    host, colon, port = hostport.partition(":")
    return host, (port if colon else None)


def _parse_ip_literal(host: str) -> IPAddress | None:
    """Returns the address a host denotes when it is an IP literal, None when it is a name."""
    if host.startswith("["):
        return _parse_bracketed_ipv6(host[1:-1])
    ascii_host = _to_ascii(host)
    labels = ascii_host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # "127.0.0.1." is still an address for resolvers and browsers
    # A host ending in a number is an IPv4 address to resolvers and to WHATWG parsers; if it does not
    # parse as one, it is refused rather than sent to DNS where its meaning is resolver-specific.
    if not _looks_numeric(labels[-1]):
        return None
    value = _inet_aton(labels)
    if value is None:
        raise UnsafeURLError(f"host {host!r} is a malformed IP address")
    return ipaddress.IPv4Address(value)


def _parse_bracketed_ipv6(inner: str) -> ipaddress.IPv6Address:
    address, percent, zone = inner.partition("%")
    if percent:
        # RFC 6874 writes the zone separator percent-encoded as "%25".
        if not zone.startswith("25") or not _ZONE_ID.match(zone[2:]):
            raise UnsafeURLError(f"IPv6 zone identifier in [{inner}] is malformed")
        zone = zone[2:]
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        raise UnsafeURLError(f"[{inner}] is not a valid IPv6 address") from None
    return ipaddress.IPv6Address(f"{parsed}%{zone}") if percent else parsed


def _looks_numeric(label: str) -> bool:
    if label.isascii() and label.isdigit():
        return True
    return label[:2] in ("0x", "0X") and all(c in _HEX_DIGITS for c in label[2:])


def _inet_aton(labels: list[str]) -> int | None:
    """Parses IPv4 parts the way inet_aton(3) does: 1 to 4 parts, each decimal, 0x-hex or 0-octal.

    The last part fills all remaining bytes, so "127.1" is 127.0.0.1 and "2130706433" is 127.0.0.1.
    """
    if not 1 <= len(labels) <= 4:
        return None
    numbers: list[int] = []
    for label in labels:
        number = _parse_ipv4_number(label)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = last
    for i, n in enumerate(leading):
        value |= n << (8 * (3 - i))
    return value


def _parse_ipv4_number(label: str) -> int | None:
    if not label or not label.isascii():
        return None
    if label[:2] in ("0x", "0X"):
        digits = label[2:]
        if not all(c in _HEX_DIGITS for c in digits):
            return None
        return int(digits, 16) if digits else 0  # "0x" alone is 0 for inet_aton and WHATWG
    if not label.isdigit():
        return None
    if len(label) > 1 and label.startswith("0"):
        return int(label, 8) if all(c in "01234567" for c in label) else None
    return int(label)


def _to_ascii(host: str) -> str:
    """Lower-cases host and applies IDNA, which maps look-alikes such as fullwidth digits to ASCII."""
    if host.isascii():
        return host.lower()
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeURLError(f"host {host!r} is not a valid internationalized domain name") from None


def _normalize_hostname(host: str) -> str:
    name = _to_ascii(host)
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise UnsafeURLError(f"host {host!r} is not a valid host name")
    for label in name.split("."):
        if not _HOST_LABEL.match(label):
            raise UnsafeURLError(f"host {host!r} is not a valid host name")
    return name


def _is_blocked_hostname(name: str) -> bool:
    return name in _BLOCKED_HOSTNAMES or name.endswith(_BLOCKED_HOST_SUFFIXES)


def _resolve(name: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        answers = resolver(name, port)
    except Exception as e:
        # Resolvers report failure in many ways (gaierror, timeouts, a stub's KeyError); all mean the
        # destination is unknown.
        raise UnsafeURLError(f"cannot resolve host {name!r}: {e}") from e
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer)
        except ValueError:
            raise UnsafeURLError(f"resolver returned an invalid address {answer!r} for {name!r}") from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeURLError(f"host {name!r} resolved to no addresses")
    return addresses


def _refusal_reason(address: IPAddress) -> str | None:
    """Returns why a server must not connect to address, or None when it is publicly routable."""
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 destination are judged by that destination: the kernel or a
        # translator on the path delivers them to it.
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = _ipv4_refusal_reason(embedded)
            return f"an IPv6 form of {embedded}, {reason}" if reason else None
        return _ipv6_refusal_reason(address)
    return _ipv4_refusal_reason(address)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 destination of an IPv4-mapped, 6to4 or well-known-prefix NAT64 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _ipv4_refusal_reason(address: ipaddress.IPv4Address) -> str | None:
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (this includes cloud metadata services)"
    if address in _CGNAT:
        return "a carrier-grade NAT (shared) address"
    if address.is_multicast:
        return "a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    # Backstop for special-purpose ranges that the checks above do not name.
    if not address.is_global:
        return "not a public address"
    return None


def _ipv6_refusal_reason(address: ipaddress.IPv6Address) -> str | None:
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_site_local:
        return "a site-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _NAT64_LOCAL_USE:
        return "a local-use NAT64 address"
    if address in _TEREDO:
        return "a Teredo tunnel address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None
