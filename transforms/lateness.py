"""Late and too-late records of a streaming run, decided before anything is windowed.

A record is *late* when it arrives after the watermark has passed its event time,
and *too late* when it is more than the allowed lateness behind. Late records are
delivered like any other and counted (``records_late[<kind>]``); too-late ones
become dead letters (``too_late``) with the watermark and the lateness in the
detail, because every windowed step downstream would otherwise drop them without a
trace: a windowed ``GroupByKey`` ignores elements of expired windows, and no
counter says so.

Why a gate of our own: a Python ``DoFn`` cannot read the watermark, so Beam offers
no step that sends expired elements to an output of their own. The gate learns a
lower bound of the watermark from event-time timers instead: a timer set for time
``T`` fires only once the input watermark has passed ``T``, so the largest ``T``
fired so far (the *bound*) is a watermark the input has certainly reached. Every
record (its time rounded up to ``PROBE_RESOLUTION_SECONDS``) becomes a pending
probe; one timer walks through them in order. So the bound is the newest record
time the watermark has passed: while records flow it trails the watermark by about
their spacing, and heartbeats (the refresh ticks, sent to every shard) keep it
moving when a shard sees no records.

The bound can only trail the watermark, never lead it, so the gate never
dead-letters a record that was in time; a record it lets through may be a little
later than it measured. That is covered by margin: every windowed step downstream
(S3 files, DataDog aggregates, the archive, the batching windows) allows
:func:`window_lateness_seconds` of lateness, the gate's plus at least two heartbeat
intervals and 15 minutes, so a record the gate let through is not dropped there.

The gate is keyed by ``id % shards`` so the work spreads over workers; each shard
tracks its own bound of the one watermark. It runs in the global window, where no
state expires, and only on unbounded input: a bounded run has no late data (its
watermark stays at the start until all input is read).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.coders import ListCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from schemas import metrics
from schemas.records import Kind, dead_letter

DEFAULT_ALLOWED_LATENESS_SECONDS = 3600
#: Extra lateness every windowed step allows beyond the gate's (module docstring).
LATENESS_MARGIN_SECONDS = 900
PROBE_RESOLUTION_SECONDS = 1
DEFAULT_SHARDS = 16
TOO_LATE = "too_late"
DEAD_LETTERS = "dead_letters"

_RESOLUTION_MICROS = PROBE_RESOLUTION_SECONDS * 1_000_000
#: Probes are never set beyond this, where the global window ends.
_LAST_PROBE = GlobalWindow().max_timestamp()


def window_lateness_seconds(allowed_lateness_seconds: int, heartbeat_seconds: int = 0) -> int:
    """The allowed lateness of windowed steps behind a gate of
    ``allowed_lateness_seconds`` whose heartbeats come every ``heartbeat_seconds``
    (the refresh interval): the margin covers at least two heartbeats, the most
    the gate's bound can trail the watermark while nothing else arrives."""
    return allowed_lateness_seconds + max(LATENESS_MARGIN_SECONDS, 2 * heartbeat_seconds)


