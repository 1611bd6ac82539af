"""The streaming graph driven by ``TestStream``: the same ``build_pipeline`` as
batch and Pub/Sub runs, with the raw events and the refresh ticks coming from a
test stream whose watermark the test moves.

Times: the refresh interval is 60 s and the first refresh is at ``F``, so the
snapshot windows are ``[epoch, F + 60)``, ``[F + 60, F + 120)``, ... Records are
placed relative to ``F``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines.data_streamer import build_pipeline
from schemas import metrics
from tests.conftest import write_reference
from tests.guide_samples import RAW_EVENTS
from transforms.refresh import (
    START_TICK,
    RefreshError,
    SnapshotServingWindows,
    SnapshotWindows,
    _LoadKeepingLastGood,
    align_to_interval,
)

F = 1_793_520_000  # 2026-11-01T08:00:00Z, a multiple of 60
INTERVAL = 60
LATENESS = 600


def _at(seconds: float) -> str:
    return (datetime.fromtimestamp(F + seconds, tz=UTC)).isoformat().replace("+00:00", "Z")


def raw_event(record_id: int, seconds: float) -> bytes:
    return orjson.dumps(RAW_EVENTS["5.1.1"] | {"id": record_id, "timestamp": _at(seconds)})


def _stamped(record_id: int, seconds: float) -> TimestampedValue:
    # Pub/Sub would stamp publish time; parsing replaces it with the record's own time.
    return TimestampedValue(raw_event(record_id, seconds), F + seconds + 1)


def _options(reference_dir: Path, **extra: Any) -> PipelineOptions:
    flags = [f"--reference_dir={reference_dir}", "--streaming", f"--refresh_interval_seconds={INTERVAL}",
             f"--allowed_lateness_seconds={LATENESS}"]
    flags += [f"--{key}={value}" for key, value in extra.items()]
    return PipelineOptions(flags)


def _built(options: PipelineOptions, stream: TestStream) -> tuple[beam.Pipeline, dict[str, Any]]:
    """The streaming graph on ``stream``'s ``event`` and ``tick`` outputs."""
    p = beam.Pipeline(options=options)
    source = p | stream
    return p, build_pipeline(p, p.options, sources={"event": source["event"]}, ticks=source["tick"],
                             first_refresh_seconds=F)


def _counter(result: Any, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE).with_name(name))["counters"]
    return sum(c.committed for c in found)


def _first_window() -> IntervalWindow:
    return IntervalWindow(Timestamp(0), Timestamp(F + INTERVAL))


def _window(k: int) -> IntervalWindow:
    return IntervalWindow(Timestamp(F + k * INTERVAL), Timestamp(F + (k + 1) * INTERVAL))


def test_on_time_late_and_too_late_records(sample_reference_dir):
    """On time: delivered in its window. Late (behind the watermark, within the
    allowed lateness): delivered in its own, already fired, window and counted.
    Too late: a dead letter with the reason, in no window."""
    stream = (
        TestStream(output_tags=["event", "tick"])
        .advance_watermark_to(F, tag="event").advance_watermark_to(F, tag="tick")
        .add_elements([TimestampedValue({"tick": k}, F + k * INTERVAL) for k in range(18)], tag="tick")
        .advance_watermark_to(F + 18 * INTERVAL, tag="tick")
        .add_elements([_stamped(1, 10), _stamped(2, 70), _stamped(3, 130)], tag="event")
        .advance_watermark_to(F + 200, tag="event")
        # 180 s behind the watermark: late, allowed (600 s).
        .add_elements([_stamped(4, 20)], tag="event")
        .advance_watermark_to(F + 1000, tag="event")
        # 970 s behind: too late.
        .add_elements([_stamped(5, 30)], tag="event")
        .add_elements([_stamped(6, 990)], tag="event")
        .advance_watermark_to_infinity(tag="event").advance_watermark_to_infinity(tag="tick")
    )
    p, outputs = _built(_options(sample_reference_dir), stream)
    ids = outputs["event"] | "Ids" >> beam.Map(lambda document: document["id"])
    assert_that(ids, equal_to_per_window({
        _first_window(): [1, 4],  # 4 arrived after the watermark passed its window's end
        _window(1): [2],
        _window(2): [3],
        _window(16): [6],
    }), label="PerWindow")
    letters = outputs["dead_letters"] | "Letters" >> beam.Map(lambda d: (d["reason"], d["record_id"], d["stage"]))
    assert_that(letters, equal_to([("too_late", 5, "lateness")]), label="DeadLetters")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, metrics.dead_letter_name("event", "too_late")) == 1
    assert _counter(result, metrics.late("event")) == 1
    assert _counter(result, metrics.documents("event")) == 5


