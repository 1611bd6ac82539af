"""Windowing helpers: per-element fixed windows (``sinks/windows.py``) and
the processing-time windows that delivery results are gathered in."""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from sinks.windows import GroupPerElementWindow, size_from_key, window_of
from transforms.windows import GatherWindows

T = 1_793_520_000  # 2026-11-01T08:00:00Z


@dataclass(frozen=True)
class Result:
    """Stands for a delivery result: not subscriptable, unlike the keyed batches."""

    stream_id: str


def test_per_element_windows_are_epoch_aligned_fixed_windows_of_the_keys_size():
    assert window_of(Timestamp(T + 299), 300) == IntervalWindow(Timestamp(T), Timestamp(T + 300))
    assert window_of(Timestamp(T + 300), 300) == IntervalWindow(Timestamp(T + 300), Timestamp(T + 600))
    assert window_of(Timestamp(T + 59), 60) == IntervalWindow(Timestamp(T), Timestamp(T + 60))
    assert size_from_key((("s", "events", 300), "doc")) == 300


_COLLECTED: dict[int, list[object]] = {}


def _collect(pcoll: beam.PCollection) -> list[object]:
    bucket: list[object] = []
    _COLLECTED[id(bucket)] = bucket
    key = id(bucket)
    pcoll | f"Collect{key}" >> beam.Map(lambda value: _COLLECTED[key].append(value))
    return bucket


def _panes(groups: beam.PCollection) -> beam.PCollection:
    return groups | "Panes" >> beam.Map(
        lambda g: (g.key, int(g.window.start), int(g.window.end), g.pane.index, g.pane.timing, sorted(g.values)))


def test_each_key_gets_its_own_windows_an_on_time_pane_and_late_panes_within_the_lateness():
    """The state-and-timer windows fire as Beam's windowing would: one on-time
    pane per key and window when the watermark passes its end, each at the
    window's maximum timestamp; what arrives behind the watermark within the
    lateness comes as late panes (index 1, 2, ...), never again in pane 0."""
    stream = (
        TestStream()
        .advance_watermark_to(T)
        .add_elements([TimestampedValue((("a", 60), "a1"), T + 1), TimestampedValue((("a", 60), "a2"), T + 59),
                       TimestampedValue((("a", 60), "a3"), T + 61), TimestampedValue((("b", 300), "b1"), T + 61)])
        .advance_watermark_to(T + 120)
        .add_elements([TimestampedValue((("a", 60), "late1"), T + 30)])
        .advance_processing_time(5)
        .add_elements([TimestampedValue((("a", 60), "late2"), T + 31)])
        .advance_processing_time(5)
        .advance_watermark_to_infinity()
    )
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    groups = p | stream | "Group" >> GroupPerElementWindow(size_from_key, allowed_lateness_seconds=600)
    # Collected in this process (the in-process runner): assert_that's own
    # global-window grouping fires before the late panes do.
    fired = _collect(_panes(groups))
    stamped = _collect(groups | "Stamps" >> beam.Map(
        lambda g, ts=beam.DoFn.TimestampParam: g.window.max_timestamp() == ts))
    p.run().wait_until_finish()
    on_time, late = PaneInfoTiming.ON_TIME, PaneInfoTiming.LATE
    assert sorted(fired, key=repr) == sorted([
        (("a", 60), T, T + 60, 0, on_time, ["a1", "a2"]),
        (("a", 60), T + 60, T + 120, 0, on_time, ["a3"]),
        (("b", 300), T, T + 300, 0, on_time, ["b1"]),
        # Late elements of one moment (here: of the same wall-clock instant) share a pane.
        (("a", 60), T, T + 60, 1, late, ["late1", "late2"]),
    ], key=repr)
    assert stamped == [True] * 4, "each pane at its window's maximum timestamp"


def test_a_bounded_run_fires_each_window_once():
    p = TestPipeline()  # the batch runner of the tests (tools/runners.py)
    elements = [TimestampedValue((("s", 10), i), T + i) for i in range(25)]
    groups = p | beam.Create(elements) | "Group" >> GroupPerElementWindow(size_from_key)
    assert_that(_panes(groups), equal_to([
        (("s", 10), T, T + 10, 0, PaneInfoTiming.ON_TIME, list(range(10))),
        (("s", 10), T + 10, T + 20, 0, PaneInfoTiming.ON_TIME, list(range(10, 20))),
        (("s", 10), T + 20, T + 30, 0, PaneInfoTiming.ON_TIME, list(range(20, 25))),
    ]))
    p.run().wait_until_finish()


def test_gathering_results_of_per_element_windows_does_not_reassign_them_by_key():
    """Results computed in a stream's per-element windows (S3 rotation, DataDog
    intervals) are gathered in windows of processing time. Stamping them with the
    arrival time must not assign windows through the upstream WindowFn, which
    reads the window size from a keyed batch and fails on a result (it once broke
    a streaming run with "'Result' object is not subscriptable")."""
    stream = (
        TestStream()
        .advance_watermark_to(T)
        .add_elements([TimestampedValue((("s3-a", 60), "doc-1"), T + 1),
                       TimestampedValue((("s3-b", 300), "doc-2"), T + 2)])
        .advance_watermark_to_infinity()
    )
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    results = (
        p
        | stream
        | "PerStreamWindows" >> GroupPerElementWindow(size_from_key)
        | "Deliver" >> beam.Map(lambda group: Result(group.key[0]))
        | "Gather" >> GatherWindows(5)
        | "Ids" >> beam.Map(lambda result: result.stream_id)
    )
    ids = _collect(results)  # in this process: see the test above
    p.run().wait_until_finish()
    assert sorted(ids) == ["s3-a", "s3-b"]
