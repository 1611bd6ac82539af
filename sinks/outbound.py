"""Outbound safety: the job must never become a way into anyone's network, and
customers must be able to tell our deliveries from forgeries.

Destinations. Every address the job sends customer data to is given by a
customer: the URL of a REST or DataDog stream, and the ``endpoint_url`` override
of an AWS (Kinesis, S3) stream, which receives *signed* AWS requests. Each goes
through one :class:`OutboundGuard`, at load (job start), when a sink opens the
stream, and when a connection is made. Unless ``allow_insecure``
(``--allow_insecure_destinations``, development only: ``make run-local`` and the
tests deliver to http://127.0.0.1), a destination must be:

- unambiguous: parsed with urllib3's parser, the one requests and botocore send
  with, and refused when a second parser could read another host out of it
  (backslashes, whitespace, control or non-ASCII characters, user info, percent
  signs or odd characters in the host: IDN hosts must be given IDNA-encoded,
  ``xn--``), so the host checked is the host connected to;
- ``https``, with verified certificates (requests' and botocore's default, never
  turned off);
- a name, not an IP address in any spelling (``10.0.0.1``, ``[::1]``,
  ``2130706433``, ``0x7f.1``);
- a name whose every address is public: not loopback, private, link-local,
  site-local, multicast, reserved, unspecified, shared (CGNAT) or a cloud metadata
  endpoint, IPv6 forms that carry an IPv4 address (IPv4-mapped and -compatible,
  6to4, NAT64) judged by that IPv4 address, Teredo refused outright.

DNS rebinding. A check of a name is only worth something if the connection goes
to the address checked. The guard resolves a name once, checks every address and
keeps the verdict for :data:`RECHECK_SECONDS`; the connections requests and
botocore make (:class:`PinnedPoolManager`, ``sinks/http.py``, ``sinks/aws.py``)
ask the guard for the address and connect to it, while TLS still verifies the
certificate against, and sends SNI for, the URL's host name. A name that is
re-pointed at an internal address is refused at the next check; a connection is
never made to an address that was not checked. No library is patched: the
pinning lives in our own subclasses of urllib3's connection classes.

Signatures. Every REST delivery carries ``X-DataStreamer-Signature:
t=<unix seconds>,v1=<hex>``, where ``<hex>`` is HMAC-SHA256 over
``"<t>." + body`` with the stream's signing secret (the scheme Stripe and others
use): a receiver recomputes it with its copy of the secret, compares in constant
time and rejects old timestamps (replays). :func:`verify_signature` is the
reference implementation docs/delivery.md shows.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from schemas.records import QUOTE_LIMIT, quote

SIGNATURE_HEADER = "X-DataStreamer-Signature"
RECHECK_SECONDS = 300.0
DEFAULT_TOLERANCE_SECONDS = 300
#: Longest prefix of an untrusted value (a URL, a host) quoted in a message.
#: Longest URL taken at all (browsers and servers commonly stop near 2 KiB).
MAX_URL_LENGTH = 2048

#: Cloud instance metadata services (AWS, GCP, Azure, Oracle, Alibaba; AWS IPv6).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "192.0.0.192", "100.100.100.200", "fd00:ec2::254",
))

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
#: A host name: dot-separated labels of letters, digits, '-' and '_' (some
#: services use it), with an optional final dot. Anything else is ambiguous.
_HOST_NAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?$")
#: The last label of a name that inet_aton would read as a number.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")

Resolver = Callable[[str], list[str]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefusedError(ValueError):
    """A destination the outbound rules forbid; the message says which rule and
    quotes at most :data:`QUOTE_LIMIT` characters of the destination."""


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), in the resolver's order."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries, when it carries one that decides
    where the packets go (mapped, compatible, 6to4, NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _NAT64_LOCAL or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _forbidden(address: Address) -> str | None:
    """Why sending to ``address`` is refused, or None for a public address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return "a Teredo address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:  # the packets end up at the IPv4 address: it decides
            return _forbidden(embedded)
        if address in _SITE_LOCAL:
            return "a site-local address"
    for attribute, label in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "an unspecified address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, attribute):
            return label
    if not address.is_global:
        return "not a public address"
    return None


class Destination(NamedTuple):
    """A URL as the HTTP clients will read it: scheme, host (lower case, IPv6
    without brackets) and port."""

    scheme: str
    host: str
    port: int


