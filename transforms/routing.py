"""Route documents to the customers' data streams.

Each document fans out to every active stream of its organisation whose stream
type and filters it matches; a document that matches none is counted as
filtered. The stream configuration is a side input (one :class:`StreamConfig`
snapshot), so a later refresh can replace it without touching the graph.

The routed element has the shape its sink branch needs, so no branch has to
look the stream up again just to key or window its elements:

- ``rest_api``, ``rest_api_bulk``, ``aws_kinesis``: ``(stream_id, (kind, document))``
- ``aws_s3``: ``((stream_id, kind, rotation_seconds), document)``
- ``datadog``: ``((stream_id, metrics_interval_seconds), document)`` (usage only)

A stream that is paused (by the customer), deactivated (by the customer, or by
an earlier run's status after its destination kept failing), or flagged for
historic data whose history is not delivered yet (``awaiting_history``; the
holds are a :class:`transforms.status.StreamHolds`) receives nothing live: its
documents go to the ``parked`` output as ``(stream_id, (api_type, reason, token,
(kind, document)))`` and are kept for re-drive, the way emnify keeps a paused
stream's records.

A chunked bounded run (``transforms/chunks.py``) routes chunks of ``(document,
event time in ms)`` pairs. The batching sinks (:data:`CHUNKED_API_TYPES`) then
take one element per chunk and stream, ``(stream_id, (count, packed [(kind,
document), ...]))``, which their bounded batching splits by endpoint
(``sinks/batching.py``); every other output gets single elements stamped
with their event time, as above.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from schemas import metrics
from schemas.delivery import AWAITING_HISTORY, STREAM_DEACTIVATED, STREAM_PAUSED
from schemas.packed import pack_pairs
from schemas.records import Kind, quote
from schemas.snapshots import RefreshingSnapshot, current
from schemas.streams import (
    API_TYPES,
    DEFAULT_LIMITS,
    MAX_CONFIG_BYTES,
    DataStream,
    StreamConfig,
    StreamConfigError,
    StreamLimits,
    parse_stream_config,
)
from transforms.chunks import event_time
from transforms.status import StreamHolds


def load_stream_config(path: str, limits: StreamLimits = DEFAULT_LIMITS) -> StreamConfig:
    """Read and check a JSON or YAML stream configuration (local, gs://, s3://)
    of at most ``limits`` streams, or the stream store of a database URL
    (``--streams_db``: ``schemas/stream_store.py``); workers load it too, so the
    limits a job was started with travel with its loaders."""
    if is_database_url(path):
        from schemas.stream_store import load_stream_config_db

        return load_stream_config_db(path, limits)
    try:
        with FileSystems.open(path) as handle:
            # One byte over the limit is enough to refuse the file unread.
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except Exception as err:  # noqa: BLE001 - whatever the filesystem raises, the message names the file
        raise StreamConfigError(f"{path}: cannot read the stream configuration: "
                                f"{type(err).__name__}: {quote(str(err), 200)}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise StreamConfigError(f"{path}: larger than the {MAX_CONFIG_BYTES:,} bytes a stream configuration may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StreamConfigError(f"{path}: cannot read the stream configuration: not valid UTF-8 at byte "
                                f"{err.start:,}") from None
    return parse_stream_config(text, source=path, limits=limits)


#: URL schemes of the databases the stream store runs on (``--streams_db``).
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")


def is_database_url(source: str | None) -> bool:
    """Whether a stream configuration source is a database (``sqlite:///...``,
    ``postgresql+psycopg://...``) rather than a file."""
    if not source or "://" not in source:
        return False
    return source.split("://", 1)[0].split("+", 1)[0].lower() in DATABASE_SCHEMES


class LoadStreamConfig(beam.PTransform):
    """A one-element PCollection with the :class:`StreamConfig` of at most
    ``limits`` streams, loaded on a worker; use it as ``AsSingleton``."""

    def __init__(self, path: str, limits: StreamLimits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self._path = path
        self._limits = limits

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "Path" >> beam.Create([self._path]) | "Load" >> beam.Map(load_stream_config, self._limits)


PARKED = "parked"
#: API types whose sinks take chunks of routed values in a chunked bounded run.
CHUNKED_API_TYPES = ("rest_api", "rest_api_bulk", "aws_kinesis")


def routed_element(stream: DataStream, kind: str, document: dict[str, Any]) -> Any:
    """The element the sink branch of ``stream.api_type`` takes (module docstring)."""
    if stream.api_type == "aws_s3":
        return (stream.id, kind, stream.batching.rotation_seconds), document
    if stream.api_type == "datadog":
        return (stream.id, stream.batching.metrics_interval_seconds), document
    return stream.id, (kind, document)


def route(
    kind: Kind, document: dict[str, Any], config: StreamConfig, deactivated: Mapping[str, str] | None = None
) -> list[tuple[str, Any]]:
    """(output tag, element) for every stream of the document's organisation that
    wants it: the API type for active streams, ``parked`` for the others."""
    routed = []
    for stream in config.by_organisation.get(document["organisation"]["id"], ()):
        if not stream.wants(kind, document):
            continue
        token = (deactivated or {}).get(stream.id)
        if stream.state == "paused" or stream.state == "deactivated" or token:
            reason = STREAM_PAUSED if stream.state == "paused" else STREAM_DEACTIVATED
            routed.append((PARKED, (stream.id, (stream.api_type, reason, token, (kind, document)))))
            continue
        if (stream.historic_data and isinstance(deactivated, StreamHolds)
                and stream.id not in deactivated.history_delivered):
            routed.append((PARKED, (stream.id, (stream.api_type, AWAITING_HISTORY, None, (kind, document)))))
            continue
        routed.append((stream.api_type, routed_element(stream, kind, document)))
    return routed


def _stream_of(element: Any) -> str:
    return element[0] if isinstance(element[0], str) else element[0][0]


class _RouteFn(beam.DoFn):
    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def setup(self) -> None:
        self._routed = Metrics.counter(metrics.NAMESPACE, metrics.routed(self._kind))
        self._routed_documents = Metrics.counter(metrics.NAMESPACE, metrics.routed_documents(self._kind))
        self._filtered = Metrics.counter(metrics.NAMESPACE, metrics.filtered(self._kind))
        self._per_stream: dict[str, Any] = {}  # stream id -> its "routed" counter

    def process(
        self, document: dict[str, Any], config: StreamConfig | RefreshingSnapshot,
        deactivated: Mapping[str, str] | RefreshingSnapshot,
    ) -> Iterator[pvalue.TaggedOutput]:
        routed = route(self._kind, document, current(config), current(deactivated))
        if not routed:
            self._filtered.inc()
            return
        self._routed_documents.inc()
        self._routed.inc(len(routed))
        for tag, element in routed:
            self._count_stream(_stream_of(element))
            yield pvalue.TaggedOutput(tag, element)

    def _count_stream(self, stream_id: str, documents: int = 1) -> None:
        counter = self._per_stream.get(stream_id)
        if counter is None:
            counter = Metrics.counter(metrics.NAMESPACE, metrics.stream_measure(stream_id, "routed"))
            self._per_stream[stream_id] = counter
        counter.inc(documents)


class _RouteChunkFn(_RouteFn):
    """A chunk of ``(document, event time in ms)`` pairs -> per batching stream one
    ``(stream_id, (count, packed [(kind, document), ...]))``, and single stamped
    elements for the other outputs; counted exactly as :class:`_RouteFn` counts
    each document."""

    def process(
        self, chunk: list[tuple[dict[str, Any], int]], config: StreamConfig, deactivated: Mapping[str, str]
    ) -> Iterator[pvalue.TaggedOutput]:
        by_stream: dict[tuple[str, str], list[Any]] = {}
        per_stream: Counter[str] = Counter()
        routed_documents = routed_total = 0
        config, deactivated = current(config), current(deactivated)
        for document, event_ms in chunk:
            routed = route(self._kind, document, config, deactivated)
            if not routed:
                continue
            routed_documents += 1
            routed_total += len(routed)
            for tag, element in routed:
                stream_id = _stream_of(element)
                per_stream[stream_id] += 1
                if tag in CHUNKED_API_TYPES:
                    by_stream.setdefault((tag, stream_id), []).append(element[1])
                else:
                    yield pvalue.TaggedOutput(tag, TimestampedValue(element, event_time(event_ms)))
        for (tag, stream_id), values in by_stream.items():
            yield pvalue.TaggedOutput(tag, (stream_id, (len(values), pack_pairs(values))))
        if len(chunk) > routed_documents:
            self._filtered.inc(len(chunk) - routed_documents)
        if routed_documents:
            self._routed_documents.inc(routed_documents)
            self._routed.inc(routed_total)
        for stream_id, documents in per_stream.items():
            self._count_stream(stream_id, documents)


class RouteToStreams(beam.PTransform):
    """Documents of one kind -> one output per API type (``result.rest_api``, ...)
    and ``result.parked`` for paused and deactivated streams. ``deactivated`` is a
    side input of ``{stream_id: token}`` (streams an earlier run deactivated).
    ``chunked``: the documents are chunks of a bounded run (module docstring)."""

    def __init__(self, kind: Kind, streams: pvalue.AsSideInput | RefreshingSnapshot,
                 deactivated: pvalue.AsSideInput | RefreshingSnapshot, chunked: bool = False) -> None:
        super().__init__()
        self._kind = kind
        self._streams = streams
        self._deactivated = deactivated
        self._chunked = chunked

    def expand(self, documents: beam.PCollection) -> pvalue.DoOutputsTuple:
        fn = (_RouteChunkFn if self._chunked else _RouteFn)(self._kind)
        return documents | "Route" >> beam.ParDo(fn, self._streams, self._deactivated).with_outputs(
            *API_TYPES, PARKED)
