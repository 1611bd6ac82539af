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
  (each request's retries get what is left of it), so a slow endpoint cannot hold
  the worker for a deadline per document. Once the stream's circuit opens (a
  permanent failure, or ``deactivate_after`` failed requests in a row) or the budget
  is spent, the batch's documents not yet started are parked without a request, as
  one batch; requests in flight finish.
- ``rest_api_bulk``: the requests (chunks) of a batch go out one after the other,
  each retried as a unit within the policy's attempts and deadline; once the
  circuit opens, the remaining chunks are parked without a request, as one batch.

A request that fails for good is parked with its documents (``retries_exhausted``
or ``permanent_failure``), and its result says ``failed`` with the last status code,
error and status token. A stream that is already deactivated on this worker, whose
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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
import requests
from apache_beam import pvalue
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from schemas.delivery import (
    CREDENTIALS_UNAVAILABLE,
    DELIVERED,
    DESTINATION_REFUSED,
    FAILED,
    PARKED_STATUS,
    PERMANENT_FAILURE,
    RETRIES_EXHAUSTED,
    STREAM_DEACTIVATED,
    DeliveryResult,
)
from schemas.streams import BULK_SIZE_RANGE, DataStream, RestDestination, StreamConfig
from sinks.batching import BatchPerStream
from sinks.http import SessionFactory, Timeouts, classified_request, new_session
from sinks.ordering import order_key
from sinks.outbound import SIGNATURE_HEADER, OutboundGuard, sign
from sinks.parking import PARKED, parked
from sinks.results import DEAD_LETTERS, DeliveryCounters, SinkOutputs, Stopwatch, chunked, too_large_dead_letter
from sinks.retry import Attempt, Outcome, RetryPolicy, StreamCircuit
from sinks.secrets import SecretError, SecretResolver

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

#: Error codes of batches parked without a request (besides DESTINATION_REFUSED).
SECRET_UNAVAILABLE = "secret_unavailable"
UNKNOWN_STREAM = "unknown_stream"
#: The rest of a ``rest_api`` batch whose time budget ran out before it started.
DEADLINE_EXCEEDED = "deadline_exceeded"

Item = tuple[str, dict[str, Any]]  # (kind, document), as routed


class _Prepared(NamedTuple):
    """One document (or one bulk chunk) ready to send: the items as received, for
    parking, and the body."""

    items: tuple[Item, ...]
    body: bytes


class _Credentials(NamedTuple):
    headers: CaseInsensitiveDict
    signing_secret: str


def credentials_of(destination: RestDestination, secrets: SecretResolver) -> _Credentials:
    """The stream's own headers, then Content-Type and the auth header (ours win
    over a configured header of the same name), and the signing secret.

    Raises :class:`SecretError` when a credential cannot be read."""
    headers = CaseInsensitiveDict(destination.headers)
    headers["Content-Type"] = "application/json"
    if destination.auth_header is not None and destination.auth_secret is not None:
        headers[destination.auth_header] = secrets.resolve(destination.auth_secret)
    return _Credentials(headers, secrets.resolve(destination.signing_secret))


class _Sent(NamedTuple):
    """How one request went after the policy's retries, before it becomes a result."""

    outcome: Outcome
    started_at: str
    duration_ms: int


def mount_pool(session: requests.Session, pool_size: int) -> None:
    """Give ``session`` a connection pool per host as large as the number of
    threads that use it, so concurrent requests do not open and discard extra
    connections (urllib3 warns "Connection pool is full" otherwise)."""
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)


def signed_request(session: requests.Session, method: str, url: str, body: bytes, headers: Mapping[str, str],
                   signing_secret: str, timeouts: Timeouts) -> Attempt:
    """One request with the body signed now (a fresh timestamp for every attempt),
    classified for the retry policy. Shared by the sinks and the bench's baseline
    loop, so both send exactly alike."""
    request_headers = CaseInsensitiveDict(headers)
    request_headers[SIGNATURE_HEADER] = sign(signing_secret, body)
    return classified_request(session, method, url, body, request_headers, timeouts)