def parse_destination(url: str) -> Destination:
    """Parse ``url`` exactly as requests and botocore will (urllib3's
    ``parse_url``), refusing what another parser could read differently."""
    if not isinstance(url, str) or not url:
        raise DestinationRefusedError("a destination must be a non-empty URL")
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefusedError(f"{quote(url)}: longer than {MAX_URL_LENGTH} characters")
    for character in url:
        if not "\x21" <= character <= "\x7e":
            raise DestinationRefusedError(
                f"{quote(url)}: whitespace, control and non-ASCII characters are not allowed in a destination "
                "(percent-encode the path; give an international host name IDNA-encoded, xn--...)")
    if "\\" in url:
        raise DestinationRefusedError(f"{quote(url)}: a backslash is not allowed in a destination URL")
    try:
        parsed = parse_url(url)
    except LocationParseError:
        raise DestinationRefusedError(f"{quote(url)}: not a valid URL") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise DestinationRefusedError(f"{quote(url)}: only http(s) URLs are destinations")
    authority = url.split("//", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0] if "//" in url else ""
    if parsed.auth is not None or "@" in authority:
        raise DestinationRefusedError(f"{quote(url)}: user info (user:password@) is not allowed in a destination")
    host = (parsed.host or "").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise DestinationRefusedError(f"{quote(url)}: not a valid IPv6 address") from None
    elif not _HOST_NAME.match(host):
        raise DestinationRefusedError(f"{quote(url)}: the host must be a plain DNS name or IP address")
    try:
        other = urlsplit(url)
        other_host, other_port = (other.hostname or ""), other.port
    except ValueError:
        raise DestinationRefusedError(f"{quote(url)}: not a valid URL") from None
    port = parsed.port or (443 if scheme == "https" else 80)
    if other_host != host or (other_port or port) != port:
        raise DestinationRefusedError(f"{quote(url)}: ambiguous URL (parsers disagree on its host)")
    if not 0 < port < 65536:
        raise DestinationRefusedError(f"{quote(url)}: port out of range")
    return Destination(scheme, host, port)


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IP address in any spelling a resolver accepts
    (dotted, bracketless IPv6, and inet_aton's short, decimal, octal and hex
    forms: ``127.1``, ``2130706433``, ``0x7f.1``)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.match(last))


@dataclass
class OutboundGuard:
    """The one place destinations are checked: at load, at sink start and at
    connect time (module docstring). Thread safe (a sink sends from a pool).

    ``check`` judges a URL, ``refusal`` says why it is refused (or None), and
    ``addresses`` is what a connection asks for: the checked addresses of a host,
    or None when anything may be used (``allow_insecure``)."""

    allow_insecure: bool = False
    resolver: Resolver = resolve_host
    clock: Callable[[], float] = time.monotonic
    _checked: dict[str, tuple[float, tuple[str, ...] | str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, url: str) -> Destination | None:
        """The destination ``url`` names, once it passed every rule; None in
        insecure mode. Raises :class:`DestinationRefusedError`."""
        if self.allow_insecure:
            return None
        destination = parse_destination(url)
        if destination.scheme != "https":
            raise DestinationRefusedError(f"{quote(url)}: destinations must use https")
        if is_ip_literal(destination.host):
            raise DestinationRefusedError(f"{quote(url)}: a raw IP address is not allowed as a destination host")
        self._addresses(destination.host)
        return destination

    def refusal(self, url: str) -> str | None:
        """Why ``url`` is refused, or None when it may be used."""
        try:
            self.check(url)
        except DestinationRefusedError as err:
            return str(err)
        return None

    def addresses(self, host: str) -> tuple[str, ...] | None:
        """The checked addresses to connect to for ``host`` (never an address
        that was not checked), or None in insecure mode. Raises
        :class:`DestinationRefusedError`."""
        if self.allow_insecure:
            return None
        name = host.lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if not _HOST_NAME.match(name) or is_ip_literal(name):
            raise DestinationRefusedError(f"{quote(host)}: only public host names may be connected to")
        return self._addresses(name)

    def _addresses(self, host: str) -> tuple[str, ...]:
        """Resolve once, check every address, keep the verdict for
        :data:`RECHECK_SECONDS`; the connection uses exactly these addresses."""
        key = host.rstrip(".")
        now = self.clock()
        with self._lock:
            cached = self._checked.get(key)
        if cached is None or now - cached[0] >= RECHECK_SECONDS:
            cached = (now, self._judge(host))
            with self._lock:
                self._checked[key] = cached
        verdict = cached[1]
        if isinstance(verdict, str):
            raise DestinationRefusedError(verdict)
        return verdict

    def _judge(self, host: str) -> tuple[str, ...] | str:
        """The addresses of ``host`` when all are allowed, else why not. Judged
        in sorted order, so the reason given does not depend on the resolver's."""
        shown = host[:QUOTE_LIMIT]  # a checked host name: letters, digits, '.', '-', '_'
        try:
            answers = self.resolver(host)
        except OSError as err:
            return f"{shown} does not resolve ({err.strerror or type(err).__name__})"
        if not answers:
            return f"{shown} does not resolve"
        for value in sorted(answers):
            try:
                address = ipaddress.ip_address(value.split("%", 1)[0])
            except ValueError:
                return f"{shown} resolves to something that is not an address"
            reason = _forbidden(address)
            if reason:
                return f"{shown} resolves to {reason} ({address})"
        return tuple(answers)


def check_url(url: str, *, allow_insecure: bool = False, resolver: Resolver = resolve_host) -> None:
    """Raise :class:`DestinationRefusedError` unless ``url`` is a safe destination."""
    OutboundGuard(allow_insecure, resolver).check(url)


# --------------------------------------------------------------------------- signatures


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body``."""
    moment = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode("utf-8"), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={moment},v1={mac}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """What a receiver does: recompute the HMAC, compare in constant time, and
    refuse a timestamp outside the tolerance (a replayed request)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        moment = int(fields["t"])
        received = fields["v1"]
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - moment) > tolerance_seconds:
        return False
    expected = hmac.new(secret.encode("utf-8"), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received)
