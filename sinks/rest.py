"""REST API and REST API bulk delivery: customers' own HTTP endpoints.

- ``rest_api``: one document a call, the JSON object as the body.
- ``rest_api_bulk``: a JSON array of 1 to ``batching.bulk_size`` documents a call
  (emnify's range is 1 to 10,000, default 3,000), and at most ``max_request_bytes``.

Both take the routed ``(stream_id, (kind, document))`` elements and group them per
stream with ``GroupIntoBatches`` (count and time bounded, so a quiet stream is
still flushed after ``max_buffering_seconds``; a bounded input is grouped with
``GroupByKey`` instead, see :class:`BatchPerStream`). Grouping by stream id is what keeps
two streams of one organisation from ever sharing a request, and what lets the
DoFn resolve the stream's destination and credential once per batch.

What counts as delivered: a 2xx answer only. A 3xx is a failure, not something to
follow: the session never follows redirects (``sinks/http.py``), because following
one would send documents and the auth header somewhere the customer did not
configure. Timeouts, refused connections and TLS errors are failures too, with the
exception class as the error token. In this step nothing is retried: every request
yields one :class:`~sinks.results.DeliveryResult` and processing goes on; the
retry policy, parking and stream status consume those results later. No
destination failure raises out of ``process``: a raised exception would replay the
bundle, and with it every other stream's documents, indefinitely in streaming.

Dead letters: a bulk document whose JSON cannot fit ``max_request_bytes`` even alone
is never sendable, so it goes to the dead-letter output (``record_too_large``)
instead of failing forever. A single-document REST call has no such limit here.

Credentials: ``rest.auth_header`` gets the value of ``rest.auth_secret``, resolved
on the worker by a :class:`~sinks.secrets.SecretResolver`. The value only ever
lives in the request headers: results, dead letters and log lines carry the URL
(credential-free by config validation), status codes and error tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
import requests
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from schemas.streams import BULK_SIZE_RANGE, DataStream, RestDestination, StreamConfig
from sinks.http import SessionFactory, Timeouts, new_session
from sinks.ordering import order_key
from sinks.results import (
    DEAD_LETTERS,
    DELIVERED,
    FAILED,
    DeliveryResult,
    SinkOutputs,
    Stopwatch,
    chunked,
    describe_error,
    too_large_dead_letter,
)
from sinks.secrets import SecretError, SecretResolver
from transforms import metrics
from transforms.batching import BatchPerStream

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

#: Error tokens of failures that are not exceptions.
SECRET_UNAVAILABLE = "secret_unavailable"
UNKNOWN_STREAM = "unknown_stream"
REDIRECT_NOT_FOLLOWED = "redirect_not_followed"
HTTP_ERROR = "http_error"


class _Sent(NamedTuple):
    """The outcome of one HTTP request, before it becomes a DeliveryResult."""

    status_code: int | None
    error: str | None
    started_at: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None


def mount_pool(session: requests.Session, pool_size: int) -> None:
    """Give ``session`` a connection pool per host as large as the number of
    threads that use it, so concurrent requests do not open and discard extra
    connections (urllib3 warns "Connection pool is full" otherwise)."""
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)


class _RestDoFnBase(beam.DoFn):
    """Session, secrets and counters shared by both REST sinks.

    The session (and its connection pool) lives from ``setup`` to ``teardown``,
    across bundles. There is no bundle buffer to reset or flush: the batching is
    :class:`BatchPerStream` upstream (count and time bounded, with its state kept
    by the runner, so nothing is lost with a failed bundle), and each ``process``
    call sends one complete batch and emits its results before returning.
    """

    api_type = ""

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts) -> None:
        self._session_factory = session_factory
        self._timeouts = timeouts

    def setup(self) -> None:
        self._session = self._session_factory()
        self._secrets = SecretResolver()
        self._requests = Metrics.counter(metrics.NAMESPACE, metrics.delivery(self.api_type, "requests"))
        self._delivered = Metrics.counter(metrics.NAMESPACE, metrics.delivery(self.api_type, "documents"))
        self._failed = Metrics.counter(metrics.NAMESPACE, metrics.delivery(self.api_type, "failed_documents"))
        self._bytes = Metrics.counter(metrics.NAMESPACE, metrics.delivery(self.api_type, "bytes"))
        self._dead_letters = Metrics.counter(metrics.NAMESPACE, metrics.delivery(self.api_type, "dead_letters"))

    def teardown(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None
        secrets = getattr(self, "_secrets", None)
        if secrets is not None:
            secrets.clear()

    # ----------------------------------------------------------------- helpers

    def _headers(self, destination: RestDestination) -> CaseInsensitiveDict:
        """The request headers: the stream's own, then Content-Type and the auth
        header (ours win over a configured header of the same name).

        Raises :class:`SecretError` when the credential cannot be read."""
        headers = CaseInsensitiveDict(destination.headers)
        headers["Content-Type"] = "application/json"
        if destination.auth_header is not None and destination.auth_secret is not None:
            headers[destination.auth_header] = self._secrets.resolve(destination.auth_secret)
        return headers

    def _send(self, destination: RestDestination, headers: Mapping[str, str], body: bytes) -> _Sent:
        """One request; never raises for a destination failure."""
        watch = Stopwatch()
        try:
            response = self._session.request(
                destination.method,
                destination.url,
                data=body,
                headers=headers,
                timeout=self._timeouts.as_requests(),
                allow_redirects=False,
            )
        except requests.RequestException as err:
            return _Sent(None, describe_error(err), watch.started_at, watch.elapsed_ms())
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            error = None
        elif 300 <= status < 400:
            error = REDIRECT_NOT_FOLLOWED
        else:
            error = HTTP_ERROR
        return _Sent(status, error, watch.started_at, watch.elapsed_ms())

    def _result(self, stream_id: str, target: str, documents: int, size: int, sent: _Sent) -> DeliveryResult:
        # Counted here, on the bundle's thread (never in the pool's): "requests"
        # counts attempts, "documents" and "bytes" what was delivered.
        self._requests.inc()
        if sent.ok:
            self._delivered.inc(documents)
            self._bytes.inc(size)
        else:
            self._failed.inc(documents)
        return DeliveryResult(
            stream_id=stream_id,
            api_type=self.api_type,
            documents=documents,
            bytes=size,
            status=DELIVERED if sent.ok else FAILED,
            status_code=sent.status_code,
            error=sent.error,
            failed_documents=0 if sent.ok else documents,
            started_at=sent.started_at,
            duration_ms=sent.duration_ms,
            target=target,
        )

    def _not_sent(self, stream_id: str, target: str, sizes: Iterable[tuple[int, int]], error: str
                  ) -> Iterator[DeliveryResult]:
        """Failed results for requests that could not be attempted (no credential,
        stream gone from the config): one per request that would have been sent,
        so the counts add up exactly as if they had failed on the wire."""
        watch = Stopwatch()
        for documents, size in sizes:
            yield self._result(stream_id, target, documents, size, _Sent(None, error, watch.started_at, 0))

    def _stream(self, stream_id: str, config: StreamConfig) -> DataStream | None:
        try:
            return config[stream_id]
        except KeyError:
            return None

    def _log_failures(self, stream: DataStream, results: list[DeliveryResult]) -> None:
        """One line per batch, not per request: a dead endpoint must not flood the
        logs with one line per document."""
        failed = [r for r in results if not r.ok]
        if failed:
            first = failed[0]
            _LOG.warning(
                "stream %s: %d of %d %s requests to %s failed (first: status %s, error %s)",
                stream.id, len(failed), len(results), self.api_type, stream.describe_destination(),
                first.status_code, first.error,
            )


class _RestWriteFn(_RestDoFnBase):
    """One document a request, a batch's requests sent concurrently from a thread
    pool of ``concurrency`` threads created in ``setup``."""

    api_type = REST_API

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, concurrency: int) -> None:
        super().__init__(session_factory, timeouts)
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

    def process(self, batch: tuple[str, Iterable[tuple[str, dict[str, Any]]]], config: StreamConfig
                ) -> Iterator[DeliveryResult]:
        stream_id, items = batch
        # Dispatched in time order: with concurrent requests the arrival order is
        # not guaranteed, but it stays close to the documents' own order.
        ordered = sorted(items, key=lambda item: order_key(*item))
        bodies = [orjson.dumps(document) for _, document in ordered]
        stream = self._stream(stream_id, config)
        if stream is None:
            _LOG.warning("stream %s is not in the stream configuration; %d documents not sent", stream_id,
                         len(bodies))
            yield from self._not_sent(stream_id, "", ((1, len(body)) for body in bodies), UNKNOWN_STREAM)
            return
        destination = stream.destination
        try:
            headers = self._headers(destination)
        except SecretError as err:
            _LOG.warning("stream %s: %s; %d documents not sent", stream_id, err, len(bodies))
            yield from self._not_sent(stream_id, destination.url, ((1, len(b)) for b in bodies), SECRET_UNAVAILABLE)
            return
        outcomes = self._pool.map(lambda body: self._send(destination, headers, body), bodies)
        results = [
            self._result(stream_id, destination.url, 1, len(body), sent)
            for body, sent in zip(bodies, outcomes, strict=True)
        ]
        self._log_failures(stream, results)
        yield from results


class _RestBulkWriteFn(_RestDoFnBase):
    """A JSON array of documents a request; a batch's requests are sent one after
    the other, in time order, so each endpoint's documents arrive in order."""

    api_type = REST_API_BULK

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, max_request_bytes: int) -> None:
        super().__init__(session_factory, timeouts)
        if max_request_bytes < 3:
            raise ValueError(f"max_request_bytes must hold at least one document, got {max_request_bytes}")
        self._max_request_bytes = max_request_bytes

    def process(self, batch: tuple[str, Iterable[tuple[str, dict[str, Any]]]], config: StreamConfig
                ) -> Iterator[Any]:
        stream_id, items = batch
        stream = self._stream(stream_id, config)
        bulk_size = stream.batching.bulk_size if stream is not None else BULK_BATCH_SIZE
        # Serialized once: the bytes measured for the limit are the bytes sent.
        sendable: list[bytes] = []
        for kind, document in sorted(items, key=lambda item: order_key(*item)):
            body = orjson.dumps(document)
            if len(body) + 2 > self._max_request_bytes:  # + "[" and "]"
                # Counted per API type, not with metrics.count_dead_letter: that
                # counter reconciles input records, and this document was
                # already counted as one (delivery dead letters are counted
                # where the sinks' outputs are joined).
                self._dead_letters.inc()
                yield too_large_dead_letter(kind, document, len(body), self._max_request_bytes, self.api_type)
                continue
            sendable.append(body)
        # Each document costs its bytes plus a separator (one "," or the "]");
        # the "[" is taken off the limit.
        chunks = chunked(sendable, bulk_size, self._max_request_bytes - 1, len, overhead=1)
        bodies = [(len(chunk), b"[" + b",".join(chunk) + b"]") for chunk in chunks]
        if not bodies:
            return
        sizes = [(count, len(body)) for count, body in bodies]
        if stream is None:
            _LOG.warning("stream %s is not in the stream configuration; %d documents not sent", stream_id,
                         len(sendable))
            yield from self._not_sent(stream_id, "", sizes, UNKNOWN_STREAM)
            return
        destination = stream.destination
        try:
            headers = self._headers(destination)
        except SecretError as err:
            _LOG.warning("stream %s: %s; %d documents not sent", stream_id, err, len(sendable))
            yield from self._not_sent(stream_id, destination.url, sizes, SECRET_UNAVAILABLE)
            return
        results = [
            self._result(stream_id, destination.url, count, len(body), self._send(destination, headers, body))
            for count, body in bodies
        ]
        self._log_failures(stream, results)
        yield from results