class _RestDoFnBase(beam.DoFn):
    """Session, secrets, circuit, outbound guard and counters shared by both REST sinks.

    The session (and its connection pool) lives from ``setup`` to ``teardown``,
    across bundles, and so does the :class:`StreamCircuit`: it is this worker's
    memory of a failing stream. There is no bundle buffer to reset or flush: the
    batching is :class:`BatchPerStream` upstream (count and time bounded, with its
    state kept by the runner, so nothing is lost with a failed bundle), and each
    ``process`` call sends one complete batch and emits its outputs before returning.
    """

    api_type = ""

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, policy: RetryPolicy,
                 allow_insecure: bool) -> None:
        self._session_factory = session_factory
        self._timeouts = timeouts
        self._policy = policy
        self._allow_insecure = allow_insecure

    def setup(self) -> None:
        self._session = self._session_factory()
        self._secrets = SecretResolver()
        self._circuit = StreamCircuit(self._policy.deactivate_after)
        # The rest_api sink records outcomes from its pool's threads.
        self._circuit_lock = threading.Lock()
        self._guard = OutboundGuard(self._allow_insecure)
        self._counters = DeliveryCounters(self.api_type)


    def teardown(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None
        secrets = getattr(self, "_secrets", None)
        if secrets is not None:
            secrets.clear()

    # ----------------------------------------------------------------- before sending

    def _stream(self, stream_id: str, config: StreamConfig) -> DataStream | None:
        try:
            return config[stream_id]
        except KeyError:
            return None

    def _deactivated(self, stream_id: str) -> str | None:
        with self._circuit_lock:
            return self._circuit.deactivated(stream_id)

    def _credentials(self, destination: RestDestination) -> _Credentials:
        return credentials_of(destination, self._secrets)

    def _open(self, stream_id: str, stream: DataStream | None, prepared: Sequence[_Prepared]
              ) -> _Credentials | list[Any]:
        """The credentials to send the batch with, or, when it must not be sent at
        all, its outputs: one result and one parked batch for all of it."""
        if stream is None:  # removed from the config since routing: parked until a re-drive finds it
            _LOG.warning("stream %s is not in the stream configuration; %d documents parked", stream_id,
                         _count(prepared))
            return self._not_sent(stream_id, "", prepared, FAILED, PERMANENT_FAILURE, UNKNOWN_STREAM, None)
        destination: RestDestination = stream.destination  # type: ignore[assignment]
        token = self._deactivated(stream_id)
        if token is not None:
            _LOG.info("stream %s is deactivated (%s); %d documents parked", stream_id, token, _count(prepared))
            return self._not_sent(stream_id, destination.url, prepared, PARKED_STATUS, STREAM_DEACTIVATED, None,
                                  token)
        refusal = self._guard.refusal(destination.url)
        if refusal is not None:
            self._deactivate(stream_id, DESTINATION_REFUSED)
            _LOG.warning("stream %s: destination refused: %s; %d documents parked", stream_id, refusal,
                         _count(prepared))
            return self._not_sent(stream_id, destination.url, prepared, FAILED, PERMANENT_FAILURE,
                                  DESTINATION_REFUSED, DESTINATION_REFUSED)
        try:
            return self._credentials(destination)
        except SecretError as err:  # the message names the reference, never a value
            self._deactivate(stream_id, CREDENTIALS_UNAVAILABLE)
            _LOG.warning("stream %s: %s; %d documents parked", stream_id, err, _count(prepared))
            return self._not_sent(stream_id, destination.url, prepared, FAILED, PERMANENT_FAILURE,
                                  SECRET_UNAVAILABLE, CREDENTIALS_UNAVAILABLE)

    def _deactivate(self, stream_id: str, token: str) -> None:
        with self._circuit_lock:
            self._circuit.deactivate(stream_id, token)

    # ----------------------------------------------------------------- sending

    def _attempt(self, destination: RestDestination, credentials: _Credentials, body: bytes
                 ) -> Callable[[], Attempt]:
        """One request, classified; signed anew for each attempt (a fresh timestamp)."""

        def attempt() -> Attempt:
            return signed_request(self._session, destination.method, destination.url, body,
                                  credentials.headers, credentials.signing_secret, self._timeouts)

        return attempt

    def _send(self, stream_id: str, destination: RestDestination, credentials: _Credentials, body: bytes,
              deadline_seconds: float | None = None) -> _Sent:
        """One request with the policy's retries; records the outcome in the
        circuit. Safe to call from the pool's threads (counts nothing)."""
        watch = Stopwatch()
        outcome = self._policy.run(self._attempt(destination, credentials, body), deadline_seconds=deadline_seconds)
        with self._circuit_lock:
            self._circuit.record(stream_id, outcome)
        return _Sent(outcome, watch.started_at, watch.elapsed_ms())

    # ----------------------------------------------------------------- outputs

    def _sent(self, stream_id: str, target: str, prepared: _Prepared, sent: _Sent) -> list[Any]:
        """The result of a request that was sent, and its parked batch when it
        failed. Counted here, on the bundle's thread (never in the pool's):
        "requests" counts attempts, "documents" and "bytes" what was delivered."""
        outcome, last = sent.outcome, sent.outcome.last
        documents, size = len(prepared.items), len(prepared.body)
        self._counters.requests.inc(outcome.attempts)
        if outcome.ok:
            redelivered = documents if outcome.maybe_delivered_twice else 0
            self._counters.documents.inc(documents)
            self._counters.bytes.inc(size)
            self._counters.redelivered.inc(redelivered)
            return [self._result(stream_id, target, documents, size, DELIVERED, status_code=last.status_code,
                                 attempts=outcome.attempts, redelivered=redelivered, sent=sent)]
        self._counters.failed_documents.inc(documents)
        reason = RETRIES_EXHAUSTED if last.retryable else PERMANENT_FAILURE
        return [
            self._result(stream_id, target, documents, size, FAILED, status_code=last.status_code,
                         error=last.error, token=last.token, attempts=outcome.attempts, parked_documents=documents,
                         sent=sent),
            parked(stream_id, self.api_type, reason, prepared.items, error=last.error, token=last.token,
                   status_code=last.status_code, attempts=outcome.attempts),
        ]

    def _not_sent(self, stream_id: str, target: str, prepared: Sequence[_Prepared], status: str, reason: str,
                  error: str | None, token: str | None) -> list[Any]:
        """One result and one parked batch for requests never attempted."""
        items = [item for p in prepared for item in p.items]
        self._counters.failed_documents.inc(len(items))
        return [
            self._result(stream_id, target, len(items), sum(len(p.body) for p in prepared), status, error=error,
                         token=token, attempts=0, parked_documents=len(items)),
            parked(stream_id, self.api_type, reason, items, error=error, token=token),
        ]

    def _result(self, stream_id: str, target: str, documents: int, size: int, status: str, *,
                status_code: int | None = None, error: str | None = None, token: str | None = None,
                attempts: int = 1, redelivered: int = 0, parked_documents: int = 0,
                sent: _Sent | None = None) -> DeliveryResult:
        """``sent`` gives the time the request started and took; a batch parked
        without a request starts now and takes no time."""
        started_at = sent.started_at if sent is not None else Stopwatch().started_at
        return DeliveryResult(
            stream_id=stream_id,
            api_type=self.api_type,
            documents=documents,
            bytes=size,
            status=status,
            status_code=status_code,
            error=error,
            failed_documents=parked_documents,
            started_at=started_at,
            duration_ms=sent.duration_ms if sent is not None else 0,
            target=target,
            attempts=attempts,
            token=token,
            redelivered_documents=redelivered,
            parked_documents=parked_documents,
        )

    def _log_failures(self, stream: DataStream, results: list[DeliveryResult]) -> None:
        """One line per batch, not per request: a dead endpoint must not flood the
        logs with one line per document."""
        failed = [r for r in results if r.status == FAILED]
        if failed:
            first = failed[0]
            _LOG.warning(
                "stream %s: %d of %d %s requests to %s failed (first: status %s, error %s, %s, %d attempts); "
                "%d documents parked",
                stream.id, len(failed), len(results), self.api_type, stream.describe_destination(),
                first.status_code, first.error, first.token, first.attempts, sum(r.parked_documents for r in results),
            )


def _count(prepared: Sequence[_Prepared]) -> int:
    return sum(len(p.items) for p in prepared)


def _results(outputs: Iterable[Any]) -> list[DeliveryResult]:
    return [o for o in outputs if isinstance(o, DeliveryResult)]


class _RestWriteFn(_RestDoFnBase):
    """One document a request, a batch's requests sent concurrently from a thread
    pool of ``concurrency`` threads created in ``setup``, within one time budget."""

    api_type = REST_API

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, concurrency: int,
                 policy: RetryPolicy = DEFAULT_POLICY, allow_insecure: bool = False) -> None:
        super().__init__(session_factory, timeouts, policy, allow_insecure)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._concurrency = concurrency

    def setup(self) -> None:
        super().setup()
        mount_pool(self._session, self._concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="rest-api")

    def teardown(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._pool = None
        super().teardown()

    def process(self, batch: tuple[str, Iterable[Item]], config: StreamConfig) -> Iterator[Any]:
        stream_id, items = batch
        # Dispatched in time order: with concurrent requests the arrival order is
        # not guaranteed, but it stays close to the documents' own order.
        prepared = [_Prepared((item,), orjson.dumps(item[1])) for item in sorted(items, key=lambda i: order_key(*i))]
        if not prepared:
            return
        stream = self._stream(stream_id, config)
        credentials = self._open(stream_id, stream, prepared)
        if not isinstance(credentials, _Credentials):
            yield from credentials
            return
        destination: RestDestination = stream.destination  # type: ignore[union-attr]
        started = time.monotonic()

        def send(document: _Prepared) -> _Sent | str:
            """The request's outcome, or why it was not started."""
            if self._deactivated(stream_id) is not None:
                return STREAM_DEACTIVATED
            remaining = self._policy.deadline_seconds - (time.monotonic() - started)
            if remaining <= 0:
                return DEADLINE_EXCEEDED
            return self._send(stream_id, destination, credentials, document.body, remaining)

        outputs: list[Any] = []
        skipped: dict[str, list[_Prepared]] = {}
        for document, sent in zip(prepared, self._pool.map(send, prepared), strict=True):
            if isinstance(sent, str):
                skipped.setdefault(sent, []).append(document)
            else:
                outputs.extend(self._sent(stream_id, destination.url, document, sent))
        if STREAM_DEACTIVATED in skipped:
            token = self._deactivated(stream_id)
            outputs.extend(self._not_sent(stream_id, destination.url, skipped[STREAM_DEACTIVATED], PARKED_STATUS,
                                          STREAM_DEACTIVATED, None, token))
        if DEADLINE_EXCEEDED in skipped:
            # No token: a spent budget says nothing new about the stream (the
            # requests that used it up have their own results).
            outputs.extend(self._not_sent(stream_id, destination.url, skipped[DEADLINE_EXCEEDED], PARKED_STATUS,
                                          RETRIES_EXHAUSTED, DEADLINE_EXCEEDED, None))
        self._log_failures(stream, _results(outputs))  # type: ignore[arg-type]
        if skipped:
            _LOG.warning("stream %s: %d documents parked without a request (%s)", stream_id,
                         sum(len(v) for v in skipped.values()), ", ".join(sorted(skipped)))
        yield from outputs


class _RestBulkWriteFn(_RestDoFnBase):
    """A JSON array of documents a request; a batch's requests are sent one after
    the other, in time order, so each endpoint's documents arrive in order."""

    api_type = REST_API_BULK

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, max_request_bytes: int,
                 policy: RetryPolicy = DEFAULT_POLICY, allow_insecure: bool = False) -> None:
        super().__init__(session_factory, timeouts, policy, allow_insecure)
        if max_request_bytes < 3:
            raise ValueError(f"max_request_bytes must hold at least one document, got {max_request_bytes}")
        self._max_request_bytes = max_request_bytes

    def process(self, batch: tuple[str, Iterable[Item]], config: StreamConfig) -> Iterator[Any]:
        stream_id, items = batch
        stream = self._stream(stream_id, config)
        bulk_size = stream.batching.bulk_size if stream is not None else BULK_BATCH_SIZE
        # Serialized once: the bytes measured for the limit are the bytes sent.
        sendable: list[tuple[Item, bytes]] = []
        for kind, document in sorted(items, key=lambda item: order_key(*item)):
            body = orjson.dumps(document)
            if len(body) + 2 > self._max_request_bytes:  # + "[" and "]"
                # Counted per API type, not with metrics.count_dead_letter: that
                # counter reconciles input records, and this document was
                # already counted as one (delivery dead letters are counted
                # where the sinks' outputs are joined).
                self._counters.dead_letters.inc()
                yield too_large_dead_letter(kind, document, len(body), self._max_request_bytes, self.api_type,
                                            stream_id=stream_id)
                continue
            sendable.append(((kind, document), body))
        # Each document costs its bytes plus a separator (one "," or the "]");
        # the "[" is taken off the limit.
        chunks = [
            _Prepared(tuple(item for item, _ in chunk), b"[" + b",".join(body for _, body in chunk) + b"]")
            for chunk in chunked(sendable, bulk_size, self._max_request_bytes - 1, lambda s: len(s[1]), overhead=1)
        ]
        if not chunks:
            return
        credentials = self._open(stream_id, stream, chunks)
        if not isinstance(credentials, _Credentials):
            yield from credentials
            return
        destination: RestDestination = stream.destination  # type: ignore[union-attr]
        outputs: list[Any] = []
        for index, chunk in enumerate(chunks):
            token = self._deactivated(stream_id)
            if token is not None:
                rest = chunks[index:]
                _LOG.warning("stream %s is deactivated (%s); %d documents parked without a request", stream_id,
                             token, _count(rest))
                outputs.extend(self._not_sent(stream_id, destination.url, rest, PARKED_STATUS, STREAM_DEACTIVATED,
                                              None, token))
                break
            sent = self._send(stream_id, destination, credentials, chunk.body)
            outputs.extend(self._sent(stream_id, destination.url, chunk, sent))
        self._log_failures(stream, _results(outputs))  # type: ignore[arg-type]
        yield from outputs