def test_reference_refresh_changes_enrichment_from_its_interval_on(tmp_path, sample_tables):
    """The organisation is renamed in a new reference directory; the tick of the
    second interval reads it, so records of that interval on carry the new name.
    A third refresh fails to load (a broken directory) and keeps the last good
    snapshot."""
    v1 = write_reference(tmp_path / "v1", sample_tables)
    renamed = json.loads(json.dumps(sample_tables))
    renamed["organisation"][0]["name"] = "WBV Renamed"
    v2 = write_reference(tmp_path / "v2", renamed)
    broken = tmp_path / "broken"
    broken.mkdir()
    stream = (
        TestStream(output_tags=["event", "tick"])
        .advance_watermark_to(F, tag="event").advance_watermark_to(F, tag="tick")
        .add_elements([TimestampedValue({"tick": 0}, F)], tag="tick")
        .advance_watermark_to(F + INTERVAL, tag="tick")
        .add_elements([_stamped(1, 10)], tag="event")
        .advance_watermark_to(F + INTERVAL, tag="event")
        .add_elements([TimestampedValue({"reference_dir": str(v2)}, F + INTERVAL)], tag="tick")
        .advance_watermark_to(F + 2 * INTERVAL, tag="tick")
        .add_elements([_stamped(2, 70)], tag="event")
        .advance_watermark_to(F + 2 * INTERVAL, tag="event")
        .add_elements([TimestampedValue({"reference_dir": str(broken)}, F + 2 * INTERVAL)], tag="tick")
        .advance_watermark_to(F + 3 * INTERVAL, tag="tick")
        .add_elements([_stamped(3, 130)], tag="event")
        .advance_watermark_to_infinity(tag="event").advance_watermark_to_infinity(tag="tick")
    )
    p, outputs = _built(_options(v1), stream)
    names = outputs["event"] | "Names" >> beam.Map(lambda d: (d["id"], d["organisation"]["name"]))
    assert_that(names, equal_to_per_window({
        _first_window(): [(1, "WBV Tester")],
        _window(1): [(2, "WBV Renamed")],
        _window(2): [(3, "WBV Renamed")],  # the broken refresh kept v2
    }))
    result = p.run()
    result.wait_until_finish()
    # The job's start (the first window's own snapshot), v1's and v2's ticks.
    assert _counter(result, metrics.refresh("reference", "loaded")) == 3
    assert _counter(result, metrics.refresh("reference", "failed")) == 1