class _LatenessGateFn(beam.DoFn):
    """``(shard, record or None)`` -> the record (on time or late) or a dead
    letter; ``None`` is a heartbeat that only moves the shard's bound."""

    BOUND = ReadModifyWriteStateSpec("bound_micros", VarIntCoder())
    PENDING = ReadModifyWriteStateSpec("pending_micros", ListCoder(VarIntCoder()))
    PROBE = TimerSpec("probe", TimeDomain.WATERMARK)

    _BOUND_PARAM = beam.DoFn.StateParam(BOUND)
    _PENDING_PARAM = beam.DoFn.StateParam(PENDING)
    _PROBE_PARAM = beam.DoFn.TimerParam(PROBE)

    def __init__(self, kind: Kind, allowed_lateness_seconds: int) -> None:
        self._kind = kind
        self._allowed_micros = allowed_lateness_seconds * 1_000_000

    def setup(self) -> None:
        self._late = Metrics.counter(metrics.NAMESPACE, metrics.late(self._kind))

    def process(
        self,
        element: tuple[int, dict[str, Any] | None],
        timestamp: Timestamp = beam.DoFn.TimestampParam,
        bound_state: Any = _BOUND_PARAM,
        pending_state: Any = _PENDING_PARAM,
        probe: Any = _PROBE_PARAM,
    ) -> Iterator[Any]:
        record = element[1]
        micros = timestamp.micros
        bound = bound_state.read()
        if record is not None:
            if bound is not None and micros < bound - self._allowed_micros:
                metrics.count_dead_letter(self._kind, TOO_LATE)
                behind = (bound - micros) / 1_000_000
                detail = (f"event time {timestamp.to_rfc3339()} is at least {behind:.0f} s behind the watermark "
                          f"({Timestamp(micros=bound).to_rfc3339()}); at most "
                          f"{self._allowed_micros // 1_000_000} s are allowed")
                yield pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(
                    self._kind, "lateness", TOO_LATE, detail, orjson.dumps(record), record["id"]))
                return
            if bound is not None and micros < bound:
                self._late.inc()
            yield TimestampedValue(record, timestamp)
        # Probe at this element's time (rounded up to the resolution), unless the
        # watermark is known to be past it already.
        probe_at = min(-(-micros // _RESOLUTION_MICROS) * _RESOLUTION_MICROS, _LAST_PROBE.micros)
        if bound is not None and probe_at <= bound:
            return
        pending = pending_state.read() or []
        index = bisect.bisect_left(pending, probe_at)
        if index < len(pending) and pending[index] == probe_at:
            return
        pending.insert(index, probe_at)
        pending_state.write(pending)
        if index == 0:
            probe.set(Timestamp(micros=probe_at))

    @on_timer(PROBE)
    def on_probe(
        self,
        fired: Timestamp = beam.DoFn.TimestampParam,
        bound_state: Any = _BOUND_PARAM,
        pending_state: Any = _PENDING_PARAM,
        probe: Any = _PROBE_PARAM,
    ) -> None:
        bound = max(bound_state.read() or fired.micros, fired.micros)
        bound_state.write(bound)
        pending = [at for at in pending_state.read() or [] if at > bound]
        if pending:
            pending_state.write(pending)
            probe.set(Timestamp(micros=pending[0]))
        else:
            pending_state.clear()


def _heartbeats(tick: Any, shards: int, timestamp: Timestamp = beam.DoFn.TimestampParam) -> Iterator[Any]:
    for shard in range(shards):
        yield TimestampedValue((shard, None), timestamp)


class GateLateRecords(beam.PTransform):
    """Valid records with event-time timestamps of one kind ->
    ``result.records``: the records in time or late (counted), with their
    timestamps; ``result.dead_letters``: the too-late ones. ``heartbeats``
    (the refresh ticks) reach every shard, so a shard that has seen no record for a
    while still knows how far the watermark has come. See the module docstring."""

    def __init__(self, kind: Kind, allowed_lateness_seconds: int, heartbeats: beam.PCollection | None = None,
                 shards: int = DEFAULT_SHARDS) -> None:
        super().__init__()
        if allowed_lateness_seconds < 0:
            raise ValueError("the allowed lateness cannot be negative")
        self._kind = kind
        self._allowed = allowed_lateness_seconds
        self._heartbeats = heartbeats
        self._shards = shards

    def expand(self, records: beam.PCollection) -> pvalue.DoOutputsTuple:
        shards = self._shards
        keyed = records | "KeyByShard" >> beam.Map(lambda record: (record["id"] % shards, record))
        if self._heartbeats is not None:
            beats = self._heartbeats | "Heartbeats" >> beam.FlatMap(_heartbeats, shards)
            keyed = (keyed, beats) | "WithHeartbeats" >> beam.Flatten()
        return keyed | "Gate" >> beam.ParDo(_LatenessGateFn(self._kind, self._allowed)).with_outputs(
            DEAD_LETTERS, main="records")