class WriteToRestApi(beam.PTransform):
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
                 policy: RetryPolicy = DEFAULT_POLICY, allow_insecure: bool = False, chunked: bool = False) -> None:
        super().__init__()
        self._streams = streams
        self._fn = _RestWriteFn(session_factory, timeouts, concurrency, policy, allow_insecure)
        self._max_buffering_seconds = max_buffering_seconds
        self._chunked = chunked

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        outputs = (
            routed
            | "BatchPerStream" >> BatchPerStream(REST_BATCH_SIZE, self._max_buffering_seconds, self._chunked)
            | "Send" >> beam.ParDo(self._fn, self._streams).with_outputs(DEAD_LETTERS, PARKED, main="results")
        )
        return SinkOutputs(results=outputs.results, dead_letters=outputs[DEAD_LETTERS], parked=outputs[PARKED])


class WriteToRestApiBulk(beam.PTransform):
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
                 allow_insecure: bool = False, chunked: bool = False) -> None:
        super().__init__()
        self._streams = streams
        self._fn = _RestBulkWriteFn(session_factory, timeouts, max_request_bytes, policy, allow_insecure)
        self._max_buffering_seconds = max_buffering_seconds
        self._chunked = chunked

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        outputs = (
            routed
            | "BatchPerStream" >> BatchPerStream(BULK_BATCH_SIZE, self._max_buffering_seconds, self._chunked)
            | "Send" >> beam.ParDo(self._fn, self._streams).with_outputs(DEAD_LETTERS, PARKED, main="results")
        )
        return SinkOutputs(results=outputs.results, dead_letters=outputs[DEAD_LETTERS], parked=outputs[PARKED])
