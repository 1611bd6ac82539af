"""Drop repeated records by id within an event-time horizon.

Upstream delivery is at-least-once (Pub/Sub redelivers, network elements resend),
so the same record id arrives more than once. Beam's ``DeduplicatePerKey`` keeps
the first record per id and forgets the id once the watermark passes the first
copy's event time plus the horizon, which bounds the state in streaming; in a
batch run the watermark only moves at the end, so every repeat in the input is
dropped. Events and usage records have separate id spaces and are deduplicated
separately. The number dropped is ``valid - unique`` in the metrics.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms import metrics
from transforms.records import Kind

DEFAULT_HORIZON_SECONDS = 6 * 3600


def _key_by_id(record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return record["id"], record


def _key_by_id_with_time(record: dict[str, Any], timestamp: Timestamp = beam.DoFn.TimestampParam,
                         ) -> tuple[int, tuple[dict[str, Any], int]]:
    # Microseconds, not the Timestamp: the shuffle's coder would pickle that.
    return record["id"], (record, timestamp.micros)


def _restamp(keyed: tuple[int, tuple[dict[str, Any], int]]) -> TimestampedValue:
    record_id, (record, micros) = keyed
    return TimestampedValue((record_id, record), Timestamp(micros=micros))


def _any_copy(copies: Any) -> Any:
    """One copy of a record id (associative: a combine may apply it to partial
    results). Which copy is kept is as arbitrary as the arrival order that
    ``DeduplicatePerKey`` keeps in a batch run; repeats are re-sends of the same
    record."""
    return next(iter(copies))


class _CountUnique(beam.DoFn):
    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def setup(self) -> None:
        self._unique = Metrics.counter(metrics.NAMESPACE, metrics.unique(self._kind))

    def process(self, keyed: tuple[int, dict[str, Any]]):
        self._unique.inc()
        yield keyed[1]


class DeduplicateById(beam.PTransform):
    """Records (with event-time timestamps) -> the first record of each id."""

    def __init__(self, kind: Kind, horizon_seconds: int = DEFAULT_HORIZON_SECONDS) -> None:
        super().__init__()
        if horizon_seconds <= 0:
            raise ValueError("the deduplication horizon must be positive")
        self._kind = kind
        self._horizon = horizon_seconds

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if records.is_bounded:
            # A combine's output is stamped with the end of its window, so each
            # copy carries its event time through it and gets it back after.
            first = (
                records
                | "KeyById" >> beam.Map(_key_by_id_with_time)
                | "FirstPerId" >> beam.CombinePerKey(_any_copy)
                | "RestoreEventTime" >> beam.Map(_restamp)
            )
        else:
            first = (
                records
                | "KeyById" >> beam.Map(_key_by_id).with_output_types(tuple[int, dict[str, Any]])
                | "FirstPerId" >> DeduplicatePerKey(event_time_duration=Duration(seconds=self._horizon))
            )
        return first | "CountUnique" >> beam.ParDo(_CountUnique(self._kind))
