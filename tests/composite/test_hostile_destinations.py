"""Hostile destinations against the real HTTP stacks (requests/urllib3, botocore):
a name that passes the outbound check and then resolves somewhere else (DNS
rebinding) must not get a connection anywhere but the address that was checked,
and TLS must still be verified against the URL's host name.

The machine has no internet. These tests resolve names with a fake
``socket.getaddrinfo`` (what both the guard and, before the pinning, urllib3 used)
that answers a public address first and 127.0.0.1 afterwards, run a real server
on loopback, and stand in for the route to the public address by recording
``urllib3.util.connection.create_connection`` calls (the one function both
urllib3 and botocore open sockets with): a connection to the public address is
refused (or, for the TLS test, carried to the loopback server, as a router would
carry it to that address). Before the pinning, the second resolution sent the
request to the loopback server: these tests count its connections.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.util.connection
from apache_beam.pvalue import TaggedOutput
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from schemas.delivery import DeliveryResult
from sinks.aws import boto3_client
from sinks.http import Timeouts, new_session, pin_session
from sinks.kinesis import _KinesisWriteFn
from sinks.outbound import OutboundGuard
from sinks.rest import DEFAULT_MAX_REQUEST_BYTES, _RestBulkWriteFn
from sinks.s3 import _S3WriteFn
from tests.documents import event_doc
from tests.policies import unhurried
from tests.streams import config, kinesis_stream, rest_stream, s3_stream

PUBLIC = "93.184.216.34"
ONE_ATTEMPT = unhurried(1, max_delay_seconds=0.01)
_REAL_GETADDRINFO = socket.getaddrinfo
_REAL_CREATE_CONNECTION = urllib3.util.connection.create_connection


class LoopbackServer:
    """A TCP server on 127.0.0.1 that counts the connections it accepts (and,
    with ``tls``, completes a TLS handshake and answers 200 to one request)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self._tls = tls
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            try:
                conn.settimeout(10)  # a cold first handshake can be slow on a loaded machine
                if self._tls is not None:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                    self.requests.append(_read_request(conn))
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def _read_request(conn: socket.socket) -> bytes:
    """The whole request: headers and Content-Length bytes of body. Answering
    after the first read (requests may send the body in a packet of its own) and
    closing would reset the client mid-send."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()


class RebindingDns:
    """``socket.getaddrinfo`` for names ending in ``.rebind.test``: the first
    answer for a name is ``first`` (public), every later one 127.0.0.1."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, first: str = PUBLIC) -> None:
        self.first = first
        self.calls: dict[str, int] = {}
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".rebind.test"):
            return _REAL_GETADDRINFO(host, port, *args, **kwargs)
        self.calls[name] = self.calls.get(name, 0) + 1
        address = self.first if self.calls[name] == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]


