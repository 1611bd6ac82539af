"""Real destinations on 127.0.0.1 for ``make run-local`` and the tests.

- :class:`HttpReceiver`: a threaded HTTP server standing in for customers' REST
  endpoints and DataDog's intake. It records every request (method, path, headers,
  body, arrival time, the reply chosen) and answers through a replaceable
  responder; ``down(fault)`` / ``up()`` switch an outage on and off while a job
  runs. The faults themselves (hang, reset, throttle, slow, malformed answers) are
  in ``tools/faults.py``; the handler here carries them out on the real socket.
- :class:`MotoServer`: moto's server, which speaks the AWS wire protocol for S3 and
  Kinesis; boto3 reaches it through the stream's ``endpoint_url``.

Hand-written receiver because what is needed is a plain HTTP server that logs
requests and can be told how to answer; the standard library's server is that,
with a few lines around it.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tools.processes import free_port


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived, and the ``reply`` chosen for it. ``received_at`` is
    ``time.time()`` (comparable with document timestamps and wall-clock publish
    times), ``received_monotonic`` is ``time.monotonic()`` (for durations a clock step
    must not bend); both taken once the body is read (the head, for a fault acting
    before the body)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    received_monotonic: float
    reply: Reply | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A request header, whatever its case."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def accepted(self) -> bool:
        """Whether the receiver chose a complete 2xx answer, what a client takes as
        delivered; never a reply that breaks the exchange (``action``, ``reset``)."""
        reply = self.reply
        return reply is not None and reply.action is None and not reply.reset and 200 <= reply.status < 300


@dataclass(frozen=True)
class Exchange:
    """One request's connection, handed to a :attr:`Reply.action` that answers in its
    own way (or not at all). ``released`` is set when the receiver stops or
    :meth:`HttpReceiver.release` is called: an action that waits must wait on it."""

    sock: socket.socket
    released: threading.Event
    handler: BaseHTTPRequestHandler

    def write(self, data: bytes) -> None:
        self.handler.wfile.write(data)

    def close(self) -> None:
        """Close the connection (a clean FIN) once the action returns."""
        self.handler.close_connection = True

    def reset(self) -> None:
        """Close now with a TCP reset (SO_LINGER 0 makes close() send RST, not FIN),
        as a crashed peer or a load balancer dropping the connection does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.handler.close_connection = True
        self.sock.close()


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request. ``delay_seconds`` holds the answer
    back (a slow endpoint; cut short, without an answer, when the receiver stops);
    ``drip`` = (bytes, seconds) sends the body that many bytes at a time with that
    pause between them; ``reset`` sends half a response and then resets the
    connection (a peer dying mid-response). ``action``, when set, takes over the
    connection instead of a normal answer (hang, reset, malformed bytes:
    ``tools/faults.py``); ``before_body`` asks for it before the request body is
    read, which only a fault plan (:meth:`HttpReceiver.down`) can honour, since a
    responder sees the body."""

    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay_seconds: float = 0.0
    reset: bool = False
    drip: tuple[int, float] | None = None
    action: Callable[[Exchange], None] | None = None
    before_body: bool = False


Responder = Callable[[RecordedRequest], Reply]
#: Chooses a fault for a request, or ``None`` to let the responder answer. A plan
#: with a true ``before_body`` attribute is asked with the request head only (an
#: empty body), before the body is read (``tools/faults.py`` builds plans).
FaultPlan = Callable[[RecordedRequest], "Reply | None"]


def always_ok(_: RecordedRequest) -> Reply:
    return Reply(202, b'{"errors":[]}')


class Script:
    """A responder that answers each path with its list of replies in turn (the
    last one repeats), and :func:`always_ok` on other paths. Thread-safe."""

    def __init__(self, replies: dict[str, list[Reply]], default: Responder = always_ok) -> None:
        self._replies = {path: list(items) for path, items in replies.items()}
        self._default = default
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        with self._lock:
            queue = self._replies.get(request.path)
            if not queue:
                return self._default(request)
            return queue.pop(0) if len(queue) > 1 else queue[0]


class _Constant:
    """The plan of ``down(reply)``: that reply for every request."""

    def __init__(self, reply: Reply) -> None:
        self.reply, self.before_body = reply, reply.before_body

    def __call__(self, _: RecordedRequest) -> Reply:
        return self.reply


class HttpReceiver:
    """``with HttpReceiver() as receiver: ... receiver.url ... receiver.requests()``

    ``down(fault)`` / ``up()``: an outage in front of the responder. ``release()``
    and ``stop()`` close the connections held by hanging or slow replies, so a hung
    handler never holds up a test."""

    def __init__(self, responder: Responder = always_ok, host: str = "127.0.0.1") -> None:
        self.responder = responder
        self._plan: FaultPlan | None = None
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._stopped = False
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, each
            # response then waits ~40 ms for the client's delayed ACK.
            disable_nagle_algorithm = True

            def handle(self) -> None:
                with contextlib.suppress(ConnectionError):  # a client gone (timed out) before its answer
                    super().handle()

            def _handle(self) -> None:
                plan, released = receiver._plan, receiver._released
                request = RecordedRequest(self.command, self.path, dict(self.headers.items()), b"",
                                          time.time(), time.monotonic())
                early = plan is not None and getattr(plan, "before_body", False)
                reply = plan(request) if plan is not None and early else None
                if reply is not None and reply.before_body:
                    self.close_connection = True  # the unread body must not pass for the next request
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                    request = replace(request, body=body, received_at=time.time(), received_monotonic=time.monotonic())
                    if plan is not None and not early:
                        reply = plan(request)
                if reply is None:
                    reply = receiver.responder(request)
                receiver._record(replace(request, reply=reply))
                self._answer(reply, released)

            def _answer(self, reply: Reply, released: threading.Event) -> None:
                if reply.delay_seconds and released.wait(reply.delay_seconds):
                    self.close_connection = True  # released while waiting: no answer
                    return
                if reply.action is not None:
                    reply.action(Exchange(self.connection, released, self))
                    return
                if reply.reset:
                    exchange = Exchange(self.connection, released, self)
                    exchange.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"partial")
                    exchange.reset()
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if not any(key.lower() == "content-length" for key in reply.headers):
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                chunk, pause = reply.drip or (len(reply.body) or 1, 0.0)
                for offset in range(0, len(reply.body), chunk):
                    if offset and released.wait(pause):
                        self.close_connection = True
                        return
                    self.wfile.write(reply.body[offset:offset + chunk])

            do_POST = do_PUT = do_GET = do_HEAD = do_DELETE = do_PATCH = _handle  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        # A short poll, so that stop() returns at once rather than after up to 0.5 s.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="http-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True  # the released event stays set: a request arriving now is not held
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def down(self, fault: Reply | FaultPlan) -> None:
        """Start an outage: ``fault`` (a reply for every request, or a plan choosing
        which requests get which fault) answers instead of the responder."""
        self._plan = _Constant(fault) if isinstance(fault, Reply) else fault

    def up(self) -> None:
        """End the outage. Connections held by a hang stay held until :meth:`release`."""
        self._plan = None

    def release(self) -> None:
        """Close, without an answer, every connection held by a hang, a delay or a
        drip so far; later requests are held again (unless the receiver stopped)."""
        with self._lock:
            released = self._released
            if not self._stopped:
                self._released = threading.Event()
        released.set()

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: RecordedRequest) -> None:
        """Log a request, in arrival order: a slow responder (a forwarding one) must
        not let a later request overtake it in the log."""
        with self._lock:
            bisect.insort(self._requests, request, key=lambda r: r.received_monotonic)

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_KINESIS_LOCK = threading.Lock()


def _serialize_kinesis_appends() -> None:
    """Make moto's Kinesis shards take one record at a time.

    moto's ``Shard.put_record`` numbers a record as the shard's highest sequence
    number plus one and stores it under that number ("not safe for concurrency",
    says its source): two requests in parallel (a Flink job at parallelism 2) get
    the same number, and the second record overwrites the first, although both
    were answered with a sequence number. Real Kinesis does not lose acknowledged
    records, so the local stand-in must not either. Idempotent."""
    from moto.kinesis import models

    if getattr(models.Shard.put_record, "_serialized", False):
        return
    original = models.Shard.put_record

    def put_record(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _KINESIS_LOCK:
            return original(self, *args, **kwargs)

    put_record._serialized = True  # type: ignore[attr-defined]
    models.Shard.put_record = put_record


class MotoServer:
    """moto's threaded server on a free loopback port (its Kinesis shards
    serialized: :func:`_serialize_kinesis_appends`)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from moto.server import ThreadedMotoServer  # a test/run-local dependency only

        _serialize_kinesis_appends()

        self._host, self._port = host, free_port(host)
        self._server = ThreadedMotoServer(ip_address=host, port=self._port, verbose=False)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def start(self) -> MotoServer:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
