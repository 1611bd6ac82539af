"""The streaming graph driven by ``TestStream``: the same ``build_pipeline`` as
batch and Pub/Sub runs, with the raw events and the refresh ticks (the lateness
gate's heartbeats) coming from a test stream whose watermark the test moves; and
the refreshing snapshots the streaming steps read (``schemas/snapshots.py``),
stepped through intervals with a test clock.

Times: the refresh interval is 60 s and the first refresh is at ``F``. Records
are placed relative to ``F``.
"""

from __future__ import annotations

import functools
import json
import pickle
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics import MetricsFilter
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metricbase import MetricName
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import statesampler
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.counters import CounterFactory, CounterName

from pipelines.data_streamer import build_pipeline
from schemas import metrics, snapshots
from schemas.snapshots import RefreshError, RefreshingSnapshot, current
from tests.conftest import write_reference
from tests.guide_samples import RAW_EVENTS
from transforms.enrich import _EnrichFn
from transforms.parse import parse_record
from transforms.reference import load_reference_data

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


def test_on_time_late_and_too_late_records(sample_reference_dir):
    """On time: delivered. Late (behind the watermark, within the allowed
    lateness): delivered and counted. Too late: a dead letter with the reason."""
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
    # 4 arrived after the watermark had passed it: late, delivered and counted.
    assert_that(ids, equal_to([1, 2, 3, 4, 6]), label="Documents")
    letters = outputs["dead_letters"] | "Letters" >> beam.Map(lambda d: (d["reason"], d["record_id"], d["stage"]))
    assert_that(letters, equal_to([("too_late", 5, "lateness")]), label="DeadLetters")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, metrics.dead_letter_name("event", "too_late")) == 1
    assert _counter(result, metrics.late("event")) == 1
    assert _counter(result, metrics.documents("event")) == 5


class _Clock:
    """``schemas.snapshots.clock``, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def test_clock(monkeypatch) -> _Clock:
    clock = _Clock(F + 5)
    monkeypatch.setattr(snapshots, "clock", clock)
    return clock


@pytest.fixture
def counters():
    """Beam's counters of the calling thread, as a bundle has them: a state
    sampler's scoped container (what the SDK harness sets on a bundle thread)."""
    container = MetricsContainer("step")
    sampler = statesampler.StateSampler("test", CounterFactory())
    statesampler.set_current_tracker(sampler)
    with sampler.scoped_state(CounterName("step"), "process", metrics_container=container):

        def read(name: str) -> int:
            return container.get_counter(MetricName(metrics.NAMESPACE, name)).get_cumulative()

        yield read
    statesampler.set_current_tracker(None)


def _org_name(fn: _EnrichFn, record_id: int, ref: Any) -> str:
    record, _ = parse_record("event", raw_event(record_id, 10))
    (document,) = list(fn.process(record, ref))
    return document["organisation"]["name"]


def _rename(directory: Path, tables: dict[str, Any], name: str) -> None:
    renamed = json.loads(json.dumps(tables))
    renamed["organisation"][0]["name"] = name
    write_reference(directory, renamed)


def test_a_reference_change_applies_from_the_next_interval_without_holding_records(
        tmp_path, sample_tables, test_clock, counters):
    """The real enrichment step with a refreshing snapshot: the files change in
    the first interval; records keep the snapshot of the job's start until the
    next interval begins, then the reload runs in the background (records go on
    with the previous snapshot meanwhile) and every later record has the new
    name. A copy of the snapshot (what a worker unpickles) shares the process's
    snapshot."""
    directory = write_reference(tmp_path / "reference", sample_tables)
    reference = RefreshingSnapshot("reference", functools.partial(load_reference_data, str(directory)), INTERVAL)
    fn = _EnrichFn("event")
    fn.setup()
    assert _org_name(fn, 1, reference) == "WBV Tester"
    _rename(directory, sample_tables, "WBV Renamed")
    test_clock.now = F + INTERVAL - 1
    assert _org_name(fn, 2, reference) == "WBV Tester", "the same interval keeps its snapshot"
    assert counters(metrics.refresh("reference", "loaded")) == 1

    test_clock.now = F + INTERVAL + 1
    copy = pickle.loads(pickle.dumps(reference))
    current(copy)  # starts the reload
    copy.wait_for_reload(10)
    assert _org_name(fn, 3, copy) == "WBV Renamed"
    assert _org_name(fn, 4, reference) == "WBV Renamed"
    assert counters(metrics.refresh("reference", "loaded")) == 2