class Route:
    """Records every socket urllib3 or botocore opens; a connection to the public
    address goes to ``reroute_to`` (a loopback port) or is refused: nothing leaves
    the machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, reroute_to: int | None = None) -> None:
        self.addresses: list[tuple[str, int]] = []
        self._reroute_to = reroute_to
        monkeypatch.setattr(urllib3.util.connection, "create_connection", self.create_connection)

    def create_connection(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        self.addresses.append(address)
        if address[0] == PUBLIC:
            if self._reroute_to is None:
                raise ConnectionRefusedError(111, "refused by the test's route")
            address = ("127.0.0.1", self._reroute_to)
        return _REAL_CREATE_CONNECTION(address, *args, **kwargs)


def _results(outputs: list[Any]) -> list[DeliveryResult]:
    return [o for o in outputs if not isinstance(o, TaggedOutput)]


def _event() -> dict[str, Any]:
    return event_doc("5.1.1", 1, dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC))


def test_a_rest_sink_connects_only_to_the_address_it_checked(monkeypatch, stream_secrets, loopback):
    """The name resolves to a public address when checked and to 127.0.0.1 when
    the HTTP client would resolve it again: the connection goes to the checked
    address (here refused) and the loopback server never sees one."""
    dns = RebindingDns(monkeypatch)
    route = Route(monkeypatch)
    fn = _RestBulkWriteFn(new_session, Timeouts(1, 1), DEFAULT_MAX_REQUEST_BYTES, ONE_ATTEMPT)
    fn.setup()
    try:
        streams = config(rest_stream("r1", f"https://hooks.rebind.test:{loopback.port}/hook", bulk=True))
        results = _results(list(fn.process(("r1", [("event", _event())]), streams)))
    finally:
        fn.teardown()
    assert loopback.connections == 0
    assert route.addresses == [(PUBLIC, loopback.port)]
    assert dns.calls == {"hooks.rebind.test": 1}  # resolved once: by the guard
    assert [(r.status, r.token) for r in results] == [("failed", "unreachable")]


def test_a_name_rebound_before_the_connection_is_refused_at_connect_time(monkeypatch, stream_secrets, loopback):
    """The check when the batch opens the stream passes; by the time the
    connection is made the verdict has expired and the name now points at
    loopback: the guard, asked by the connection, refuses it. The stream is
    deactivated with ``destination_refused`` and nothing raises."""
    dns = RebindingDns(monkeypatch)
    route = Route(monkeypatch)
    now = [0.0]
    fn = _RestBulkWriteFn(new_session, Timeouts(1, 1), DEFAULT_MAX_REQUEST_BYTES, ONE_ATTEMPT)

    def resolve_then_expire(host: str) -> list[str]:
        answers = sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
        now[0] += 301  # the verdict is stale by the time the connection asks
        return answers

    fn.resolver = resolve_then_expire  # type: ignore[method-assign]
    fn.setup()
    fn._guard.clock = lambda: now[0]
    try:
        streams = config(rest_stream("r1", f"https://hooks.rebind.test:{loopback.port}/hook", bulk=True))
        results = _results(list(fn.process(("r1", [("event", _event())]), streams)))
        again = _results(list(fn.process(("r1", [("event", _event())]), streams)))
    finally:
        fn.teardown()
    assert loopback.connections == 0 and route.addresses == []
    assert dns.calls == {"hooks.rebind.test": 2}
    assert [(r.status, r.error, r.token) for r in results] == [("failed", "destination_refused",
                                                                "destination_refused")]
    assert [(r.status, r.token) for r in again] == [("parked", "destination_refused")]


@pytest.mark.parametrize("api_type", ["aws_kinesis", "aws_s3"])
def test_an_aws_endpoint_override_connects_only_to_the_address_it_checked(monkeypatch, stream_secrets, loopback,
                                                                           api_type):
    """botocore, through the sink's pinned session: signed requests go to the
    checked address, never to the loopback address a second lookup gives."""
    RebindingDns(monkeypatch)
    route = Route(monkeypatch)
    endpoint = f"https://aws.rebind.test:{loopback.port}"
    if api_type == "aws_kinesis":
        fn: Any = _KinesisWriteFn(boto3_client, ONE_ATTEMPT, allow_insecure=False)
        streams = config(kinesis_stream("a1", endpoint, "stream"))
        element: Any = ("a1", [("event", _event())])
    else:
        fn = _S3WriteFn(boto3_client, ONE_ATTEMPT, allow_insecure=False)
        streams = config(s3_stream("a1", endpoint, "bucket"))
        element = (("a1", "event", 300), [_event()])
    fn.setup()
    try:
        window = _Window() if api_type == "aws_s3" else None
        outputs = list(fn.process(element, streams, window, _Pane()))
    finally:
        fn.teardown()
    assert loopback.connections == 0
    assert route.addresses and all(address == (PUBLIC, loopback.port) for address in route.addresses)
    assert [(r.status, r.token) for r in _results(outputs)] == [("failed", "unreachable")]


class _Pane:
    index = 0


class _Window:
    """The S3 sink's window: 2026-11-01 08:00 to 08:05 UTC."""

    def __init__(self) -> None:
        from apache_beam.utils.timestamp import Timestamp

        start = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC).timestamp()
        self.start, self.end = Timestamp(start), Timestamp(start + 300)


# --------------------------------------------------------------------------- TLS still verifies the host name


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize(("certificate_name", "verified"), [("hooks.pinned.test", True), ("other.test", False)])
def test_a_pinned_connection_still_verifies_tls_against_the_host_name(monkeypatch, tmp_path, certificate_name,
                                                                      verified):
    """Connected by address, verified by name: the handshake succeeds with a
    certificate for the URL's host (sent as SNI) and fails with any other."""
    cert, key = _certificate(tmp_path, certificate_name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = LoopbackServer(tls=context)
    route = Route(monkeypatch, reroute_to=server.port)
    session = new_session()
    pin_session(session, OutboundGuard(resolver=lambda host: [PUBLIC]))
    try:
        if verified:
            response = session.post(f"https://hooks.pinned.test:{server.port}/hook", data=b"{}", verify=str(cert),
                                    timeout=(10, 10))
            assert response.status_code == 200
            assert b"Host: hooks.pinned.test" in server.requests[0]
        else:
            with pytest.raises(requests.exceptions.SSLError):
                session.post(f"https://hooks.pinned.test:{server.port}/hook", data=b"{}", verify=str(cert),
                             timeout=(10, 10))
    finally:
        session.close()
        server.close()
    assert route.addresses == [(PUBLIC, server.port)]
