"""The one delivery skeleton every sink DoFn runs on.

A destination supplies three things: how a batch becomes requests
(:meth:`DeliveryFn.requests`), how to open the stream's destination (its session
headers or client: :meth:`DeliveryFn.connect`) and how one request is attempted
(:meth:`DeliveryFn.attempt`). Everything that must behave the same for every
destination is written here once, so a sixth destination is one new module:

- the stream lookup (a stream removed since routing: its batch is parked,
  ``unknown_stream``, until a re-drive finds it again);
- the stream's circuit (``schemas/circuit.py``), shared by every instance, bundle
  and worker: a stream whose circuit is not closed has its requests parked
  without a call (the job's recovery step probes it and delivers the backlog);
- sending (``sinks/dispatch.py``): a bundle's batches go out stream beside
  stream, one after the other within a stream, each request within the stream
  budget and each batch within the policy's deadline; what overruns is parked
  and the bundle goes on;
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

Clients live from ``setup`` to ``teardown``, across bundles; the circuits live in
their store. Each element is one complete batch (grouped upstream, its state kept
by the runner), sent or parked whole before its bundle ends: ``finish_bundle``
waits for every batch of the bundle, or parks the ones over budget.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam import pvalue

from schemas.circuit import RESUMING, CircuitStore, parked_token
from schemas.delivery import (
    CREDENTIALS_UNAVAILABLE,
    DEADLINE_EXCEEDED,
    DESTINATION_REFUSED,
    FAILED,
    IN_FLIGHT,
    INVALID_CONFIGURATION,
    PARKED_STATUS,
    PERMANENT_FAILURE,
    REMOTE_ERROR,
    RETRIES_EXHAUSTED,
    SECRET_UNAVAILABLE,
    STREAM_DEACTIVATED,
    UNKNOWN_STREAM,
    UNREACHABLE,
    DeliveryResult,
)
from schemas.snapshots import current
from schemas.streams import DataStream, SecretPolicy, StreamConfig
from sinks.dispatch import OVERRUNS, BundleSender, Job
from sinks.outbound import DestinationRefusedError, OutboundGuard, Resolver, resolve_host
from sinks.outputs import DeliveryOutputs, count_items
from sinks.requests import Blocked, Request, Sent, Settled
from sinks.results import DeliveryCounters, Stopwatch
from sinks.retry import Attempt, Outcome, RetryPolicy, classify_open_failure
from sinks.secrets import SecretError, SecretResolver
from sinks.windows import WindowedGroup
from sinks.wire import InvalidConfigurationError

_LOG = logging.getLogger(__name__)


#: Not connected yet: a batch opens its destination once, at its first request.
NOT_OPEN: Any = object()


class DeliveryFn(DeliveryOutputs, beam.DoFn):
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

    #: Opens sealed secrets; None: a sealer with the environment's key (the
    #: workers'). The portal's "test destination" gives its own before ``setup``.
    sealer: Any = None
    #: How the guard resolves names; a test may replace it before ``setup``.
    resolver: Resolver = staticmethod(resolve_host)  # type: ignore[assignment]

    def __init__(self, policy: RetryPolicy, allow_insecure: bool = False,
                 secrets: SecretPolicy | None = None) -> None:
        self._policy = policy
        self._allow_insecure = allow_insecure
        self._secret_policy = secrets or SecretPolicy()
        # Pickled with the DoFn: every instance made from this sink shares the
        # circuits of one scope even without a location (schemas/circuit.py).
        self._circuit_scope = f"memory:{id(self)}:{time.time_ns()}"

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
        self._secrets = SecretResolver(self._secret_policy, self.sealer)
        self._circuits = CircuitStore(self._policy.circuit_location, self._policy.circuit_settings(),
                                      scope=self._circuit_scope)
        # What a thread is doing: a lane's tally and budget, a recovery probe.
        self._local = threading.local()
        self._guard = OutboundGuard(self._allow_insecure, self.resolver)
        self._beam_counters = DeliveryCounters(self.api_type)
        self._lanes = ThreadPoolExecutor(max_workers=self._policy.stream_concurrency,
                                         thread_name_prefix=f"{self.api_type}-lanes")
        self.open_clients()

    def teardown(self) -> None:
        """Never raises: a failing close must not hide what the worker was doing."""
        lanes = getattr(self, "_lanes", None)
        if lanes is not None:
            # Not waiting: a thread still holds an abandoned request until its
            # (budget-cut) timeout; it ends on its own.
            lanes.shutdown(wait=False)
        try:
            self.close_clients()
        except Exception:  # noqa: BLE001 - teardown is best effort by contract
            _LOG.warning("%s sink: closing its clients failed", self.api_type, exc_info=True)
        secrets = getattr(self, "_secrets", None)
        if secrets is not None:
            secrets.clear()

    @property
    def _counters(self) -> Any:
        """The step's counters on the bundle's thread, a lane's tally on a lane's."""
        tally = getattr(self._local, "tally", None)
        return tally if tally is not None else self._beam_counters

    def remaining_seconds(self) -> float | None:
        """What is left of the current request's budget on this thread, if any."""
        deadline = getattr(self._local, "deadline", None)
        return None if deadline is None else deadline - time.monotonic()

    def start_bundle(self) -> None:
        policy = self._policy
        self._bundle = BundleSender(self._lanes, policy.stream_budget_seconds, policy.budget_grace_seconds,
                                    4 * policy.stream_concurrency, self._local,
                                    release_overruns=policy.release_overrun_streams)

    def finish_bundle(self) -> Iterator[Any]:
        bundle, self._bundle = self._bundle, None
        yield from bundle.finish(self._beam_counters)

    def process(self, element: Any, config: StreamConfig, window: Any = beam.DoFn.WindowParam,
                pane: Any = beam.DoFn.PaneInfoParam, timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        """Dead letters now; the batch to its stream's lane (``sinks/dispatch.py``).
        Called outside a bundle (a DoFn test), the batch is sent on this thread.
        ``config``: a side input (batch) or a refreshing snapshot (streaming)."""
        config = current(config)
        group_window, group_pane = window, pane
        if isinstance(element, WindowedGroup):  # a per-stream window's pane (sinks/windows.py)
            element, group_window, group_pane = element.pair(), element.window, element.pane
        if getattr(self, "_bundle", None) is None:
            yield from self.deliver_now(element, config, group_window, group_pane)
            return
        outputs = self._prepared(element, config, group_window, group_pane)
        stream, requests = next(outputs)
        yield from outputs
        if stream is None or not requests:
            return
        self._bundle.submit(Job(
            stream.id,
            run=functools.partial(self._run, stream, requests),
            park=functools.partial(self._overran, stream, requests),
            window=window, timestamp=timestamp,
        ))
        yield from self._bundle.ready(self._beam_counters)
        yield from self._bundle.wait_below_limit(self._beam_counters)

    def deliver_now(self, element: Any, config: StreamConfig, window: Any, pane: Any,
                    probe: bool = False, single_attempt: bool = False) -> list[Any]:
        """A batch sent on this thread, within the budget: the recovery step's
        way in (``sinks/recovery.py``). ``probe``: sent whatever the circuit
        says, and the outcome left for the caller to record. ``single_attempt``
        (a probe of an open circuit): each request is tried once, without the
        policy's retries; the next probe is the retry."""
        outputs = self._prepared(element, config, window, pane)
        stream, requests = next(outputs)
        done = list(outputs)
        if stream is None or not requests:
            return done
        # A probe stops at its first failed request: the rest of the batch is
        # parked as it was, not tried request by request against a dead destination.
        self._local.probe = {"failed": None, "single_attempt": single_attempt} if probe else None
        try:
            return done + self._run(stream, requests)
        finally:
            self._local.probe = None

    def _run(self, stream: DataStream, requests: Sequence[Request]) -> list[Any]:
        """The batch, within the policy's deadline (each request within the stream budget)."""
        self._local.budget_end = time.monotonic() + self._policy.deadline_seconds
        try:
            outputs = list(self.deliver(stream, requests))
        finally:
            self._local.budget_end = None
        self._log_failures(stream, [o for o in outputs if isinstance(o, DeliveryResult)])
        return outputs

    def _overran(self, stream: DataStream, requests: Sequence[Request], in_flight: bool) -> list[Any]:
        """A batch the bundle stopped waiting for: parked, maybe delivered too
        (``in_flight``), or parked without a request (queued behind one)."""
        if not in_flight:
            return self._not_sent(stream.id, requests, Blocked(PARKED_STATUS, RETRIES_EXHAUSTED, DEADLINE_EXCEEDED,
                                                               None))
        if not getattr(self._local, "probe", False):
            self._circuits.record(stream.id, False, UNREACHABLE)
        return self._not_sent(stream.id, requests, Blocked(FAILED, RETRIES_EXHAUSTED, IN_FLIGHT, UNREACHABLE))

    def _prepared(self, element: Any, config: StreamConfig, window: Any, pane: Any) -> Iterator[Any]:
        """First ``(stream, requests to send)``, then the outputs already
        decided: dead letters, and the batch of a stream no longer configured."""
        stream_id = self.stream_id(element)
        stream = config.streams.get(stream_id)
        requests: list[Request] = []
        decided: list[Any] = []
        for output in self.requests(element, stream, window, pane):
            if isinstance(output, Request):
                requests.append(output)
            else:
                # Counted per API type, not with metrics.count_dead_letter: that
                # counter reconciles input records, and this document was already
                # counted as one (delivery dead letters are counted where the
                # sinks' outputs are joined).
                self._counters.dead_letters.inc()
                decided.append(output)
        if stream is None and requests:
            _LOG.warning("stream %s is not in the stream configuration; %d documents parked", stream_id,
                         count_items(requests))
            decided += self._not_sent(stream_id, requests, Blocked(FAILED, PERMANENT_FAILURE, UNKNOWN_STREAM, None))
            requests = []
        yield stream, requests
        yield from decided

    # ----------------------------------------------------------------- sending

    def deliver(self, stream: DataStream, requests: Sequence[Request]) -> Iterator[Any]:
        """The requests one after the other, in order, each within what is left
        of the batch's budget; each waits for the circuit."""
        connection = NOT_OPEN
        for index, request in enumerate(requests):
            left = self._budget_left()
            if left is not None and left <= 0:
                yield from self._over_budget(stream, requests[index:])
                return
            admitted = self._admit(stream, connection)
            if isinstance(admitted, Blocked):
                yield from self._not_sent(stream.id, requests[index:] if self.park_together else [request], admitted)
                if self.park_together:
                    return
                continue
            connection = admitted
            yield from self._sent(stream.id, request, self._send(stream.id, request, connection))

    def _over_budget(self, stream: DataStream, requests: Sequence[Request]) -> list[Any]:
        """The requests a batch had no budget left for: parked without a request;
        the batch counts as one failure of the stream (it is too slow)."""
        if not getattr(self._local, "probe", False):
            self._circuits.record(stream.id, False, UNREACHABLE)
        return self._not_sent(stream.id, requests, Blocked(PARKED_STATUS, RETRIES_EXHAUSTED, DEADLINE_EXCEEDED, None))

    def _admit(self, stream: DataStream, connection: Any) -> Any:
        """The connection to send the stream's next request with, or why it is
        :class:`Blocked`. A refusal or a missing secret deactivates the stream."""
        token = self._deactivated(stream)
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

    def _budget_left(self) -> float | None:
        end = getattr(self._local, "budget_end", None)
        return None if end is None else end - time.monotonic()

    def _send(self, stream_id: str, request: Request, connection: Any,
              deadline_seconds: float | None = None) -> Sent:
        """One request with the policy's retries, within the stream budget and
        what is left of the batch's deadline; records the outcome in the circuit
        (not for a probe: its caller does). Safe to call from a pool's threads
        (counts nothing): a sink sending a batch from its own pool passes the
        lane's batch deadline, job and probe flag on to them."""
        probe = getattr(self._local, "probe", None)
        job = getattr(self._local, "job", None)
        if job is not None:
            job.touch()
        deadline_seconds = min(self._policy.stream_budget_seconds,
                               self._policy.deadline_seconds if deadline_seconds is None else deadline_seconds)
        end = getattr(self._local, "budget_end", None)
        if end is not None:
            deadline_seconds = min(deadline_seconds, end - time.monotonic())
        watch = Stopwatch()
        self._local.deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
        policy = self._policy
        if probe and probe.get("single_attempt"):
            policy = dataclasses.replace(policy, max_attempts=1)
        try:
            outcome = policy.run(functools.partial(self.attempt, request, connection),
                                 deadline_seconds=deadline_seconds)
        finally:
            self._local.deadline = None
        # A failed request that used up its budget: the stream's next batches
        # hold no bundle (sinks/dispatch.py).
        OVERRUNS.record(stream_id, not outcome.ok and deadline_seconds is not None
                        and watch.elapsed_ms() >= 900 * deadline_seconds)
        if not probe:
            self._circuits.record(stream_id, outcome.ok, outcome.last.token, outcome.last.retryable)
        elif not outcome.ok:
            probe["failed"] = outcome.last.token or REMOTE_ERROR
        return Sent(outcome, watch.started_at, watch.elapsed_ms())

    def _deactivated(self, stream: DataStream) -> str | None:
        """The token the stream's documents are parked with, None if they are
        sent (by a probe: until one of its requests failed). A stream resumed in
        the portal whose circuit has not acted on it yet (the recovery step's
        next tick does) is parked too: its kept backlog goes first."""
        probe = getattr(self._local, "probe", None)
        if probe:
            return probe["failed"]
        circuit = self._circuits.get(stream.id)
        if self._policy.resume_backlog_first and stream.resumed_at and circuit.resumed_at != stream.resumed_at:
            circuit = self._circuits.get(stream.id, fresh=True)
            if circuit.resumed_at != stream.resumed_at:
                return RESUMING
        return parked_token(circuit)

    def _deactivate(self, stream_id: str, token: str) -> None:
        if not getattr(self._local, "probe", False):
            self._circuits.open(stream_id, token)

