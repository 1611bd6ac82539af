"""The refresh interval of a streaming run and its ticks.

Every ``--refresh_interval_seconds`` each worker re-reads the reference data, the
stream configuration and the stream holds (``schemas/snapshots.py``, which says
why the job holds them per worker rather than as Beam side inputs). The ticks of
the same interval (:class:`Ticks`, a ``PeriodicImpulse``; Pub/Sub ticks on the
DirectRunner) are the lateness gate's heartbeats and the recovery step's clock.
"""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.transforms.periodicsequence import PeriodicImpulse

DEFAULT_REFRESH_SECONDS = 300


def first_refresh(interval_seconds: int, now: float | None = None) -> int:
    """The start of the interval the job starts in (epoch seconds)."""
    now = time.time() if now is None else now
    return int(now) - int(now) % interval_seconds


class Ticks(beam.PTransform):
    """PBegin -> a tick every ``interval_seconds`` from ``first_seconds`` on
    (``PeriodicImpulse``, in the global window): the lateness gate's heartbeats
    and the recovery step's clock."""

    def __init__(self, interval_seconds: int, first_seconds: int) -> None:
        super().__init__()
        self._interval = interval_seconds
        self._first = first_seconds

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "PeriodicImpulse" >> PeriodicImpulse(
            start_timestamp=self._first, fire_interval=self._interval, apply_windowing=False
        )
