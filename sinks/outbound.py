"""Outbound safety: the job must never become a way into anyone's network, and
customers must be able to tell our deliveries from forgeries.

Destinations. REST and DataDog URLs must be ``https`` (certificates are verified:
requests' default, never turned off). A URL whose host is a raw IP address, or a
name that resolves to a loopback, private, link-local, multicast, reserved or
unspecified address or to a cloud metadata endpoint, is refused with a
configuration error (status token ``destination_refused``). The check runs when a
sink first sends to a host and again after :data:`RECHECK_SECONDS`, so a name that
is re-pointed at an internal address is caught too. (A DNS answer that changes
between our check and requests' own lookup could still slip through; closing that
needs connection-level pinning, noted as a known limit.) ``allow_insecure=True``
(``--allow_insecure_destinations``) lifts all of this for development: ``make
run-local`` and the tests deliver to http://127.0.0.1.

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
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-DataStreamer-Signature"
RECHECK_SECONDS = 300.0
DEFAULT_TOLERANCE_SECONDS = 300

#: Cloud instance metadata services (AWS, GCP, Azure, Oracle, Alibaba; AWS IPv6).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "192.0.0.192", "100.100.100.200", "fd00:ec2::254",
))

Resolver = Callable[[str], list[str]]


class DestinationRefusedError(ValueError):
    """A destination the outbound rules forbid; the message says which rule."""


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if getattr(address, "ipv4_mapped", None):
        return _forbidden(address.ipv4_mapped)  # type: ignore[union-attr]
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


def check_url(url: str, *, allow_insecure: bool = False, resolver: Resolver = resolve_host) -> None:
    """Raise :class:`DestinationRefusedError` unless ``url`` is a safe destination."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if allow_insecure:
        return
    if parts.scheme != "https":
        raise DestinationRefusedError(f"{url}: destinations must use https")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        raise DestinationRefusedError(f"{url}: a raw IP address is not allowed as a destination host")
    try:
        addresses = resolver(host)
    except OSError as err:
        raise DestinationRefusedError(f"{url}: {host} does not resolve ({err.strerror or err})") from None
    for value in addresses:
        reason = _forbidden(ipaddress.ip_address(value.split("%", 1)[0]))
        if reason:
            raise DestinationRefusedError(f"{url}: {host} resolves to {reason} ({value})")


@dataclass
class OutboundGuard:
    """Per-DoFn cache of checked hosts; create it in ``setup``."""

    allow_insecure: bool = False
    resolver: Resolver = resolve_host
    clock: Callable[[], float] = time.monotonic
    _checked: dict[str, tuple[float, str | None]] = field(default_factory=dict)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` is refused, or None when it may be used."""
        if self.allow_insecure:
            return None
        key = url.split("/", 3)[:3]
        cache_key = "/".join(key)
        now = self.clock()
        cached = self._checked.get(cache_key)
        if cached is not None and now - cached[0] < RECHECK_SECONDS:
            return cached[1]
        try:
            check_url(url, resolver=self.resolver)
            reason = None
        except DestinationRefusedError as err:
            reason = str(err)
        self._checked[cache_key] = (now, reason)
        return reason


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
