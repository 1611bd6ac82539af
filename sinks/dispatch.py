"""Sending a bundle's batches: streams side by side, each within its own budget.

One slow or dead destination must cost the other streams of a bundle a bounded
delay, not its read timeout per batch: the DirectRunner's streaming executor has
one thread for the whole job, and a Flink subtask processes its bundles one after
the other, so a bundle that waits holds every stream behind it. So a sink does not
send in ``process``; it hands each batch to a :class:`BundleSender`:

- each stream has a lane: its batches go one after the other, in arrival order
  (a stream's documents keep their order, and a dead destination gets one batch at
  a time, so its circuit opens after ``deactivate_after`` failed batches, not after
  as many as were sent at once);
- lanes run side by side on a bounded pool (``stream_concurrency`` threads per
  sink instance);
- each request gets ``budget_seconds`` (the stream budget: its retries and read
  timeouts are cut to it) and each batch the failure policy's deadline; a batch
  whose current request is still running at its budget plus ``grace_seconds``
  (a destination that drips its answer) is abandoned: its documents are parked
  and counted "maybe twice" (the request was in flight), the batches queued
  behind it in its lane are parked without a request, and the bundle goes on;
- outputs leave as soon as they are ready (as windowed values of their input), and
  ``process`` waits only when more than ``max_pending`` batches are queued;
- a stream whose last request ran out of its budget (a destination that hangs)
  holds no further bundle: its batch still running when the bundle ends is
  abandoned after at most a second (parked, "maybe twice"; the request runs on and its outcome
  counts towards the stream's circuit), and while such a request runs its
  stream's new batches are parked without one (:data:`OVERRUNS`). Otherwise a
  dead destination would cost every stream one budget per bundle until its
  circuit opens: three in a row, 15 s, with the defaults. Streaming only
  (``RetryPolicy.release_overrun_streams``): in batch a bundle's wait costs
  throughput, not latency, and a worker may exit with its last bundle before an
  abandoned request's failure reaches the circuit, which would then stay closed.

Beam's metrics are per thread, so what a lane counts is tallied
(:class:`Tally`) and added to the step's counters on the bundle's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from apache_beam import pvalue
from apache_beam.utils.windowed_value import WindowedValue

_LOG = logging.getLogger(__name__)


class Overruns:
    """The streams of this process whose last request ran out of its stream
    budget, and how many of their requests still run after their bundle went on
    (module docstring). Process-wide: bundles, sink instances and lanes share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: the streams whose last request ran out of its budget
        self._overran: set[str] = set()
        self._running: Counter[str] = Counter()

    def record(self, stream_id: str, overran: bool) -> None:
        """A request of the stream ended: ``overran`` if it used up its budget."""
        with self._lock:
            if overran:
                self._overran.add(stream_id)
            else:
                self._overran.discard(stream_id)

    def overran(self, stream_id: str) -> bool:
        """Whether the stream's last request ran out of its budget."""
        with self._lock:
            return stream_id in self._overran

    def abandoned(self, stream_id: str, delta: int) -> None:
        """An abandoned request of the stream goes on running (+1) or ended (-1)."""
        with self._lock:
            self._running[stream_id] += delta
            if self._running[stream_id] <= 0:
                del self._running[stream_id]

    def still_running(self, stream_id: str) -> bool:
        with self._lock:
            return self._running[stream_id] > 0 if stream_id in self._running else False


#: This process's :class:`Overruns`.
OVERRUNS = Overruns()
#: How long a bundle's end waits for a running batch of a stream whose last
#: request overran: long enough for a destination that answers again, far below
#: a budget (the smaller of the two).
SUSPECT_WAIT_SECONDS = 1.0
SUSPECT_WAIT_SHARE = 0.2


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class Tally:
    """The counters of :class:`~sinks.results.DeliveryCounters`, kept in plain
    numbers on a lane's thread and added to the real ones later."""

    NAMES = ("requests", "documents", "failed_documents", "bytes", "dead_letters", "redelivered")

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, _Count())

    def apply(self, counters: Any) -> None:
        for name in self.NAMES:
            value = getattr(self, name).value
            if value:
                getattr(counters, name).inc(value)


@dataclass
class Job:
    """One batch of one stream: what to run, and where its outputs go."""

    stream_id: str
    #: sends the batch -> its outputs (results, TaggedOutputs)
    run: Callable[[], list[Any]]
    #: parks the batch when it was never started or abandoned: (in_flight) -> outputs
    park: Callable[[bool], list[Any]]
    window: Any
    timestamp: Any
    outputs: list[Any] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    started: float | None = None
    #: when its current request started (:meth:`touch`): what overrunning is measured from
    touched: float | None = None
    done: bool = False
    abandoned: bool = False

    def touch(self) -> None:
        """A request of the batch starts now."""
        self.touched = time.monotonic()


