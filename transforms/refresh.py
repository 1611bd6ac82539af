"""Slowly updating side inputs: reference data and stream configurations that
change while a streaming job runs.

Beam's pattern (PeriodicImpulse with ``apply_windowing``): an impulse every
``interval`` seconds re-reads the files, and a consumer sees the snapshot of the
window its element maps to. A new SIM, a renamed organisation or a new, paused or
deleted stream therefore takes effect for records of the next interval, without a
restart.

Two kinds of windows, both of ``interval`` and aligned to the epoch:

- :class:`SnapshotWindows`, the windows records are enriched and routed in:
  ``[a, a + interval)``, except that the first one reaches back to the epoch, so
  records older than the job's start (a Pub/Sub backlog after a restart, late
  records) find a snapshot too. Consumers must be in time windows: a consumer in
  the global window would map to the window at the end of time and wait forever.
- :class:`SnapshotServingWindows`, the windows snapshots are in: the snapshot of
  the tick at ``a`` (the newest tick in ``(a - interval, a]``, ticks being
  aligned up to the next interval start) serves the records of ``[a, a +
  interval)``. Its window ends right after ``a``, so those records wait only
  until the tick at ``a`` has been loaded. Had the snapshot of a tick at ``a``
  been in ``[a, a + interval)`` itself, as in Beam's example, every record would
  wait for its interval to end, because a side-input window is ready only when
  the watermark has passed its end: half an interval on average (2.5 min at the
  default 300 s), on every runner.

Of several ticks before one interval start, the newest (by its own time) wins.
Ticks from Pub/Sub carry their publish time, so the intervals before the first
tick would have no snapshot: the first one, and the next one or two whenever the
job was built in the last seconds of an interval or started late (the first tick
then falls after the next interval's start; this once left a test's records an
empty side input). The snapshot loaded when the job starts (an ``Impulse``) is
therefore also placed in the first interval and in those up to the one after the
start, ranked below any tick of the same interval.

A refresh that fails (a missing file, a bad row: the loaders raise with the file,
row and field) keeps the last good snapshot, logs the loader's message and counts
``refresh|<what>|failed``; a good one counts ``refresh|<what>|loaded``. Snapshots
are only ever loaded on workers, never pickled into the job graph: a fleet's
reference data can be far larger than a runner accepts for a graph (Dataflow's
request limit is 10 MB). The submitting machine loads the files once to fail fast
on bad data; if a worker's very first load fails, there is no good snapshot to
keep, so the tick fails and the runner retries it.

DirectRunner caveats (seen with Beam 2.77): it keeps every snapshot it ever received in
memory (fine for bounded local runs; Dataflow and Flink garbage-collect expired
side-input windows), and it fails on empty bundles reaching a step with a windowed
side input (:mod:`tools.direct_runner`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder, coders
from apache_beam.metrics import Metrics
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import IntervalWindow, NonMergingWindowFn, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from schemas import metrics

_LOG = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS = 300


def first_refresh(interval_seconds: int, now: float | None = None) -> int:
    """The start of the interval the job starts in (epoch seconds)."""
    now = time.time() if now is None else now
    return int(now) - int(now) % interval_seconds


def _aligned_up(micros: int, size: int) -> int:
    return -(-micros // size) * size


class _RefreshWindowFn(NonMergingWindowFn):
    """What both kinds of refresh windows share: an interval, a first refresh
    aligned to it, interval windows, equality by both."""

    def __init__(self, interval_seconds: int, first_seconds: int) -> None:
        if interval_seconds <= 0 or first_seconds % interval_seconds:
            raise ValueError("the first refresh must be aligned to the interval")
        self._size = interval_seconds * 1_000_000
        self._first = first_seconds * 1_000_000

    @property
    def interval_seconds(self) -> int:
        return self._size // 1_000_000

    @property
    def first_seconds(self) -> int:
        """The first refresh (epoch seconds): the start of the first interval."""
        return self._first // 1_000_000

    def get_window_coder(self) -> coders.Coder:
        return coders.IntervalWindowCoder()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (self._size, self._first) == (other._size, other._first)

    def __hash__(self) -> int:
        return hash((type(self), self._size, self._first))


class SnapshotWindows(_RefreshWindowFn):
    """``FixedWindows(interval)`` whose first window, ``[epoch, first + interval)``,
    also holds everything before ``first``: the windows records are enriched and
    routed in (module docstring)."""

    def assign(self, context: NonMergingWindowFn.AssignContext) -> list[IntervalWindow]:
        micros = context.timestamp.micros
        first_end = self._first + self._size
        if micros < first_end:
            return [IntervalWindow(Timestamp(0), Timestamp(micros=first_end))]
        start = micros - micros % self._size
        return [IntervalWindow(Timestamp(micros=start), Timestamp(micros=start + self._size))]


class SnapshotServingWindows(_RefreshWindowFn):
    """The windows of the snapshots that serve :class:`SnapshotWindows`. The one
    of the tick at interval start ``a`` ends at ``a`` + 1 µs (its maximum
    timestamp is ``a``), and it is also the window that the record window
    starting at ``a`` maps to: Beam maps a main-input window to a side-input
    window through ``assign`` of the main window's maximum timestamp, ``a +
    interval - 1 µs``. Up to ``first``, everything is in the first window, as
    with the record windows.

    Snapshots must be stamped with their interval start (:class:`RefreshingSnapshot`
    aligns ticks up to it); any later timestamp would lie after its window's end.
    """

    def assign(self, context: NonMergingWindowFn.AssignContext) -> list[IntervalWindow]:
        micros = context.timestamp.micros
        start = micros - micros % self._size
        if start <= self._first:
            return [IntervalWindow(Timestamp(0), Timestamp(micros=self._first + 1))]
        return [IntervalWindow(Timestamp(micros=start - self._size + 1), Timestamp(micros=start + 1))]


#: The tick of the job's start (:class:`RefreshingSnapshot`); a dict, so
#: :func:`location` reads the configured location for it.
START_TICK: dict[str, bool] = {"job_start": True}

#: How many intervals before the one after the start get the start's snapshot
#: besides the first: a job started this much after it was built is covered.
START_COPIES_BACK = 2


def align_to_interval(loaded: tuple[Any, Any], interval_seconds: int, first_seconds: int,
                      timestamp: Timestamp = beam.DoFn.TimestampParam,
                      now: float | None = None) -> Iterator[TimestampedValue]:
    """``(tick, snapshot)`` -> ``(rank, snapshot)`` stamped with the start of the
    interval it serves, its tick's time aligned up (a tick at an interval start
    keeps its time); the rank is the tick's time (newest wins). The start's
    snapshot goes to the first interval and to those from ``START_COPIES_BACK``
    before the one after now up to it, ranked as if ticked at the very beginning
    of the interval before (below every tick of its own; module docstring)."""
    tick, snapshot = loaded
    size = interval_seconds * 1_000_000
    if not (isinstance(tick, dict) and tick.get("job_start")):
        yield TimestampedValue((timestamp.micros, snapshot), Timestamp(micros=_aligned_up(timestamp.micros, size)))
        return
    first = first_seconds * 1_000_000
    after_now = _aligned_up(int((time.time() if now is None else now) * 1_000_000), size)
    starts = {first} | set(range(max(first, after_now - START_COPIES_BACK * size), after_now + 1, size))
    for start in sorted(starts):
        yield TimestampedValue((start - size + 1, snapshot), Timestamp(micros=start))


class _NewestSnapshot(beam.CombineFn):
    """``(rank, snapshot)`` -> the snapshot of the highest rank (the first seen of
    equal ranks)."""

    def create_accumulator(self) -> tuple[int, Any] | None:
        return None

    def add_input(self, best: tuple[int, Any] | None, ranked: tuple[int, Any]) -> tuple[int, Any]:
        return ranked if best is None or ranked[0] > best[0] else best

    def merge_accumulators(self, accumulators: Iterable[tuple[int, Any] | None]) -> tuple[int, Any] | None:
        best = None
        for accumulator in accumulators:
            if accumulator is not None:
                best = self.add_input(best, accumulator)
        return best

    def extract_output(self, best: tuple[int, Any] | None) -> Any:
        return None if best is None else best[1]


class RefreshError(RuntimeError):
    """The first snapshot of a side input could not be loaded on a worker."""


class _LoadKeepingLastGood(beam.DoFn):
    """``(None, tick)`` -> ``(tick, snapshot)``: the snapshot loaded now, or the
    last good one if loading fails. The last good snapshot is kept in state (one key), not in the DoFn
    instance: runners may create instances per bundle (the DirectRunner does), and
    a fresh instance would fall back to the snapshot of the job's start."""

    LAST_GOOD = ReadModifyWriteStateSpec("last_good", PickleCoder())
    _LAST_GOOD_PARAM = beam.DoFn.StateParam(LAST_GOOD)

    def __init__(self, what: str, load: Callable[[Any], Any]) -> None:
        self._what = what
        self._load = load

    def setup(self) -> None:
        self._loaded = Metrics.counter(metrics.NAMESPACE, metrics.refresh(self._what, "loaded"))
        self._failed = Metrics.counter(metrics.NAMESPACE, metrics.refresh(self._what, "failed"))

    def process(self, keyed: tuple[None, Any], timestamp: Timestamp = beam.DoFn.TimestampParam,
                last_good: Any = _LAST_GOOD_PARAM) -> Iterator[Any]:
        try:
            snapshot = self._load(keyed[1])
        except Exception as err:
            self._failed.inc()
            snapshot = last_good.read()
            if snapshot is None:
                raise RefreshError(f"loading {self._what} failed and there is no earlier snapshot to keep "
                                   f"(the runner retries): {err}") from err
            _LOG.error("refreshing %s failed, keeping the previous snapshot: %s", self._what, err)
        else:
            self._loaded.inc()
            last_good.write(snapshot)
        yield TimestampedValue((keyed[1], snapshot), timestamp)


