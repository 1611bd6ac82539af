"""Windowing helpers (``transforms/windows.py``): per-element fixed windows and
the processing-time windows that delivery results are gathered in."""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from sinks.windows import PerElementFixedWindows, size_from_key
from transforms.windows import GatherWindows

T = 1_793_520_000  # 2026-11-01T08:00:00Z


@dataclass(frozen=True)
class Result:
    """Stands for a delivery result: not subscriptable, unlike the keyed batches."""

    stream_id: str


def _assign(seconds: int, size: int) -> IntervalWindow:
    windows = PerElementFixedWindows(size_from_key)
    context = type("Context", (), {"timestamp": Timestamp(seconds), "element": (("s", size), "doc")})()
    return windows.assign(context)[0]


def test_per_element_windows_are_epoch_aligned_fixed_windows_of_the_keys_size():
    assert _assign(T + 299, 300) == IntervalWindow(Timestamp(T), Timestamp(T + 300))
    assert _assign(T + 300, 300) == IntervalWindow(Timestamp(T + 300), Timestamp(T + 600))
    assert _assign(T + 59, 60) == IntervalWindow(Timestamp(T), Timestamp(T + 60))


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
        | "PerStreamWindows" >> beam.WindowInto(PerElementFixedWindows(size_from_key))
        | "Deliver" >> beam.Map(lambda batch: Result(batch[0][0]))
        | "Gather" >> GatherWindows(5)
        | "Ids" >> beam.Map(lambda result: result.stream_id)
    )
    assert_that(results, equal_to(["s3-a", "s3-b"]))
    p.run().wait_until_finish()
