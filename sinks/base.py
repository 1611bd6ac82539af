"""The one delivery skeleton every sink DoFn runs on.

A destination supplies three things: how a batch becomes requests
(:meth:`DeliveryFn.requests`), how to open the stream's destination (its session
headers or client: :meth:`DeliveryFn.connect`) and how one request is attempted
(:meth:`DeliveryFn.attempt`). Everything that must behave the same for every
destination is written here once, so a sixth destination is one new module:

- the stream lookup (a stream removed since routing: its batch is parked,
  ``unknown_stream``, until a re-drive finds it again);
- the per-stream circuit (:class:`~sinks.retry.StreamCircuit`): a deactivated
  stream's requests are parked without a call;
- the outbound rules (``sinks/outbound.py``) for destinations given by URL (REST,
  DataDog, an AWS ``endpoint_url``): one :class:`~sinks.outbound.OutboundGuard` per
  DoFn checks the URL when a batch opens its stream and is the one the sink's
  connections ask for the checked address to connect to; and the secrets, resolved
  on the worker where the job's :class:`~schemas.streams.SecretPolicy` allows: a
  refused URL or an unreadable or refused secret parks the request and
  deactivates the stream (``destination_refused``, ``credentials_unavailable``),
  and so does anything else opening the stream raises (a secret no header can
  carry: ``invalid_configuration``, ``sinks/wire.py``);
- the failure policy (:class:`~sinks.retry.RetryPolicy`: what retries, how long);
- the one place a :class:`~schemas.delivery.DeliveryResult` and a parked batch are
  built, and the delivery counters, counted on the bundle's thread (Beam's metrics
  container is per thread, so a sink sending from a pool counts here, after).

Nothing raises out of ``process`` for a destination failure: a raised exception
would replay the bundle, every other stream's documents with it, indefinitely in
streaming. Each document ends in exactly one of a delivered result, a parked batch
or a dead letter.

Clients and circuit live from ``setup`` to ``teardown``, across bundles: the circuit
is this worker's memory of a failing stream. There is no bundle buffer to flush:
each element is one complete batch (grouped upstream, its state kept by the
runner), sent or parked whole before ``process`` returns.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam import pvalue

from schemas.delivery import (
    CREDENTIALS_UNAVAILABLE,
    DELIVERED,
    DESTINATION_REFUSED,
    FAILED,
    INVALID_CONFIGURATION,
    PARKED_STATUS,
    PARTIAL,
    PERMANENT_FAILURE,
    RETRIES_EXHAUSTED,
    SECRET_UNAVAILABLE,
    STREAM_DEACTIVATED,
    UNKNOWN_STREAM,
    DeliveryResult,
)
from schemas.streams import DataStream, SecretPolicy, StreamConfig
from sinks.outbound import DestinationRefusedError, OutboundGuard, Resolver, resolve_host
from sinks.parking import parked
from sinks.requests import Blocked, Request, Sent, Settled
from sinks.results import DeliveryCounters, Stopwatch
from sinks.retry import Attempt, Outcome, RetryPolicy, StreamCircuit, classify_open_failure
from sinks.secrets import SecretError, SecretResolver
from sinks.wire import InvalidConfigurationError

_LOG = logging.getLogger(__name__)


#: Not connected yet: a batch opens its destination once, at its first request.
NOT_OPEN: Any = object()


class DeliveryFn(beam.DoFn):
    """``(key, batch)`` -> one :class:`DeliveryResult` per request sent (and per
    group of requests parked without one), parked batches and dead letters."""

    #: the API type of the results, parked batches and counters
    api_type: ClassVar[str] = ""
    #: True: a batch is one unit, so the requests it cannot send (its stream
    #: deactivated or refused) are parked as one batch with one result; False:
    #: each request (a file, a payload, a ``PutRecords``) is parked on its own.
    park_together: ClassVar[bool] = False
    #: Whether documents parked without a request because their stream is
    #: deactivated count as failed (``failed_documents``, in the result and the
    #: counter) besides parked. True for every sink but DataDog, whose results
    #: have always counted only what a request failed to deliver; the tests pin
    #: both contracts, so the difference is kept here, named, in one place.
    parked_count_as_failed: ClassVar[bool] = True

    #: How the guard resolves names; a test may replace it before ``setup``.
    resolver: Resolver = staticmethod(resolve_host)  # type: ignore[assignment]

    def __init__(self, policy: RetryPolicy, allow_insecure: bool = False,
                 secrets: SecretPolicy | None = None) -> None:
        self._policy = policy
        self._allow_insecure = allow_insecure
        self._secret_policy = secrets or SecretPolicy()

    # ----------------------------------------------------------------- what a sink supplies

    def stream_id(self, element: Any) -> str:
        """The stream of a batch: the key, or its first item."""
        return element[0][0] if isinstance(element[0], tuple) else element[0]

    def requests(self, element: Any, stream: DataStream | None, window: Any, pane: Any
                 ) -> Iterable[Request | pvalue.TaggedOutput]:
        """The batch as requests, in sending order, and dead letters of documents
        no request can carry. ``stream`` is None when it is no longer configured."""
        raise NotImplementedError

    def guarded_url(self, stream: DataStream) -> str | None:
        """The URL the outbound rules must allow before anything is sent to it;
        None for destinations not given by URL."""
        return None

    def connect(self, stream: DataStream) -> Any:
        """What :meth:`attempt` sends with (credentials, a client); raises
        :class:`SecretError` when a secret cannot be read."""
        raise NotImplementedError

    def attempt(self, request: Request, connection: Any) -> Attempt:
        """One attempt of one request, classified; never raises for a destination failure."""
        raise NotImplementedError

    def settle(self, request: Request, outcome: Outcome) -> Settled:
        """All or nothing; a destination that accepts part of a request overrides this."""
        if outcome.ok:
            redelivered = len(request.items) if outcome.maybe_delivered_twice else 0
            return Settled(len(request.items), request.size, redelivered, ())
        return Settled(0, 0, 0, request.items)

    def open_clients(self) -> None:
        """Create the worker's clients (a session, a client cache)."""

    def close_clients(self) -> None:
        """Close what :meth:`open_clients` created (may raise: teardown logs it)."""

    # ----------------------------------------------------------------- lifecycle

    def setup(self) -> None:
        self._secrets = SecretResolver(self._secret_policy)
        self._circuit = StreamCircuit(self._policy.deactivate_after)
        # Sinks that send from a thread pool record outcomes from its threads.
        self._circuit_lock = threading.Lock()
        self._guard = OutboundGuard(self._allow_insecure, self.resolver)
        self._counters = DeliveryCounters(self.api_type)
        self.open_clients()

    def teardown(self) -> None:
        """Never raises: a failing close must not hide what the worker was doing."""
        try:
            self.close_clients()
        except Exception:  # noqa: BLE001 - teardown is best effort by contract
            _LOG.warning("%s sink: closing its clients failed", self.api_type, exc_info=True)
        secrets = getattr(self, "_secrets", None)
        if secrets is not None:
            secrets.clear()

    def process(self, element: Any, config: StreamConfig, window: Any = beam.DoFn.WindowParam,
                pane: Any = beam.DoFn.PaneInfoParam) -> Iterator[Any]:
        stream_id = self.stream_id(element)
        stream = config.streams.get(stream_id)
        requests: list[Request] = []
        for output in self.requests(element, stream, window, pane):
            if isinstance(output, Request):
                requests.append(output)
            else:
                # Counted per API type, not with metrics.count_dead_letter: that
                # counter reconciles input records, and this document was already
                # counted as one (delivery dead letters are counted where the
                # sinks' outputs are joined).
                self._counters.dead_letters.inc()
                yield output
        if not requests:
            return
        if stream is None:
            _LOG.warning("stream %s is not in the stream configuration; %d documents parked", stream_id,
                         _count(requests))
            yield from self._not_sent(stream_id, requests, Blocked(FAILED, PERMANENT_FAILURE, UNKNOWN_STREAM, None))
            return
        outputs = list(self.deliver(stream, requests))
        self._log_failures(stream, [o for o in outputs if isinstance(o, DeliveryResult)])
        yield from outputs

    # ----------------------------------------------------------------- sending

    def deliver(self, stream: DataStream, requests: Sequence[Request]) -> Iterator[Any]:
        """The requests one after the other, in order; each waits for the circuit."""
        connection = NOT_OPEN
        for index, request in enumerate(requests):
            admitted = self._admit(stream, connection)
            if isinstance(admitted, Blocked):
                yield from self._not_sent(stream.id, requests[index:] if self.park_together else [request], admitted)
                if self.park_together:
                    return
                continue
            connection = admitted
            yield from self._sent(stream.id, request, self._send(stream.id, request, connection))

    def _admit(self, stream: DataStream, connection: Any) -> Any:
        """The connection to send the stream's next request with, or why it is
        :class:`Blocked`. A refusal or a missing secret deactivates the stream."""
        token = self._deactivated(stream.id)
        if token is not None:
            return Blocked(PARKED_STATUS, STREAM_DEACTIVATED, None, token)
        if connection is not NOT_OPEN:
            return connection
        url = self.guarded_url(stream)
        refusal = self._guard.refusal(url) if url is not None else None
        if refusal is not None:
            _LOG.warning("stream %s: destination refused, nothing sent: %s", stream.id, refusal)
            self._deactivate(stream.id, DESTINATION_REFUSED)
            return Blocked(FAILED, PERMANENT_FAILURE, DESTINATION_REFUSED, DESTINATION_REFUSED)
        try:
            return self.connect(stream)
        except DestinationRefusedError as err:  # a client that cannot be pinned to checked addresses
            _LOG.warning("stream %s: destination refused, nothing sent: %s", stream.id, err)
            self._deactivate(stream.id, DESTINATION_REFUSED)
            return Blocked(FAILED, PERMANENT_FAILURE, DESTINATION_REFUSED, DESTINATION_REFUSED)
        except SecretError as err:  # the message names the reference, never a value
            _LOG.warning("stream %s: %s; nothing sent", stream.id, err)
            self._deactivate(stream.id, CREDENTIALS_UNAVAILABLE)
            return Blocked(FAILED, PERMANENT_FAILURE, SECRET_UNAVAILABLE, CREDENTIALS_UNAVAILABLE)
        except Exception as err:  # noqa: BLE001 - whatever opening a stream raises is its failure, not the job's
            failure = classify_open_failure(err)
            # Our own messages name a setting, never its value; another's could hold a secret.
            detail = str(err) if isinstance(err, InvalidConfigurationError) else type(err).__name__
            _LOG.warning("stream %s: its destination cannot be opened (%s); nothing sent", stream.id, detail)
            self._deactivate(stream.id, failure.token or INVALID_CONFIGURATION)
            return Blocked(FAILED, PERMANENT_FAILURE, failure.error, failure.token or INVALID_CONFIGURATION)

    def _send(self, stream_id: str, request: Request, connection: Any,
              deadline_seconds: float | None = None) -> Sent:
        """One request with the policy's retries; records the outcome in the
        circuit. Safe to call from a pool's threads (counts nothing)."""
        watch = Stopwatch()
        outcome = self._policy.run(functools.partial(self.attempt, request, connection),
                                   deadline_seconds=deadline_seconds)
        with self._circuit_lock:
            self._circuit.record(stream_id, outcome)
        return Sent(outcome, watch.started_at, watch.elapsed_ms())

    def _deactivated(self, stream_id: str) -> str | None:
        with self._circuit_lock:
            return self._circuit.deactivated(stream_id)

    def _deactivate(self, stream_id: str, token: str) -> None:
        with self._circuit_lock:
            self._circuit.deactivate(stream_id, token)

    # ----------------------------------------------------------------- outputs

    def _sent(self, stream_id: str, request: Request, sent: Sent) -> list[Any]:
        """The result of a request that was sent, and its parked batch when some
        of it was not delivered. "requests" counts attempts; "documents" and
        "bytes" what was delivered."""
        outcome, last = sent.outcome, sent.outcome.last
        settled = self.settle(request, outcome)
        self._counters.requests.inc(outcome.attempts)
        self._counters.documents.inc(settled.delivered)
        self._counters.bytes.inc(settled.delivered_bytes)
        self._counters.redelivered.inc(settled.redelivered)
        if not settled.undelivered:
            return [self._result(stream_id, [request], DELIVERED, last.status_code, None, None, outcome.attempts,
                                 0, settled.redelivered, sent, 0)]
        undelivered = len(settled.undelivered)
        self._counters.failed_documents.inc(undelivered)
        reason = RETRIES_EXHAUSTED if last.retryable else PERMANENT_FAILURE
        return [
            self._result(stream_id, [request], PARTIAL if settled.delivered else FAILED, last.status_code,
                         last.error, last.token, outcome.attempts, undelivered, settled.redelivered, sent,
                         undelivered),
            parked(stream_id, self.api_type, reason, settled.undelivered, error=last.error, token=last.token,
                   status_code=last.status_code, attempts=outcome.attempts),
        ]

    def _not_sent(self, stream_id: str, requests: Sequence[Request], blocked: Blocked) -> list[Any]:
        """One result and one parked batch for requests never attempted."""
        items = [item for request in requests for item in request.items]
        failed = len(items) if self.parked_count_as_failed or blocked.status != PARKED_STATUS else 0
        self._counters.failed_documents.inc(failed)
        return [
            self._result(stream_id, requests, blocked.status, None, blocked.error, blocked.token, 0, len(items), 0,
                         None, failed),
            parked(stream_id, self.api_type, blocked.reason, items, error=blocked.error, token=blocked.token),
        ]

    def _result(self, stream_id: str, requests: Sequence[Request], status: str, status_code: int | None,
                error: str | None, token: str | None, attempts: int, parked_documents: int, redelivered: int,
                sent: Sent | None, failed_documents: int) -> DeliveryResult:
        """The one place a result is built. ``sent`` gives the time the request
        started and took; requests parked without one start now and take no time."""
        return DeliveryResult(
            stream_id=stream_id,
            api_type=self.api_type,
            documents=_count(requests),
            bytes=sum(request.size for request in requests),
            status=status,
            status_code=status_code,
            error=error,
            failed_documents=failed_documents,
            started_at=sent.started_at if sent is not None else Stopwatch().started_at,
            duration_ms=sent.duration_ms if sent is not None else 0,
            target=requests[0].target,
            attempts=attempts,
            token=token,
            redelivered_documents=redelivered,
            parked_documents=parked_documents,
        )

    def _log_failures(self, stream: DataStream, results: list[DeliveryResult]) -> None:
        """One line per batch, not per request: a dead destination must not flood
        the logs with one line per document."""
        failed = [r for r in results if not r.ok]
        if failed:
            first = failed[0]
            _LOG.warning(
                "stream %s: %d of %d %s requests to %s not delivered, %d documents parked "
                "(first: %s, status %s, error %s, token %s, %d attempts)",
                stream.id, len(failed), len(results), self.api_type, stream.describe_destination(),
                sum(r.parked_documents for r in failed), first.status, first.status_code, first.error, first.token,
                first.attempts,
            )


def _count(requests: Sequence[Request]) -> int:
    return sum(len(r.items) for r in requests)