class WriteToRestApi(beam.PTransform):
    """Routed ``rest_api`` elements -> :class:`SinkOutputs` (one result a document).

    ``streams`` is the ``AsSingleton`` side input of the :class:`StreamConfig`.
    Batches are per stream id, at most :data:`REST_BATCH_SIZE` documents or
    ``max_buffering_seconds`` old; a batch's documents go out over ``concurrency``
    parallel connections. The dead-letter output exists for a uniform interface and
    stays empty.
    """

    def __init__(self, streams: pvalue.AsSideInput, *, session_factory: SessionFactory = new_session,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, max_buffering_seconds: float = 5, concurrency: int = 8) -> None:
        super().__init__()
        self._streams = streams
        self._fn = _RestWriteFn(session_factory, timeouts, concurrency)
        self._max_buffering_seconds = max_buffering_seconds

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        outputs = (
            routed
            | "BatchPerStream" >> BatchPerStream(REST_BATCH_SIZE, self._max_buffering_seconds)
            | "Send" >> beam.ParDo(self._fn, self._streams).with_outputs(DEAD_LETTERS, main="results")
        )
        return SinkOutputs(results=outputs.results, dead_letters=outputs[DEAD_LETTERS])


class WriteToRestApiBulk(beam.PTransform):
    """Routed ``rest_api_bulk`` elements -> :class:`SinkOutputs` (one result a
    JSON-array request; too-large documents as dead letters).

    Groups of up to :data:`BULK_BATCH_SIZE` documents per stream id (or
    ``max_buffering_seconds`` old) are split in time order into requests of at most
    the stream's ``batching.bulk_size`` documents and ``max_request_bytes`` bytes.
    """

    def __init__(self, streams: pvalue.AsSideInput, *, session_factory: SessionFactory = new_session,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, max_buffering_seconds: float = 5,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        super().__init__()
        self._streams = streams
        self._fn = _RestBulkWriteFn(session_factory, timeouts, max_request_bytes)
        self._max_buffering_seconds = max_buffering_seconds

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        outputs = (
            routed
            | "BatchPerStream" >> BatchPerStream(BULK_BATCH_SIZE, self._max_buffering_seconds)
            | "Send" >> beam.ParDo(self._fn, self._streams).with_outputs(DEAD_LETTERS, main="results")
        )
        return SinkOutputs(results=outputs.results, dead_letters=outputs[DEAD_LETTERS])
