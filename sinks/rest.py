"""REST API and REST API bulk delivery: customers' own HTTP endpoints.

- ``rest_api``: one document a call, the JSON object as the body.
- ``rest_api_bulk``: a JSON array of 1 to ``batching.bulk_size`` documents a call
  (emnify's range is 1 to 10,000, default 3,000), and at most ``max_request_bytes``.

Both take the routed ``(stream_id, (kind, document))`` elements and group them per
stream with ``GroupIntoBatches`` (count and time bounded, so a quiet stream is
still flushed after ``max_buffering_seconds``; a bounded input is grouped with
``GroupByKey`` instead, see :class:`BatchPerStream`). Grouping by stream id is what keeps
two streams of one organisation from ever sharing a request, and what lets the
DoFn resolve the stream's destination and credentials once per batch.

Failures follow the one policy of ``sinks/retry.py``. What counts as delivered: a
2xx answer only. Retried: 408, 425, 429 and 5xx (waiting ``Retry-After`` when the
endpoint sends one), timeouts, refused connections and resets. Not retried: a 3xx
(the session never follows redirects, ``sinks/http.py``: following one would send
documents, the auth header and the signature somewhere the customer did not
configure), 401/403 (``auth_failed``), 404/410 (``not_found``), other 4xx
(``payload_rejected``), TLS errors. Every attempt is a new request with a fresh
signature.

- ``rest_api``: the documents of a batch go out over ``concurrency`` connections
  and share one time budget, the policy's ``deadline_seconds`` for the whole batch
  (each request's retries get what is left of it, and at most the stream budget,
  ``sinks/dispatch.py``), so a slow endpoint cannot hold the worker for a deadline
  per document. Once the stream's circuit opens (a
  permanent failure, or ``deactivate_after`` failed requests in a row) or the budget
  is spent, the batch's documents not yet started are parked without a request, as
  one batch; requests in flight finish.
- ``rest_api_bulk``: the requests (chunks) of a batch go out one after the other,
  each retried as a unit within the stream budget and what is left of the
  batch's deadline; once the
  circuit opens, the remaining chunks are parked without a request, as one batch.

A request that fails for good is parked with its documents (``retries_exhausted``
or ``permanent_failure``), and its result says ``failed`` with the last status code,
error and status token. A stream whose circuit is open (``schemas/circuit.py``), whose
URL the outbound rules refuse (``sinks/outbound.py``: https only, no raw IP or
internal address unless ``allow_insecure``), or whose credentials cannot be read,
is parked without a request. Documents a retry delivered after an attempt that may
have reached the endpoint (a 5xx, a read timeout, a reset) are counted as
``redelivered_documents``: receivers drop duplicates by ``id``. No destination
failure raises out of ``process``: a raised exception would replay the bundle, and
with it every other stream's documents, indefinitely in streaming. Each document
ends in exactly one of: a delivered result, a parked batch, a dead letter.

Dead letters: a bulk document whose JSON cannot fit ``max_request_bytes`` even alone
is never sendable, so it goes to the dead-letter output (``record_too_large``)
instead of being parked forever. A single-document REST call has no such limit here.

Credentials: ``rest.auth_header`` gets the value of ``rest.auth_secret``, and
:data:`~sinks.outbound.SIGNATURE_HEADER` an HMAC-SHA256 of a timestamp and the body
keyed with ``rest.signing_secret``; both secrets are resolved on the worker by a
:class:`~sinks.secrets.SecretResolver`. The values only ever live in the request
headers: results, parked batches, dead letters and log lines carry the URL
(credential-free by config validation), status codes and error tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import orjson
import requests
from apache_beam import pvalue
from requests.structures import CaseInsensitiveDict

from schemas.delivery import DEADLINE_EXCEEDED, PARKED_STATUS, RETRIES_EXHAUSTED, STREAM_DEACTIVATED
from schemas.streams import BULK_SIZE_RANGE, DataStream, RestDestination, SecretPolicy
from sinks.base import NOT_OPEN
from sinks.batching import BatchingSink
from sinks.http import HttpDeliveryFn, SessionFactory, Timeouts, classified_request, new_session, pin_session
from sinks.ordering import order_key
from sinks.outbound import SIGNATURE_HEADER, OutboundGuard, sign
from sinks.requests import Blocked, Item, Request, Sent
from sinks.results import chunked, too_large_dead_letter
from sinks.retry import Attempt, RetryPolicy, classify_exception
from sinks.secrets import SecretResolver
from sinks.wire import check_header_values, check_signing_secret

_LOG = logging.getLogger(__name__)

REST_API, REST_API_BULK = "rest_api", "rest_api_bulk"

#: Documents per ``GroupIntoBatches`` batch of the single-document sink: enough
#: to keep ``concurrency`` connections busy, small enough to bound the memory
#: and the latency of one ``process`` call.
REST_BATCH_SIZE = 500
#: The bulk sink groups up to the largest allowed bulk size, then splits each group
#: per the stream's own ``bulk_size``: one grouping serves every stream.
BULK_BATCH_SIZE = BULK_SIZE_RANGE[1]
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_POLICY = RetryPolicy()


class _Credentials(NamedTuple):
    headers: CaseInsensitiveDict
    signing_secret: str


def credentials_of(destination: RestDestination, secrets: SecretResolver) -> _Credentials:
    """The stream's own headers, then Content-Type and the auth header (ours win
    over a configured header of the same name), and the signing secret.

    Raises :class:`SecretError` when a credential cannot be read, and
    :class:`~sinks.wire.InvalidConfigurationError` when one cannot be sent (a
    header value outside Latin-1, a line break in it): found here, when the
    stream is opened, instead of deep in http.client on every attempt."""
    headers = CaseInsensitiveDict(destination.headers)
    headers["Content-Type"] = "application/json"
    sources: dict[str, str] = {}
    if destination.auth_header is not None and destination.auth_secret is not None:
        headers[destination.auth_header] = secrets.resolve(destination.auth_secret)
        sources[destination.auth_header.lower()] = f"rest.auth_secret ({destination.auth_secret.describe()})"
    check_header_values(headers, sources)
    signing_secret = secrets.resolve(destination.signing_secret)
    check_signing_secret(signing_secret, f"rest.signing_secret ({destination.signing_secret.describe()})")
    return _Credentials(headers, signing_secret)


def mount_pool(session: requests.Session, pool_size: int, guard: OutboundGuard) -> None:
    """Give ``session`` a connection pool per host as large as the number of
    threads that use it, so concurrent requests do not open and discard extra
    connections (urllib3 warns "Connection pool is full" otherwise), connecting
    only to the addresses ``guard`` checked."""
    pin_session(session, guard, pool_size)


def signed_request(session: requests.Session, method: str, url: str, body: bytes, headers: Mapping[str, str],
                   signing_secret: str, timeouts: Timeouts) -> Attempt:
    """One request with the body signed now (a fresh timestamp for every attempt),
    classified for the retry policy. Shared by the sinks and the bench's baseline
    loop, so both send exactly alike."""
    request_headers = CaseInsensitiveDict(headers)
    try:
        request_headers[SIGNATURE_HEADER] = sign(signing_secret, body)
    except Exception as err:  # noqa: BLE001 - part of the request: its failure, not the job's (sinks/retry.py)
        return classify_exception(err)
    return classified_request(session, method, url, body, request_headers, timeouts)


class _Connection(NamedTuple):
    destination: RestDestination
    credentials: _Credentials


class _RestDoFnBase(HttpDeliveryFn):
    """What both REST sinks share on top of the delivery skeleton: the stream's
    URL is checked by the outbound rules, its credentials resolved once per batch,
    and a batch that cannot be sent is parked as one (``park_together``)."""

    park_together = True

    def guarded_url(self, stream: DataStream) -> str:
        return stream.destination.url  # type: ignore[union-attr]

    def connect(self, stream: DataStream) -> _Connection:
        destination: RestDestination = stream.destination  # type: ignore[assignment]
        return _Connection(destination, credentials_of(destination, self._secrets))

    def attempt(self, request: Request, connection: _Connection) -> Attempt:
        """One request, signed anew for each attempt (a fresh timestamp)."""
        destination, credentials = connection
        return signed_request(self._session, destination.method, destination.url, request.body,
                              credentials.headers, credentials.signing_secret, self._timeouts)


def _url(stream: DataStream | None) -> str:
    return stream.destination.url if stream is not None else ""  # type: ignore[union-attr]


class _RestWriteFn(_RestDoFnBase):
    """One document a request, a batch's requests sent concurrently from a thread
    pool of ``concurrency`` threads created in ``setup``, within one time budget."""

    api_type = REST_API

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, concurrency: int,
                 policy: RetryPolicy = DEFAULT_POLICY, allow_insecure: bool = False,
                 secrets: SecretPolicy | None = None) -> None:
        super().__init__(session_factory, timeouts, policy, allow_insecure, secrets)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._concurrency = concurrency
        self.pool_size = concurrency  # one connection per sending thread

    def open_clients(self) -> None:
        super().open_clients()
        self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="rest-api")

    def close_clients(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True)
        super().close_clients()

    def requests(self, element: tuple[str, Iterable[Item]], stream: DataStream | None, window: Any,
                 pane: Any) -> Iterator[Request]:
        # Dispatched in time order: with concurrent requests the arrival order is
        # not guaranteed, but it stays close to the documents' own order.
        for item in sorted(element[1], key=lambda i: order_key(*i)):
            body = orjson.dumps(item[1])
            yield Request((item,), len(body), _url(stream), body)

    def deliver(self, stream: DataStream, requests: Sequence[Request]) -> Iterator[Any]:
        """Concurrently, within the batch's budget; once the circuit opens or the
        budget is spent, the documents not yet started are parked as one batch."""
        connection = self._admit(stream, NOT_OPEN)
        if isinstance(connection, Blocked):
            yield from self._not_sent(stream.id, requests, connection)
            return
        started = time.monotonic()
        lane = {name: getattr(self._local, name, None) for name in ("budget_end", "probe", "job")}

        def send(request: Request) -> Sent | str:
            """The request's outcome, or why it was not started (on a pool thread:
            the lane's deadline, job and probe flag are passed on)."""
            for name, value in lane.items():
                setattr(self._local, name, value)
            if self._deactivated(stream) is not None:
                return STREAM_DEACTIVATED
            remaining = self._policy.deadline_seconds - (time.monotonic() - started)
            if lane["budget_end"] is not None:
                remaining = min(remaining, lane["budget_end"] - time.monotonic())
            if remaining <= 0:
                return DEADLINE_EXCEEDED
            return self._send(stream.id, request, connection, remaining)

        skipped: dict[str, list[Request]] = {}
        for request, sent in zip(requests, self._pool.map(send, requests), strict=True):
            if isinstance(sent, str):
                skipped.setdefault(sent, []).append(request)
            else:
                yield from self._sent(stream.id, request, sent)
        if STREAM_DEACTIVATED in skipped:
            token = self._deactivated(stream)
            yield from self._not_sent(stream.id, skipped[STREAM_DEACTIVATED],
                                      Blocked(PARKED_STATUS, STREAM_DEACTIVATED, None, token))
        if DEADLINE_EXCEEDED in skipped:
            # No token: a spent budget says nothing new about the stream (the
            # requests that used it up have their own results).
            yield from self._not_sent(stream.id, skipped[DEADLINE_EXCEEDED],
                                      Blocked(PARKED_STATUS, RETRIES_EXHAUSTED, DEADLINE_EXCEEDED, None))
        if skipped:
            _LOG.warning("stream %s: %d documents parked without a request (%s)", stream.id,
                         sum(len(v) for v in skipped.values()), ", ".join(sorted(skipped)))