def location(tick: Any, key: str, default: str) -> str:
    """Where a refresh reads ``key`` from: ``default``, unless the tick is a dict
    naming another location (tests drive refreshes from a ``TestStream`` with
    ticks such as ``{"reference_dir": ".../v2"}``; PeriodicImpulse's ticks are
    timestamps)."""
    return tick.get(key, default) if isinstance(tick, dict) else default


class Ticks(beam.PTransform):
    """PBegin -> a tick every ``interval_seconds`` from ``first_seconds`` on
    (``PeriodicImpulse``), the input of :class:`RefreshingSnapshot`."""

    def __init__(self, interval_seconds: int, first_seconds: int) -> None:
        super().__init__()
        self._interval = interval_seconds
        self._first = first_seconds

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "PeriodicImpulse" >> PeriodicImpulse(
            start_timestamp=self._first, fire_interval=self._interval, apply_windowing=False
        )


class RefreshingSnapshot(beam.PTransform):
    """Ticks -> one snapshot per interval in :class:`SnapshotServingWindows`, for
    consumers in ``windows``; use it as ``AsSingleton``.

    ``load(tick)`` is called on a worker at every tick and once at the job's start.
    Ticks come from :class:`Ticks` (timestamps), from Pub/Sub on the DirectRunner,
    or from a ``TestStream`` in tests that refresh at chosen points of event time
    (:func:`location` lets a tick name another location to read).
    """

    def __init__(self, what: str, load: Callable[[Any], Any], windows: SnapshotWindows) -> None:
        super().__init__()
        self._what = what
        self._load = load
        self._windows = windows

    def expand(self, ticks: beam.PCollection) -> beam.PCollection:
        first, interval = self._windows.first_seconds, self._windows.interval_seconds
        at_start = (
            ticks.pipeline
            | "AtStart" >> beam.Impulse()
            | "StartTick" >> beam.Map(lambda _: START_TICK)
        )
        return (
            (ticks, at_start)
            | "WithStart" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda tick: (None, tick))
            | "Load" >> beam.ParDo(_LoadKeepingLastGood(self._what, self._load))
            | "AlignToInterval" >> beam.FlatMap(align_to_interval, interval, first)
            | "Window" >> beam.WindowInto(SnapshotServingWindows(interval, first))
            | "NewestPerWindow" >> beam.CombineGlobally(_NewestSnapshot()).without_defaults()
        )