def test_a_slow_reload_holds_no_record_back(test_clock):
    """While a reload runs, every read gets the previous snapshot at once."""
    release = threading.Event()
    loads: list[int] = []

    def load() -> dict[str, int]:
        loads.append(len(loads) + 1)
        if len(loads) > 1:
            assert release.wait(10)
        return {"version": len(loads)}

    snapshot = RefreshingSnapshot("reference", load, INTERVAL)
    assert snapshot.get() == {"version": 1}
    test_clock.now = F + INTERVAL
    for _ in range(3):
        assert snapshot.get() == {"version": 1}
    assert loads == [1, 2], "one reload per interval, however many reads"
    release.set()
    snapshot.wait_for_reload(10)
    assert snapshot.get() == {"version": 2}


def _next_outcome(outcomes: list[Any]) -> Any:
    """A loader's next outcome: a snapshot, or the error it raises."""
    value = outcomes.pop(0)
    if isinstance(value, Exception):
        raise value
    return value


def test_a_failed_refresh_keeps_the_last_good_snapshot_until_the_next_interval(test_clock, counters, caplog):
    outcomes: list[Any] = [{"v": 1}, OSError("reference/sim.json: no such file"), {"v": 3}]

    snapshot = RefreshingSnapshot("reference", functools.partial(_next_outcome, outcomes), INTERVAL)
    assert snapshot.get() == {"v": 1}
    test_clock.now = F + INTERVAL
    snapshot.get()
    snapshot.wait_for_reload(10)
    assert snapshot.get() == {"v": 1}
    test_clock.now = F + INTERVAL + 30
    assert snapshot.get() == {"v": 1}, "no second attempt in the interval that failed"
    assert "refreshing reference failed, keeping the previous snapshot: reference/sim.json: no such file" in caplog.text
    test_clock.now = F + 2 * INTERVAL
    snapshot.get()
    snapshot.wait_for_reload(10)
    assert snapshot.get() == {"v": 3}
    assert counters(metrics.refresh("reference", "failed")) == 1
    assert counters(metrics.refresh("reference", "loaded")) == 2


def test_no_first_snapshot_fails_the_bundle_for_the_runner_to_retry(test_clock, counters):
    """No good snapshot yet: the read fails (the runner retries the bundle)
    instead of enriching with nothing; nothing was pickled into the graph to fall
    back on. The retry loads again."""
    outcomes: list[Any] = [OSError("reference/sim.json: no such file"), {"v": 2}]

    snapshot = RefreshingSnapshot("reference", functools.partial(_next_outcome, outcomes), INTERVAL)
    with pytest.raises(RefreshError, match=r"loading reference failed and there is no earlier snapshot .*no such"):
        snapshot.get()
    assert snapshot.get() == {"v": 2}
    assert counters(metrics.refresh("reference", "failed")) == 1


def test_a_batch_side_input_is_its_own_snapshot():
    assert current({"v": 1}) == {"v": 1}


def _big(size: int) -> dict[str, str]:
    return {"big": "x" * size}


def test_a_snapshot_pickles_without_its_data(test_clock):
    """The job graph carries the loader, never the snapshot (a fleet's reference
    data can be larger than a runner accepts for a graph)."""
    snapshot = RefreshingSnapshot("reference", functools.partial(_big, 1_000_000), INTERVAL)
    assert len(snapshot.get()["big"]) == 1_000_000
    assert len(pickle.dumps(snapshot)) < 10_000
    with pytest.raises(ValueError, match="positive"):
        RefreshingSnapshot("reference", dict, 0)


def test_the_fixed_first_refresh_is_an_interval_start():
    assert datetime.fromtimestamp(F, tz=UTC) == datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert timedelta(seconds=F % INTERVAL) == timedelta(0)
