"""Destinations that fail the way real ones do, for :class:`~tools.local_destinations.HttpReceiver`.

Every fault is a :class:`~tools.local_destinations.Reply` carried out on the real
socket, never a mock: a client sees the same bytes, silences and TCP resets as
from a broken endpoint, so its own timeouts and error handling are what get
tested. Two ways to use them:

- in a responder, e.g. ``Script({"/s": [HANG, RESET, Reply(200)]})``: per path and
  in order;
- as an outage, ``receiver.down(fault)`` ... ``receiver.up()``, where ``fault`` is a
  reply or a *plan* choosing which requests get it: :func:`first` (the first N),
  :func:`for_seconds` (a window that ends), :func:`matching` / :func:`on_path`
  (some requests only). Plans nest: ``for_seconds(40, on_path("/a", unavailable(5)))``.

``docs/fault-injection.md`` lists the modes and what a client sees for each.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from email.utils import formatdate
from http import HTTPStatus

from tools.local_destinations import Exchange, FaultPlan, RecordedRequest, Reply

_JSON = {"Content-Type": "application/json"}
OK = Reply(200, b'{"ok":true}')


# --------------------------------------------------------------------------- breaking the exchange


def _hang(exchange: Exchange) -> None:
    exchange.released.wait()
    exchange.close()


def _reset(exchange: Exchange) -> None:
    exchange.reset()


def _raw(data: bytes, *, close: bool = True) -> Callable[[Exchange], None]:
    def send(exchange: Exchange) -> None:
        exchange.write(data)
        if close:
            exchange.close()

    return send


def _head(reply: Reply, content_length: int) -> bytes:
    """The status line and headers of ``reply``, with a Content-Length of our choosing."""
    lines = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"]
    lines += [f"{k}: {v}" for k, v in reply.headers.items()]
    return ("\r\n".join([*lines, f"Content-Length: {content_length}"]) + "\r\n\r\n").encode("latin-1")


#: Reads the request and never answers; the connection stays open until the
#: receiver stops or ``release()`` is called (then it closes without an answer).
HANG = Reply(0, b"", {}, action=_hang)
#: Reads the request, then resets the connection (RST) without an answer.
RESET = Reply(0, b"", {}, action=_reset)
#: Reads the request head only, then resets: a client still sending its body gets
#: the reset while writing. Only honoured by ``down()`` (a responder sees the body).
RESET_BEFORE_BODY = Reply(0, b"", {}, action=_reset, before_body=True)
#: A 200 head promising 1000 bytes, part of a body, then a reset (``Reply.reset``).
RESET_MID_RESPONSE = Reply(reset=True)
#: A status line that is not HTTP (what a client gets from a port serving something else).
GARBAGE_RESPONSE = Reply(0, b"", {}, action=_raw(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage\r\n\r\n"))


# --------------------------------------------------------------------------- status answers


def status(code: int, body: bytes = b'{"error":"injected"}', *, retry_after: int | None = None,
           headers: dict[str, str] | None = None) -> Reply:
    """A plain answer with ``code``; ``retry_after`` (whole seconds, as RFC 9110
    wants them) adds a ``Retry-After`` header."""
    extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Reply(code, body, {**_JSON, **(headers or {}), **extra})


def unavailable(retry_after: int | None = None) -> Reply:
    """503, optionally with ``Retry-After`` in seconds."""
    return status(503, b'{"error":"service unavailable"}', retry_after=retry_after)


def throttled(retry_after: int | None = 1) -> Reply:
    """429 with ``Retry-After`` in seconds (``None``: without the header)."""
    return status(429, b'{"error":"rate limit exceeded"}', retry_after=retry_after)


def throttled_until(seconds: float, code: int = 429) -> FaultPlan:
    """``code`` with ``Retry-After`` as an HTTP-date ``seconds`` after each request
    (rounded up to the next whole second, the format's resolution). A plan, not a
    reply: the date is computed per request."""

    def answer(_: RecordedRequest) -> Reply:
        date = formatdate(math.ceil(time.time() + seconds), usegmt=True)
        return status(code, b'{"error":"rate limit exceeded"}', headers={"Retry-After": date})

    return answer


UNAUTHORIZED = status(401, b'{"error":"invalid credentials"}', headers={"WWW-Authenticate": 'Bearer realm="api"'})
FORBIDDEN = status(403, b'{"error":"forbidden"}')


# --------------------------------------------------------------------------- slow answers


def slow(seconds: float, reply: Reply = OK) -> Reply:
    """``reply`` after ``seconds`` of silence (a client's read timeout fires first if shorter)."""
    return replace(reply, delay_seconds=seconds)


def drip(reply: Reply = OK, chunk_bytes: int = 4, interval_seconds: float = 0.05) -> Reply:
    """``reply``'s head at once, then its body ``chunk_bytes`` at a time with
    ``interval_seconds`` between them: each read is quick, so a per-read timeout
    never fires while the whole answer takes long."""
    return replace(reply, drip=(chunk_bytes, interval_seconds))


# --------------------------------------------------------------------------- malformed answers


def garbled_body(code: int = 200) -> Reply:
    """A well-framed answer whose body is neither UTF-8 nor JSON."""
    return Reply(code, b'\xff\xfe{"errors": [\x00 tru', dict(_JSON))


def truncated_body(reply: Reply = OK, keep_bytes: int | None = None) -> Reply:
    """``reply``'s head with its full Content-Length, the first ``keep_bytes`` of the
    body (default: half), then a clean close: the client reads too few bytes."""
    kept = reply.body[: len(reply.body) // 2 if keep_bytes is None else keep_bytes]
    return Reply(0, b"", {}, action=_raw(_head(reply, len(reply.body)) + kept))


def wrong_content_length(delta: int, reply: Reply = OK) -> Reply:
    """``reply`` with a Content-Length ``delta`` bytes off. Positive: the client waits
    for bytes that never come, then sees the close (an incomplete read). Negative:
    the client reads a short body and takes it as complete; the surplus stays on the
    open connection, where a buffered reader (http.client's) takes it in with the
    response and drops it."""
    return Reply(0, b"", {}, action=_raw(_head(reply, len(reply.body) + delta) + reply.body, close=delta > 0))


# --------------------------------------------------------------------------- plans: which requests


class _Plan:
    """A fault plan: ``choose`` returns the fault for a request or ``None``.
    ``before_body`` comes from the fault it wraps, so a plan that can answer
    :data:`RESET_BEFORE_BODY` is asked before the body is read."""

    def __init__(self, fault: Reply | FaultPlan, choose: Callable[[RecordedRequest, FaultPlan], Reply | None]) -> None:
        self._fault: FaultPlan = fault if not isinstance(fault, Reply) else (lambda _r, f=fault: f)
        self.before_body = fault.before_body if isinstance(fault, Reply) else getattr(fault, "before_body", False)
        self._choose = choose

    def __call__(self, request: RecordedRequest) -> Reply | None:
        return self._choose(request, self._fault)


def always(fault: Reply | FaultPlan) -> FaultPlan:
    """Every request gets ``fault``."""
    return _Plan(fault, lambda request, inner: inner(request))


def first(n: int, fault: Reply | FaultPlan) -> FaultPlan:
    """The first ``n`` requests that ``fault`` applies to get it, then none do."""
    lock, hits = threading.Lock(), [0]

    def choose(request: RecordedRequest, inner: FaultPlan) -> Reply | None:
        with lock:
            if hits[0] >= n:
                return None
            reply = inner(request)
            hits[0] += reply is not None
            return reply

    return _Plan(fault, choose)


def for_seconds(seconds: float, fault: Reply | FaultPlan, *, from_first_request: bool = False) -> FaultPlan:
    """``fault`` for ``seconds``, then none: an outage that ends. The window starts
    now, or with the first request when ``from_first_request`` (a job that takes a
    while to start then still meets the whole outage)."""
    lock, start = threading.Lock(), [None if from_first_request else time.monotonic()]

    def choose(request: RecordedRequest, inner: FaultPlan) -> Reply | None:
        with lock:
            if start[0] is None:
                start[0] = time.monotonic()
            began = start[0]
        return inner(request) if time.monotonic() - began < seconds else None

    return _Plan(fault, choose)


def matching(predicate: Callable[[RecordedRequest], bool], fault: Reply | FaultPlan) -> FaultPlan:
    """``fault`` for the requests ``predicate`` accepts (it sees the head only, with
    an empty body, when the fault acts before the body)."""
    return _Plan(fault, lambda request, inner: inner(request) if predicate(request) else None)


def on_path(path: str, fault: Reply | FaultPlan) -> FaultPlan:
    """``fault`` for the requests to ``path`` (one REST stream's endpoint)."""
    return matching(lambda request: request.path == path, fault)