class BundleSender:
    """The batches of one bundle of one sink instance (module docstring)."""

    def __init__(self, pool: ThreadPoolExecutor, budget_seconds: float, grace_seconds: float,
                 max_pending: int, local: threading.local, release_overruns: bool = True) -> None:
        self._pool = pool
        self._release_overruns = release_overruns
        self._budget = budget_seconds
        self._grace = grace_seconds
        self._max_pending = max_pending
        self._local = local  # the sink's thread-local: a lane sets its tally there
        self._cond = threading.Condition()
        self._lanes: dict[str, deque[Job]] = {}
        self._running: dict[str, Job | None] = {}
        self._finished: deque[Job] = deque()
        #: batches of a stream with an abandoned request still running: parked
        #: without a request by the bundle's thread (:meth:`ready`)
        self._behind_abandoned: deque[Job] = deque()
        self._pending = 0

    def submit(self, job: Job) -> None:
        if OVERRUNS.still_running(job.stream_id) and job.stream_id not in self._running:
            self._behind_abandoned.append(job)
            return
        with self._cond:
            self._lanes.setdefault(job.stream_id, deque()).append(job)
            self._pending += 1
            if job.stream_id not in self._running:
                self._running[job.stream_id] = None
                self._pool.submit(self._run_lane, job.stream_id)

    def _run_lane(self, stream_id: str) -> None:
        while True:
            with self._cond:
                lane = self._lanes.get(stream_id)
                if not lane:
                    self._running.pop(stream_id, None)
                    return
                job = lane.popleft()
                job.started = job.touched = time.monotonic()
                self._running[stream_id] = job
            self._local.tally, self._local.job = job.tally, job
            try:
                outputs = job.run()
            except BaseException as err:  # noqa: BLE001 - a bug: raised again on the bundle's thread
                outputs = [err]
            finally:
                self._local.tally = self._local.job = None
            with self._cond:
                if job.abandoned:  # the bundle went on without it; its documents were parked
                    OVERRUNS.abandoned(stream_id, -1)
                    self._cond.notify_all()
                    return
                job.outputs, job.done = outputs, True
                self._finished.append(job)
                self._pending -= 1
                self._running[stream_id] = None
                self._cond.notify_all()

    # ----------------------------------------------------------------- the bundle's thread

    def ready(self, counters: Any) -> Iterator[Any]:
        """The outputs of the batches finished so far, as windowed values."""
        while self._behind_abandoned:
            job = self._behind_abandoned.popleft()
            _LOG.warning("stream %s: a batch parked without a request: an earlier one is still running past the "
                         "stream budget of %.0f s", job.stream_id, self._budget)
            yield from self._park(job, in_flight=False, counters=counters)
        while True:
            with self._cond:
                if not self._finished:
                    return
                job = self._finished.popleft()
            yield from self._emit(job, job.outputs, counters)

    def wait_below_limit(self, counters: Any) -> Iterator[Any]:
        """Backpressure: wait while more than ``max_pending`` batches are queued."""
        while True:
            with self._cond:
                if self._pending <= self._max_pending:
                    break
                self._cond.wait(timeout=0.5)
            yield from self._abandon_overdue(counters)
            yield from self.ready(counters)
        yield from self.ready(counters)

    def finish(self, counters: Any) -> Iterator[Any]:
        """Wait for every batch, or abandon the overdue ones and those of streams
        whose last request overran; then all outputs."""
        while True:
            yield from self.ready(counters)
            yield from self._abandon_overdue(counters, finishing=True)
            with self._cond:
                if self._pending == 0:
                    break
                self._cond.wait(timeout=0.2)
        yield from self.ready(counters)

    def _abandon_overdue(self, counters: Any, finishing: bool = False) -> Iterator[Any]:
        now = time.monotonic()
        abandoned: list[tuple[Job, bool]] = []
        with self._cond:
            for stream_id, job in list(self._running.items()):
                if job is None or job.touched is None:
                    continue
                limit = self._budget + self._grace
                if finishing and self._release_overruns and OVERRUNS.overran(stream_id):
                    limit = min(limit, SUSPECT_WAIT_SECONDS, SUSPECT_WAIT_SHARE * self._budget)
                if now < job.touched + limit:
                    continue
                job.abandoned = True
                OVERRUNS.abandoned(stream_id, +1)
                abandoned.append((job, True))
                self._pending -= 1
                for queued in self._lanes.pop(stream_id, deque()):
                    queued.abandoned = True
                    abandoned.append((queued, False))
                    self._pending -= 1
                # Its thread returns once its request ends; a later batch of the
                # stream starts a lane of its own.
                del self._running[stream_id]
        for job, in_flight in abandoned:
            _LOG.warning("stream %s: a batch %s the stream budget of %.0f s a request; parked", job.stream_id,
                         "overran (or its stream's last request did)" if in_flight
                         else "waited behind one that overran", self._budget)
            yield from self._park(job, in_flight, counters)

    def _park(self, job: Job, in_flight: bool, counters: Any) -> Iterator[Any]:
        tally = Tally()
        self._local.tally = tally
        try:
            outputs = job.park(in_flight)
        finally:
            self._local.tally = None
        job.tally = tally
        yield from self._emit(job, outputs, counters)

    def _emit(self, job: Job, outputs: list[Any], counters: Any) -> Iterator[Any]:
        job.tally.apply(counters)
        for output in outputs:
            if isinstance(output, BaseException):
                raise output
            if isinstance(output, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(output.tag, WindowedValue(output.value, job.timestamp, (job.window,)))
            else:
                yield WindowedValue(output, job.timestamp, (job.window,))