def test_the_first_interval_has_a_snapshot_when_no_tick_falls_in_it(sample_reference_dir):
    """Ticks from Pub/Sub carry their publish time, and the first one can come
    after the first interval has begun (the job was built in its last second).
    Records of the first interval are still enriched, with the snapshot loaded
    at the job's start. A tick serves the interval after it (aligned up), so the
    second interval, which no tick preceded, has no snapshot: its record is a dead
    letter saying so, not a crash."""
    stream = (
        TestStream(output_tags=["event", "tick"])
        .advance_watermark_to(F, tag="event").advance_watermark_to(F, tag="tick")
        .add_elements([_stamped(1, 10), _stamped(2, 59)], tag="event")
        .advance_watermark_to(F + INTERVAL, tag="event")
        # The first interval passes without a tick.
        .advance_watermark_to(F + INTERVAL + 5, tag="tick")
        .add_elements([TimestampedValue({"tick": 1}, F + INTERVAL + 5)], tag="tick")
        .advance_watermark_to(F + 3 * INTERVAL, tag="tick")
        .add_elements([_stamped(3, 70), _stamped(4, 130)], tag="event")
        .advance_watermark_to_infinity(tag="event").advance_watermark_to_infinity(tag="tick")
    )
    p, outputs = _built(_options(sample_reference_dir), stream)
    ids = outputs["event"] | "Ids" >> beam.Map(lambda document: document["id"])
    assert_that(ids, equal_to_per_window({_first_window(): [1, 2], _window(2): [4]}), label="PerWindow")
    letters = outputs["dead_letters"] | "Letters" >> beam.Map(lambda d: (d["reason"], d["record_id"], d["detail"]))
    assert_that(letters, equal_to([
        ("no_reference_snapshot", 3, "no reference data snapshot for this record's refresh interval"),
    ]), label="DeadLetters")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, metrics.refresh("reference", "loaded")) == 2


def test_a_snapshot_serves_the_interval_after_its_tick(tmp_path, sample_tables):
    """Records wait only for the tick at their interval's start, not for their
    interval to end: the snapshot of a tick serves the interval that begins at or
    after it. A tick in the middle of an interval (a manual refresh, ticks from
    Pub/Sub) therefore applies from the next interval on, and of several ticks
    before an interval start the newest wins."""
    def renamed(name: str) -> Path:
        tables = json.loads(json.dumps(sample_tables))
        tables["organisation"][0]["name"] = name
        return write_reference(tmp_path / name.replace(" ", "-"), tables)

    v2, v3, v4 = renamed("WBV Two"), renamed("WBV Three"), renamed("WBV Four")
    stream = (
        TestStream(output_tags=["event", "tick"])
        .advance_watermark_to(F, tag="event").advance_watermark_to(F, tag="tick")
        .add_elements([TimestampedValue({"tick": 0}, F)], tag="tick")
        .add_elements([TimestampedValue({"reference_dir": str(v2)}, F + INTERVAL)], tag="tick")
        .add_elements([TimestampedValue({"reference_dir": str(v3)}, F + INTERVAL + 20)], tag="tick")
        .add_elements([TimestampedValue({"reference_dir": str(v4)}, F + INTERVAL + 40)], tag="tick")
        .add_elements([TimestampedValue({"tick": 3}, F + 3 * INTERVAL)], tag="tick")
        .advance_watermark_to(F + 4 * INTERVAL, tag="tick")
        .add_elements([_stamped(1, 30), _stamped(2, 70), _stamped(3, 100), _stamped(4, 130)], tag="event")
        .advance_watermark_to_infinity(tag="event").advance_watermark_to_infinity(tag="tick")
    )
    p, outputs = _built(_options(tmp_path / "WBV-Two"), stream)
    names = outputs["event"] | "Names" >> beam.Map(lambda d: (d["id"], d["organisation"]["name"]))
    assert_that(names, equal_to_per_window({
        _first_window(): [(1, "WBV Two")],  # the start's and the tick at F read the default (v2)
        _window(1): [(2, "WBV Two"), (3, "WBV Two")],  # the tick at F + 60, not the later ones
        _window(2): [(4, "WBV Four")],  # the newest of the ticks after F + 60
    }))
    p.run().wait_until_finish()


def test_snapshot_windows_reach_back_to_the_epoch():
    windows = SnapshotWindows(INTERVAL, F)

    def assign(seconds: float) -> IntervalWindow:
        return windows.assign(type("Context", (), {"timestamp": Timestamp(seconds)})())[0]

    assert assign(F - 86_400) == _first_window()
    assert assign(F + 59) == _first_window()
    assert assign(F + 60) == _window(1)
    with pytest.raises(ValueError, match="aligned"):
        SnapshotWindows(INTERVAL, F + 1)


