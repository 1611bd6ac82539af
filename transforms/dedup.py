"""Drop repeated records by id within an event-time horizon.

Upstream delivery is at-least-once (Pub/Sub redelivers, network elements resend),
so the same record id arrives more than once. Beam's ``DeduplicatePerKey`` keeps
the first record per id and forgets the id once the watermark passes the first
copy's event time plus the horizon, which bounds the state in streaming; in a
batch run the watermark only moves at the end, so every repeat in the input is
dropped. Events and usage records have separate id spaces and are deduplicated
separately. The number dropped is ``valid - unique`` in the metrics.

A chunked bounded run (``transforms/chunks.py``) de-duplicates with one shuffle of
chunk slices: each chunk is split by ``id % DEDUP_SHARDS``, the (packed) slices of
a shard are grouped, and the first copy of each id in the shard is kept. Every copy of an
id lands in the same shard, so the result is the same as per record, and the
shuffle moves a few thousand slices instead of a million records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from schemas import metrics
from schemas.packed import pack_pairs, unpack_pairs
from schemas.records import Kind

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


#: Shards of a chunked de-duplication: how many groups the records are split into
#: (the parallelism of the steps after it on a distributed runner, until the next
#: shuffle), and about how many slices each chunk becomes.
DEDUP_SHARDS = 32


def _slices_by_shard(chunk: list[tuple[dict[str, Any], int]]) -> Iterator[tuple[int, bytes]]:
    slices: dict[int, list[Any]] = defaultdict(list)
    for pair in chunk:
        slices[pair[0]["id"] % DEDUP_SHARDS].append(pair)
    for shard, pairs in slices.items():
        yield shard, pack_pairs(pairs)


def _first_per_id(keyed: tuple[int, Iterable[bytes]], chunk_size: int) -> Iterator[list[tuple[dict[str, Any], int]]]:
    """The first copy of each id of one shard, in chunks of ``chunk_size``."""
    _, slices = keyed
    seen: set[int] = set()
    chunk: list[tuple[dict[str, Any], int]] = []
    for packed in slices:
        for pair in unpack_pairs(packed):
            record_id = pair[0]["id"]
            if record_id in seen:
                continue
            seen.add(record_id)
            chunk.append(pair)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


class _CountUnique(beam.DoFn):
    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def setup(self) -> None:
        self._unique = Metrics.counter(metrics.NAMESPACE, metrics.unique(self._kind))

    def process(self, keyed: tuple[int, dict[str, Any]]):
        self._unique.inc()
        yield keyed[1]


class _CountUniqueChunk(_CountUnique):
    def process(self, chunk: list[tuple[dict[str, Any], int]]):
        self._unique.inc(len(chunk))
        yield chunk


class DeduplicateById(beam.PTransform):
    """Records (with event-time timestamps) -> the first record of each id; with
    ``chunk_size``, chunks of ``(record, event time in ms)`` pairs of a bounded
    input -> chunks of the first pair of each id, of at most that size."""

    def __init__(self, kind: Kind, horizon_seconds: int = DEFAULT_HORIZON_SECONDS,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        if horizon_seconds <= 0:
            raise ValueError("the deduplication horizon must be positive")
        self._kind = kind
        self._horizon = horizon_seconds
        self._chunk_size = chunk_size

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if self._chunk_size is not None:
            if not records.is_bounded:
                raise ValueError("chunked de-duplication is for bounded input only")
            # Hand-written over DeduplicatePerKey/CombinePerKey: those shuffle one
            # element per record, the cost this path exists to avoid.
            return (
                records
                | "SliceByShard" >> beam.FlatMap(_slices_by_shard)
                | "GroupShards" >> beam.GroupByKey()
                | "FirstPerId" >> beam.FlatMap(_first_per_id, self._chunk_size)
                | "CountUnique" >> beam.ParDo(_CountUniqueChunk(self._kind))
            )
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