class _RestBulkWriteFn(_RestDoFnBase):
    """A JSON array of documents a request; a batch's requests are sent one after
    the other, in time order, so each endpoint's documents arrive in order."""

    api_type = REST_API_BULK

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, max_request_bytes: int,
                 policy: RetryPolicy = DEFAULT_POLICY, allow_insecure: bool = False,
                 secrets: SecretPolicy | None = None) -> None:
        super().__init__(session_factory, timeouts, policy, allow_insecure, secrets)
        if max_request_bytes < 3:
            raise ValueError(f"max_request_bytes must hold at least one document, got {max_request_bytes}")
        self._max_request_bytes = max_request_bytes

    def requests(self, element: tuple[str, Iterable[Item]], stream: DataStream | None, window: Any,
                 pane: Any) -> Iterator[Request | pvalue.TaggedOutput]:
        stream_id, items = element
        bulk_size = stream.batching.bulk_size if stream is not None else BULK_BATCH_SIZE
        # Serialized once: the bytes measured for the limit are the bytes sent.
        sendable: list[tuple[Item, bytes]] = []
        for kind, document in sorted(items, key=lambda item: order_key(*item)):
            body = orjson.dumps(document)
            if len(body) + 2 > self._max_request_bytes:  # + "[" and "]"
                yield too_large_dead_letter(kind, document, len(body), self._max_request_bytes, self.api_type,
                                            stream_id=stream_id)
                continue
            sendable.append(((kind, document), body))
        # Each document costs its bytes plus a separator (one "," or the "]");
        # the "[" is taken off the limit.
        for chunk in chunked(sendable, bulk_size, self._max_request_bytes - 1, lambda s: len(s[1]), overhead=1):
            body = b"[" + b",".join(body for _, body in chunk) + b"]"
            yield Request(tuple(item for item, _ in chunk), len(body), _url(stream), body)