def test_each_record_window_maps_to_the_snapshot_of_its_start():
    """Beam maps a record window to a side-input window by assigning the record
    window's maximum timestamp; that must land on the window of the snapshot
    stamped with the record window's start, which ends right after it."""
    records, serving = SnapshotWindows(INTERVAL, F), SnapshotServingWindows(INTERVAL, F)

    def assign(windows: Any, micros: int) -> IntervalWindow:
        return windows.assign(type("Context", (), {"timestamp": Timestamp(micros=micros)})())[0]

    first = IntervalWindow(Timestamp(0), Timestamp(micros=F * 1_000_000 + 1))
    for k in range(4):
        record_window = _window(k) if k else _first_window()
        snapshot_window = assign(serving, record_window.max_timestamp().micros)
        start = (F + k * INTERVAL) * 1_000_000
        assert snapshot_window == (first if k == 0 else IntervalWindow(
            Timestamp(micros=start - INTERVAL * 1_000_000 + 1), Timestamp(micros=start + 1)))
        # The snapshot stamped with that start is in that window, and the window
        # is complete as soon as the watermark passes the start.
        assert assign(serving, start) == snapshot_window
        assert snapshot_window.max_timestamp() == Timestamp(micros=start)
        assert assign(records, start) == record_window
    assert assign(serving, (F - 86_400) * 1_000_000) == first


def _aligned(tick: Any, seconds: float, now: float = F) -> list[tuple[int, int, str]]:
    """(stamp, rank) in seconds and the snapshot of what ``align_to_interval`` yields."""
    out = align_to_interval((tick, "snapshot"), INTERVAL, F, Timestamp(seconds), now=now)
    return [(v.timestamp.micros, v.value[0], v.value[1]) for v in out]


def test_a_tick_serves_from_the_next_interval_start_and_ranks_by_its_own_time():
    assert _aligned({"tick": 1}, F + 61) == [((F + 120) * 10**6, (F + 61) * 10**6, "snapshot")]
    assert _aligned({"tick": 1}, F + 60) == [((F + 60) * 10**6, (F + 60) * 10**6, "snapshot")]


def test_the_start_snapshot_covers_the_intervals_before_the_first_tick_can():
    """Started 3 intervals and 10 s after the first refresh: the first interval,
    and the two before the one after now up to it, each ranked below any tick of
    its interval."""
    copies = _aligned(START_TICK, 0, now=F + 3 * INTERVAL + 10)
    starts = [F, F + 2 * INTERVAL, F + 3 * INTERVAL, F + 4 * INTERVAL]
    assert copies == [(a * 10**6, (a - INTERVAL) * 10**6 + 1, "snapshot") for a in starts]
    # Started in the first interval: the first two intervals.
    assert [c[0] for c in _aligned(START_TICK, 0, now=F + 5)] == [F * 10**6, (F + INTERVAL) * 10**6]


class _State:
    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value


def test_a_failed_refresh_keeps_the_last_good_snapshot(caplog):
    missing = OSError("reference/sim.json: no such file")
    loads = iter([missing, {"v": 2}, missing])

    def load(_tick: Any) -> Any:
        value = next(loads)
        if isinstance(value, Exception):
            raise value
        return value

    fn = _LoadKeepingLastGood("reference", load)
    fn.setup()
    state = _State()
    # No good snapshot yet: the tick fails (the runner retries it) instead of
    # enriching with nothing; no snapshot was pickled into the graph to fall back on.
    with pytest.raises(RefreshError, match="loading reference failed and there is no earlier snapshot"):
        list(fn.process((None, 0), timestamp=Timestamp(F), last_good=state))
    out = [v for k in (1, 2) for v in fn.process((None, k), timestamp=Timestamp(F + 60 * k), last_good=state)]
    assert [v.value for v in out] == [(1, {"v": 2}), (2, {"v": 2})]
    assert [v.timestamp for v in out] == [Timestamp(F + 60), Timestamp(F + 120)]
    assert "refreshing reference failed, keeping the previous snapshot: reference/sim.json: no such file" in caplog.text


def test_the_fixed_first_refresh_is_an_interval_start():
    assert datetime.fromtimestamp(F, tz=UTC) == datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert timedelta(seconds=F % INTERVAL) == timedelta(0)
