"""Real destinations on 127.0.0.1 for ``make run-local`` and the tests.

- :class:`HttpReceiver`: a threaded HTTP server standing in for customers' REST
  endpoints and DataDog's intake. It records every request (method, path, headers,
  body) and answers through a replaceable responder, so fault tests can make it
  fail, throttle or hang.
- :class:`MotoServer`: moto's server, which speaks the AWS wire protocol for S3 and
  Kinesis; boto3 reaches it through the stream's ``endpoint_url``.

Hand-written receiver because what is needed is a plain HTTP server that logs
requests and can be told how to answer; the standard library's server is that,
with a few lines around it.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tools.processes import free_port


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request. ``delay_seconds`` holds the answer
    back (a hanging endpoint); ``reset`` sends half a response and then resets the
    connection (a peer dying mid-response)."""

    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay_seconds: float = 0.0
    reset: bool = False


Responder = Callable[[RecordedRequest], Reply]


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


class HttpReceiver:
    """``with HttpReceiver() as receiver: ... receiver.url ... receiver.requests()``"""

    def __init__(self, responder: Responder = always_ok, host: str = "127.0.0.1") -> None:
        self.responder = responder
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, each
            # response then waits ~40 ms for the client's delayed ACK.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    self.command, self.path, {k: v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver._requests.append(request)
                reply = receiver.responder(request)
                if reply.delay_seconds:
                    time.sleep(reply.delay_seconds)
                if reply.reset:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"partial")
                    # SO_LINGER 0: close() sends a TCP reset instead of a clean FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_PUT = do_GET = _handle  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoServer:
    """moto's threaded server on a free loopback port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from moto.server import ThreadedMotoServer  # a test/run-local dependency only

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