class WriteToRestApi(BatchingSink):
    """Routed ``rest_api`` elements -> :class:`SinkOutputs` (one result a document
    sent, one per batch parked without a request; parked batches).

    ``streams`` is the ``AsSingleton`` side input of the :class:`StreamConfig`.
    Batches are per stream id, at most :data:`REST_BATCH_SIZE` documents or
    ``max_buffering_seconds`` old; a batch's documents go out over ``concurrency``
    parallel connections within one ``policy.deadline_seconds`` budget.
    ``allow_insecure`` lifts the outbound rules (http, loopback) for development
    only. The dead-letter output exists for a uniform interface and stays empty.
    ``chunked``: the input is a chunked bounded run's ``(stream_id, (count,
    packed [(kind, document), ...]))`` chunks (``transforms/routing.py``).
    """

    def __init__(self, streams: pvalue.AsSideInput, *, session_factory: SessionFactory = new_session,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, max_buffering_seconds: float = 5, concurrency: int = 8,
                 policy: RetryPolicy = DEFAULT_POLICY, allow_insecure: bool = False, chunked: bool = False,
                 secrets: SecretPolicy | None = None) -> None:
        super().__init__(streams, _RestWriteFn(session_factory, timeouts, concurrency, policy, allow_insecure,
                                               secrets), REST_BATCH_SIZE, max_buffering_seconds, chunked)


class WriteToRestApiBulk(BatchingSink):
    """Routed ``rest_api_bulk`` elements -> :class:`SinkOutputs` (one result a
    JSON-array request, one per batch parked without a request; too-large documents
    as dead letters; parked batches).

    Groups of up to :data:`BULK_BATCH_SIZE` documents per stream id (or
    ``max_buffering_seconds`` old) are split in time order into requests of at most
    the stream's ``batching.bulk_size`` documents and ``max_request_bytes`` bytes,
    each retried within ``policy``. ``chunked`` as for :class:`WriteToRestApi`.
    """

    def __init__(self, streams: pvalue.AsSideInput, *, session_factory: SessionFactory = new_session,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, max_buffering_seconds: float = 5,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, policy: RetryPolicy = DEFAULT_POLICY,
                 allow_insecure: bool = False, chunked: bool = False, secrets: SecretPolicy | None = None) -> None:
        super().__init__(streams, _RestBulkWriteFn(session_factory, timeouts, max_request_bytes, policy,
                                                   allow_insecure, secrets),
                         BULK_BATCH_SIZE, max_buffering_seconds, chunked)
