"""Chunks: how a bounded run carries records between its per-record steps.

A file read or a backfill has no latency to bound, only a cost per record, and
on Beam's Python runners most of that cost is the runner's own work per element
(encoding it between stages, its windowed value, each step's call), not ours
(``make bench``'s profile in docs/benchmarks.md). So a bounded run carries records from the
read to the sinks in chunks of up to :data:`CHUNK_SIZE`: parse, de-duplicate,
enrich and route run once per chunk, their per-record functions unchanged, and
every invalid record still becomes its own dead letter
(``transforms/documents.py``, ``transforms/routing.py``). The batching sinks
(REST, REST bulk, Kinesis) shard the routed chunks by endpoint and split them into
their batches (``sinks/batching.py``); S3, DataDog and parked documents get
single elements stamped with their event time, as do the documents a caller asks
for one by one (:class:`Unchunk`).

A streaming run keeps single elements: there a record must not wait for a chunk
to fill.

Inside a chunk, a record travels as ``(value, event time in epoch ms)``: a
chunk element has one timestamp, so each record's own rides along with it.

Where a chunk is shuffled (the de-duplication, the sinks' batching) it travels
packed: the JSON of its pairs (:func:`schemas.packed.pack_pairs`), which Beam moves as plain
bytes. orjson turns a
chunk of a thousand documents into bytes and back in about 4 ms; Beam's
``FastPrimitivesCoder`` took 12 ms for the same chunk, counting the size estimate
it makes of every element it samples, which for a few large elements is all of
them. Records and documents are JSON values by construction (validation rejects
integers beyond 64 bits and non-finite floats), so nothing is lost but the
difference between a tuple and a list, which :func:`schemas.packed.unpack_pairs` restores for
the pairs themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

#: Records per chunk. Large enough that the runner's per-element work is spread
#: over many records, small enough that a chunk of documents stays a few MB.
CHUNK_SIZE = 1_000


class Chunk(beam.PTransform):
    """Elements -> lists of up to ``size`` of them, with Beam's ``BatchElements``
    at a fixed size (its adaptive sizing targets a downstream call's latency,
    which is not what a chunk is for)."""

    def __init__(self, size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self._size = size

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        return elements | "Batch" >> beam.BatchElements(min_batch_size=self._size, max_batch_size=self._size)


def event_time(event_ms: int) -> Timestamp:
    """The Beam timestamp of an event time in epoch ms, exactly (``ms / 1000.0``
    as a float can land a microsecond early)."""
    return Timestamp(micros=event_ms * 1000)


def _unchunk(chunk: list[tuple[Any, int]]) -> Iterator[TimestampedValue]:
    for value, event_ms in chunk:
        yield TimestampedValue(value, event_time(event_ms))


class Unchunk(beam.PTransform):
    """Chunks of ``(value, event time in ms)`` -> each value, stamped with its
    event time."""

    def expand(self, chunks: beam.PCollection) -> beam.PCollection:
        return chunks | "Split" >> beam.FlatMap(_unchunk)


def document_lines(chunk: list[tuple[dict[str, Any], int]]) -> bytes:
    """A chunk of ``(document, event time)`` pairs as JSON lines without the last
    newline (a text sink adds it): written as one element, read as one document a
    line."""
    return b"\n".join(orjson.dumps(document) for document, _ in chunk)
