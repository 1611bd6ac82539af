"""Recovery without an operator: probe open circuits, deliver the backlog first.

A streaming job runs :class:`RecoverStreams` beside its sinks. At most every
``recovery_interval_seconds`` (ticks of a ``PeriodicImpulse``; on the DirectRunner
the refresh subscription's ticks) it looks at the circuits that are not closed
(``schemas/circuit.py``) and, for each stream of the current configuration:

- ``open`` with its probe due: takes the stream (a lease, so no other worker and
  no manual re-drive works on it at once) and sends the oldest parked batch of
  the stream as the probe, through the stream's own sink (same requests,
  credentials, outbound rules and failure policy as live data, within the
  stream budget). If it gets through, the circuit goes ``recovering``; if not,
  the circuit opens again with the next probe twice as far away.
- ``recovering``: delivers the parked batches in the order they were parked,
  oldest first, while the sinks keep parking live documents behind them; when
  none is left, the circuit closes and live data flows again. For a while after
  (``drain_seconds``) batches parked by workers that had not seen the change yet
  are delivered too.

Only batches parked because the destination failed, or because the stream was
paused, are delivered here (:data:`RESUMABLE_REASONS`), and only for streams
that are active; a history hold's wait for ``pipelines.historic``. A stream
activated after a pause, or restarted after an error, in the portal
(``DataStream.resumed_at``, read at each refresh) has its circuit set
recovering (open: probed now) once per such change: its kept backlog is
delivered first, live documents parked behind it, as after an outage. A batch is deleted from
the park store once all its documents are delivered; what fails again stays
(or, partly delivered, is parked anew with what is left, and then deleted).

Streams are worked on side by side, and a tick starts no new batch after its
budget (one stream budget): a large backlog is delivered over several ticks, and
the job's other steps are held for about a budget at most (the DirectRunner runs
every step on one thread). A stream whose circuit is still closed but whose last
batch failed (a destination that hangs, resets, throttles or answers 5xx) is
left to its live batches for the first probe's delay (or until its circuit
opens): re-sending its parked batch at every tick would try a failing
destination again at once and hold every other stream for up to a budget each
time. A probe is one attempt, not the policy's retries: the next probe, twice
as far away, is its retry, and a destination that fails fast costs the other
steps no backoff.

Counts: documents delivered here count as the stream's ``recovered``; those
parked by this same run also as ``unparked``, so a run's reconciliation reads
routed = delivered + parked - unparked + not deliverable. A batch parked while
its request was still in flight (``in_flight_at_budget``) may have been
delivered then: its documents count as redelivered ("maybe twice").
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from schemas import metrics
from schemas.circuit import CLOSED, HALF_OPEN, OPEN, RECOVERING, CircuitState, CircuitStore
from schemas.delivery import DELIVERED, IN_FLIGHT, RECOVERABLE_REASONS, STREAM_PAUSED, DeliveryResult
from schemas.snapshots import RefreshingSnapshot, current
from schemas.streams import DataStream, StreamConfig
from schemas.timestamps import now_iso
from sinks.base import DeliveryFn
from sinks.dispatch import Tally
from sinks.ordering import document_time
from sinks.parking import PARKED, ParkedBatch, ParkStore
from sinks.results import DEAD_LETTERS

_LOG = logging.getLogger(__name__)

DEFAULT_RECOVERY_INTERVAL_SECONDS = 5
#: What the recovery step delivers of an active stream's parked batches: what
#: failed, and what was kept while the stream was paused (it is active again).
RESUMABLE_REASONS = RECOVERABLE_REASONS | {STREAM_PAUSED}
#: When each recovery step (by the scope made at its construction) last ran,
#: in this process: instances may be made per bundle.
_LAST_RUN: dict[str, float] = {}
_LAST_RUN_LOCK = threading.Lock()


@dataclass(frozen=True)
class RecoveredPane:
    """The pane a recovered batch is sent in: the first, named after its batch
    (the S3 sink names the file after it, so it never overwrites the window's
    other files)."""

    recovered: str
    index: int = 0
    is_first: bool = True
    is_last: bool = True


def _window(start_seconds: int, size_seconds: int) -> IntervalWindow:
    return IntervalWindow(Timestamp(start_seconds), Timestamp(start_seconds + size_seconds))


def sink_elements(stream: DataStream, batch: ParkedBatch) -> list[tuple[Any, Any]]:
    """(element, window) as the stream's sink takes them, for a parked batch:
    one element for the batching sinks, one per kind and rotation window for
    S3, one per metrics window for DataDog."""
    if stream.api_type in ("rest_api", "rest_api_bulk", "aws_kinesis"):
        return [((stream.id, list(batch.documents)), GlobalWindow())]
    batching = stream.batching
    size = batching.rotation_seconds if stream.api_type == "aws_s3" else batching.metrics_interval_seconds
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for kind, document in batch.documents:
        moment = int(document_time(kind, document).timestamp())
        groups.setdefault((kind, moment - moment % size), []).append(document)
    elements = []
    for (kind, start), documents in sorted(groups.items()):
        key = (stream.id, kind, size) if stream.api_type == "aws_s3" else stream.id
        elements.append(((key, documents), _window(start, size)))
    return elements


class _RecoverFn(beam.DoFn):
    """tick -> delivery results of probes and drained backlog (main output),
    dead letters (``dead_letters``)."""

    def __init__(self, fns: dict[str, DeliveryFn], park_location: str, circuit_location: str | None,
                 budget_seconds: float, interval_seconds: float) -> None:
        self._fns = fns
        self._interval_seconds = interval_seconds
        self._scope = f"{circuit_location}|{time.time_ns()}"
        self._park_location = park_location
        self._circuit_location = circuit_location
        self._budget_seconds = budget_seconds
        # Batches parked from now on are this run's (module docstring, counts).
        self._started_at = now_iso()

    def setup(self) -> None:
        for fn in self._fns.values():
            fn.setup()
        policy = next(iter(self._fns.values()))._policy
        self._first_probe_seconds = policy.probe_initial_seconds
        self._circuits = CircuitStore(self._circuit_location, policy.circuit_settings(),
                                      scope=next(iter(self._fns.values()))._circuit_scope)
        self._parks = ParkStore(self._park_location)
        self._owner = f"recovery-{uuid.uuid4().hex[:12]}"
        # Streams are probed side by side: a tick waits for the slowest probe
        # (one stream budget), not for the sum of them.
        self._pool = ThreadPoolExecutor(max_workers=policy.stream_concurrency, thread_name_prefix="recovery")
        self._local = threading.local()

    def teardown(self) -> None:
        self._pool.shutdown(wait=False)
        for fn in self._fns.values():
            fn.teardown()

    def process(self, tick: Any, config: StreamConfig | RefreshingSnapshot) -> Iterator[Any]:
        config = current(config)
        now = time.monotonic()
        with _LAST_RUN_LOCK:  # ticks may come more often than the interval (module docstring)
            if now - _LAST_RUN.get(self._scope, -1e9) < self._interval_seconds * 0.9:
                return
            _LAST_RUN[self._scope] = now
        deadline = now + self._budget_seconds
        self._resume(config)
        work = []
        for circuit in self._circuits.streams_needing_attention():
            stream = config.streams.get(circuit.stream_id)
            if stream is None or stream.state != "active" or stream.api_type not in self._fns:
                continue
            if circuit.state == CLOSED and not circuit.draining(time.time(), self._first_probe_seconds):
                # Its last batch failed moments ago (CircuitState.draining): live
                # batches tell first, and the parked one is tried again once the
                # failure is a first probe's delay old.
                continue
            work.append(self._pool.submit(self._recover_counted, stream, circuit, config, deadline))
        for future in work:  # each is bounded by its budgets
            outputs, tallies, counts = future.result()
            for api_type, tally in tallies.items():
                tally.apply(self._fns[api_type]._beam_counters)
            for stream_id, measure, value in counts:
                if value:
                    Metrics.counter(metrics.NAMESPACE, metrics.stream_measure(stream_id, measure)).inc(value)
            yield from outputs

    def _resume(self, config: StreamConfig) -> None:
        """Streams activated or restarted in the portal since this process last
        looked (``DataStream.resumed_at``): their circuits go recovering (or, open,
        are probed now), so the backlog kept for them is delivered first."""
        for stream in config.streams.values():
            if (not stream.resumed_at or stream.state != "active"
                    or self._circuits.get(stream.id).resumed_at == stream.resumed_at):
                continue
            state = self._circuits.resume(stream.id, stream.resumed_at)
            _LOG.warning("stream %s: resumed at %s; circuit %s, its kept documents are delivered first",
                         stream.id, stream.resumed_at, state.state)

    def _recover_counted(self, stream: DataStream, circuit: CircuitState, config: StreamConfig,
                         deadline: float) -> tuple[list[Any], dict[str, Tally], list[tuple[str, str, int]]]:
        """:meth:`_recover` on a pool thread: Beam's counters are per thread, so
        what it counts is tallied here and added on the bundle's thread."""
        fn = self._fns[stream.api_type]
        tally = Tally()
        fn._local.tally = tally
        self._local.counts = []
        try:
            outputs = list(self._recover(stream, circuit, config, deadline))
        finally:
            fn._local.tally = None
        return outputs, {stream.api_type: tally}, self._local.counts

    def _recover(self, stream: DataStream, circuit: CircuitState, config: StreamConfig,
                 deadline: float) -> Iterator[Any]:
        if circuit.state in (OPEN, HALF_OPEN):
            if not self._circuits.begin_probe(stream.id, self._owner):
                return
            probing = True
        elif self._circuits.take_drain(stream.id, self._owner):
            probing = False
        else:
            return
        backlog = self._backlog(stream.id)
        if probing and not backlog:
            # Nothing to probe with: the next live batch is the probe. The circuit
            # closes with one failure short of opening again.
            _LOG.warning("stream %s: no parked batch to probe with; the next live batch probes", stream.id)
            self._circuits.close(stream.id, self._owner)
            return
        if probing:
            _LOG.warning("stream %s: probing its destination (circuit %s since %s)", stream.id, circuit.token,
                         _iso(circuit.opened_at))
        for path in backlog:
            if time.monotonic() >= deadline:
                self._circuits.release(stream.id, self._owner)
                return
            outputs, ok = self._deliver(stream, config, path, single_attempt=probing)
            yield from outputs
            if not ok:
                state = self._circuits.probe_failed(stream.id, self._owner, _token(outputs))
                _LOG.warning("stream %s: still failing (%s); next probe in %.0f s", stream.id, state.token,
                             state.probe_delay_seconds)
                return
            if probing:
                probing = False
                self._circuits.recovering(stream.id, self._owner)
                _LOG.warning("stream %s: destination answers again; delivering %d parked batches first",
                             stream.id, len(backlog))
        current = self._circuits.get(stream.id, fresh=True)
        if current.state == RECOVERING:
            if self._backlog(stream.id):  # parked meanwhile by the sinks: next tick
                self._circuits.release(stream.id, self._owner)
                return
            self._circuits.close(stream.id, self._owner)
            _LOG.warning("stream %s: backlog delivered; live data flows again", stream.id)
        elif current.state == CLOSED:
            self._circuits.release(stream.id, self._owner)
            self._circuits.forget(stream.id)

    def _backlog(self, stream_id: str) -> list[str]:
        """The stream's recoverable parked batches, oldest first (by when they
        were written: a file's modification time)."""
        pattern = f"{self._parks.location}/{stream_id}/*.json"
        found = FileSystems.match([pattern])[0].metadata_list
        ordered = sorted(found, key=lambda m: (m.last_updated_in_seconds, m.path))
        paths = []
        for metadata in ordered:
            try:
                batch = self._parks.read(metadata.path)
            except Exception:  # noqa: BLE001 - being written or gone: a later tick sees it
                continue
            if batch.reason in RESUMABLE_REASONS:
                paths.append(metadata.path)
        return paths

    def _deliver(self, stream: DataStream, config: StreamConfig, path: str,
                 single_attempt: bool = False) -> tuple[list[Any], bool]:
        """One parked batch through the stream's sink -> (outputs, all delivered);
        ``single_attempt`` for a probe (module docstring)."""
        try:
            batch = self._parks.read(path)
        except Exception:  # noqa: BLE001 - deleted meanwhile (a re-drive): nothing to do
            return [], True
        fn = self._fns[stream.api_type]
        outputs: list[Any] = []
        parked_again: list[ParkedBatch] = []
        delivered = 0
        for element, window in sink_elements(stream, batch):
            for output in fn.deliver_now(element, config, window, RecoveredPane(batch.batch_id[:8]), probe=True,
                                         single_attempt=single_attempt):
                if isinstance(output, pvalue.TaggedOutput) and output.tag == PARKED:
                    parked_again.append(output.value)
                elif isinstance(output, pvalue.TaggedOutput):
                    outputs.append(pvalue.TaggedOutput(DEAD_LETTERS, output.value))
                else:
                    outputs.append(output)
                    if isinstance(output, DeliveryResult) and output.status == DELIVERED:
                        delivered += output.documents - output.parked_documents
        if parked_again and not delivered:
            return outputs, False  # the batch stays as it is
        for again in parked_again:
            self._parks.write(again)
        self._parks.delete([path])
        self._count(stream.id, batch, delivered)
        return outputs, not parked_again

    def _count(self, stream_id: str, batch: ParkedBatch, delivered: int) -> None:
        counts = self._local.counts
        counts.append((stream_id, "recovered", delivered))
        if batch.parked_at >= self._started_at:
            counts.append((stream_id, "unparked", delivered))
        if batch.error == IN_FLIGHT:
            counts.append((stream_id, "redelivered", delivered))


def _token(outputs: list[Any]) -> str | None:
    for output in outputs:
        if isinstance(output, DeliveryResult) and output.token:
            return output.token
    return None


def _iso(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class RecoverStreams(beam.PTransform):
    """Ticks (in the windows of the ``streams`` side input) -> the results of
    the probes and re-deliveries (main) and their dead letters, as a
    ``DoOutputsTuple``. ``fns``: a delivery DoFn per API type, configured as the
    live sinks are (``sinks/delivery.py``)."""

    def __init__(self, fns: dict[str, DeliveryFn], streams: pvalue.AsSideInput, park_location: str,
                 circuit_location: str | None, budget_seconds: float, interval_seconds: float) -> None:
        super().__init__()
        self._fn = _RecoverFn(fns, park_location, circuit_location, budget_seconds, interval_seconds)
        self._streams = streams

    def expand(self, ticks: beam.PCollection) -> Any:
        return ticks | "Recover" >> beam.ParDo(self._fn, self._streams).with_outputs(DEAD_LETTERS, main="results")
