"""A lean loopback receiver for the bench's REST bulk streams.

``tools.local_destinations.HttpReceiver`` keeps every request body in memory,
which at a million documents would measure the receiver rather than the job. This
one keeps, per request path, the number of requests and documents and, when
asked, the set of SHA-1 digests of each document re-serialized with sorted keys
(orjson ``OPT_SORT_KEYS``): two runs delivered the same documents exactly when
their digest sets and counts are equal, whatever the order, batching or key order
of the bodies.

The handler reads the body, answers ``202`` at once and queues the body for one
digest thread, so the time a sender waits for its answer does not depend on how
long the bench takes to digest its documents. It also checks what every REST
delivery must carry (the auth header and a valid signature, ``sinks/outbound.py``)
and counts the requests that do not.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from sinks.outbound import SIGNATURE_HEADER, verify_signature

REPLY = b'{"errors":[]}'


def document_digest(document: Any) -> bytes:
    """The identity of one document, independent of its key order and spacing."""
    return hashlib.sha1(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).digest()


@dataclass
class PathStats:
    """What one request path received."""

    requests: int = 0
    documents: int = 0
    bytes: int = 0
    #: digest -> how many times it arrived (only when digests are collected)
    digests: Counter = field(default_factory=Counter)
    bad_requests: int = 0  # not a JSON array of objects
    unsigned: int = 0  # missing auth header or invalid signature

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "documents": self.documents, "bytes": self.bytes,
            "distinct_documents": len(self.digests), "bad_requests": self.bad_requests, "unsigned": self.unsigned,
        }


class LeanReceiver:
    """``with LeanReceiver(auth=..., signing_secret=...) as r: ... r.url ... r.snapshot()``"""

    def __init__(self, *, auth_header: str = "Authorization", auth_value: str | None = None,
                 signing_secret: str | None = None, digests: bool = True, host: str = "127.0.0.1") -> None:
        self._auth_header = auth_header
        self._auth_value = auth_value
        self._signing_secret = signing_secret
        self._digests = digests
        self._stats: dict[str, PathStats] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, dict[str, str], bytes] | None] = queue.Queue()
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    "auth": self.headers.get(receiver._auth_header) or "",
                    "signature": self.headers.get(SIGNATURE_HEADER) or "",
                }
                receiver._queue.put((self.path, headers, body))
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(REPLY)))
                self.end_headers()
                self.wfile.write(REPLY)

            do_POST = do_PUT = _handle  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bench-receiver", daemon=True)
        self._worker = threading.Thread(target=self._digest_loop, name="bench-digests", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LeanReceiver:
        self._thread.start()
        self._worker.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._queue.put(None)
        self._worker.join(timeout=60)

    def __enter__(self) -> LeanReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- digesting

    def _digest_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._record(*item)
            finally:
                self._queue.task_done()

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        signed = True
        if self._auth_value is not None and headers["auth"] != self._auth_value:
            signed = False
        if self._signing_secret is not None and not verify_signature(self._signing_secret, headers["signature"],
                                                                     body):
            signed = False
        try:
            documents = orjson.loads(body)
            valid = isinstance(documents, list) and all(isinstance(d, dict) for d in documents)
        except orjson.JSONDecodeError:
            documents, valid = [], False
        digests = [document_digest(d) for d in documents] if valid and self._digests else ()
        with self._lock:
            stats = self._stats.setdefault(path, PathStats())
            stats.requests += 1
            stats.bytes += len(body)
            stats.unsigned += 0 if signed else 1
            if not valid:
                stats.bad_requests += 1
                return
            stats.documents += len(documents)
            stats.digests.update(digests)

    def drain(self) -> None:
        """Wait until every request received so far is digested."""
        self._queue.join()

    def take(self, prefix: str) -> dict[str, PathStats]:
        """Remove and return the stats of the paths under ``prefix``, keyed by the
        rest of the path (after draining the queue)."""
        self.drain()
        with self._lock:
            paths = [p for p in self._stats if p.startswith(prefix)]
            return {p[len(prefix):]: self._stats.pop(p) for p in paths}
