"""Gathering what the steps report into windows that fire once.

The per-stream windows of the S3 and DataDog sinks are in ``sinks/windows.py``:
only those sinks use them.
"""

from __future__ import annotations

import time
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import FixedWindows, GlobalWindows, TimestampedValue


def _stamp_now(element: Any) -> TimestampedValue:
    return TimestampedValue(element, time.time())


class GatherWindows(beam.PTransform):
    """Re-window what the delivery steps report for gathering: the global window
    in a batch run; in a streaming run fixed windows of *processing* time, so a
    result of a late pane (whose event time is long past) still lands in the
    current window instead of being dropped as late, and every gathered window
    fires exactly once (its files and status update are never overwritten)."""

    def __init__(self, window_seconds: int | None) -> None:
        super().__init__()
        self._window_seconds = window_seconds

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        if self._window_seconds is None:
            return pcoll | "Global" >> beam.WindowInto(GlobalWindows())
        return (
            pcoll
            # A DoFn returning a TimestampedValue gets windows from its input's
            # WindowFn: unwindowed first, so a per-element WindowFn upstream
            # (which reads sizes from keyed batches) never sees a result.
            | "Unwindow" >> beam.WindowInto(GlobalWindows())
            | "StampArrival" >> beam.Map(_stamp_now)
            | "Fixed" >> beam.WindowInto(FixedWindows(self._window_seconds))
        )
