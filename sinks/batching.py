"""Batches of routed documents per stream.

Every batching sink (REST, REST bulk, Kinesis) groups a stream's documents before
sending, keyed by stream id so one stream's batches never mix with another's.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from schemas.packed import pack_pairs, unpack_pairs
from sinks.base import DeliveryFn
from sinks.results import SinkOutputs, apply_sink


def _split(keyed: tuple[str, Iterable[Any]], batch_size: int) -> Iterator[tuple[str, list[Any]]]:
    key, values = keyed
    batch: list[Any] = []
    for value in values:
        batch.append(value)
        if len(batch) >= batch_size:
            yield key, batch
            batch = []
    if batch:
        yield key, batch


#: Batches a bounded run's group holds (see BatchPerStream.expand).
_BATCHES_PER_GROUP = 4


def _endpoint_of(value: Any) -> Any:
    """The endpoint id of a routed ``(kind, document)``, else the document id."""
    document = value[1] if isinstance(value, tuple) and len(value) == 2 else value
    if isinstance(document, dict):
        endpoint = document.get("endpoint")
        if isinstance(endpoint, dict) and "id" in endpoint:
            return endpoint["id"]
        return document.get("id")
    return None


def _shard_count(key: Any, counts: dict[Any, int], group_size: int) -> int:
    """Shards of a stream: enough for groups of about ``group_size`` values."""
    return max(1, -(-counts.get(key, 1) // group_size))


def _endpoint_shard(value: Any, shards: int) -> int:
    return zlib.crc32(repr(_endpoint_of(value)).encode()) % shards


def _shard_by_endpoint(keyed: tuple[Any, Any], counts: dict[Any, int], group_size: int) -> tuple[Any, Any]:
    key, value = keyed
    return (key, _endpoint_shard(value, _shard_count(key, counts, group_size))), value


def _split_shard(keyed: tuple[tuple[Any, int], Iterable[Any]], batch_size: int) -> Iterator[tuple[Any, list[Any]]]:
    (key, _shard), values = keyed
    return _split((key, values), batch_size)


def _chunk_size(keyed: tuple[Any, tuple[int, bytes]]) -> tuple[Any, int]:
    return keyed[0], keyed[1][0]


def _shard_chunk_by_endpoint(keyed: tuple[Any, tuple[int, bytes]], counts: dict[Any, int],
                             group_size: int) -> Iterator[tuple[tuple[Any, int], bytes]]:
    """A packed chunk's values split into the shards :func:`_shard_by_endpoint`
    would put each of them in, packed again."""
    key, (_, packed) = keyed
    shards = _shard_count(key, counts, group_size)
    slices: dict[int, list[Any]] = {}
    for value in unpack_pairs(packed):
        slices.setdefault(_endpoint_shard(value, shards), []).append(value)
    for shard, slice_ in slices.items():
        yield (key, shard), pack_pairs(slice_)


def _split_shard_slices(keyed: tuple[tuple[Any, int], Iterable[bytes]],
                        batch_size: int) -> Iterator[tuple[Any, list[Any]]]:
    sharded_key, slices = keyed
    return _split_shard((sharded_key, (value for packed in slices for value in unpack_pairs(packed))), batch_size)


class BatchPerStream(beam.PTransform):
    """``(stream_id, value)`` -> ``(stream_id, [value, ...])`` of at most
    ``batch_size`` values: ``GroupIntoBatches`` on unbounded input, where a batch
    must also leave after ``max_buffering_seconds``.

    A bounded input (a backfill, ``run-local`` over files, tests) has no latency to
    bound and ends at once, so it is grouped with ``GroupByKey`` and split in
    order. Reason: ``GroupIntoBatches`` always declares a processing-time timer,
    which sends the DirectRunner to its bundle-based executor, and there a key
    whose only batch is flushed by the end-of-window timer reaches a downstream
    ``GroupByKey`` after that has completed (``AssertionError`` in
    ``_GroupByKeyOnlyEvaluator``; apache/beam#28716, #36480). The output shape is the
    same either way.

    ``chunked``: a bounded input of ``(stream_id, (count, packed [value, ...]))``
    chunks (a chunked run's routing, ``transforms/routing.py``): counted and
    sharded by endpoint chunk by chunk, so the count and the shuffle move packed
    chunk slices (``transforms/chunks.py``), not values.
    """

    def __init__(self, batch_size: int, max_buffering_seconds: float | None, chunked: bool = False) -> None:
        super().__init__()
        self._batch_size = batch_size
        self._max_buffering_seconds = max_buffering_seconds
        self._chunked = chunked

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        if self._chunked:
            if not keyed.is_bounded:
                raise ValueError("chunked batching is for bounded input only")
            group_size = self._batch_size * _BATCHES_PER_GROUP
            counts = beam.pvalue.AsDict(
                keyed | "ChunkSizes" >> beam.Map(_chunk_size) | "CountPerStream" >> beam.CombinePerKey(sum))
            return (
                keyed
                | "ShardByEndpoint" >> beam.FlatMap(_shard_chunk_by_endpoint, counts, group_size)
                | "GroupByStream" >> beam.GroupByKey()
                | "Split" >> beam.FlatMap(_split_shard_slices, self._batch_size)
            )
        if keyed.is_bounded:
            # One group per stream would hand the whole stream to one call as a
            # single element (on the FnApi runner, decoded at once: 10 GiB for a
            # million documents, make bench). Groups of a few batches instead,
            # each endpoint's documents in one group so they stay in one order.
            counts = beam.pvalue.AsDict(keyed | "CountPerStream" >> beam.combiners.Count.PerKey())
            return (
                keyed
                | "ShardByEndpoint" >> beam.Map(_shard_by_endpoint, counts, self._batch_size * _BATCHES_PER_GROUP)
                | "GroupByStream" >> beam.GroupByKey()
                | "Split" >> beam.FlatMap(_split_shard, self._batch_size)
            )
        return keyed | "GroupIntoBatches" >> beam.GroupIntoBatches(
            self._batch_size, max_buffering_duration_secs=self._max_buffering_seconds
        )


class BatchingSink(beam.PTransform):
    """The expand of every sink that sends per-stream batches (REST, REST bulk,
    Kinesis): :class:`BatchPerStream`, then the sink's delivery DoFn under
    ``send_label``. The labels are what Dataflow's ``--update`` matches: keep them."""

    def __init__(self, streams: pvalue.AsSideInput, fn: DeliveryFn, batch_size: int, max_buffering_seconds: float,
                 chunked: bool, send_label: str = "Send") -> None:
        super().__init__()
        self._batch = BatchPerStream(batch_size, max_buffering_seconds, chunked)
        self._send = (send_label, fn, streams)

    @property
    def fn(self) -> DeliveryFn:
        """The delivery DoFn (the recovery step sends parked batches through it)."""
        return self._send[1]

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        return apply_sink(routed | "BatchPerStream" >> self._batch, *self._send)
