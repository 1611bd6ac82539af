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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas.streams import API_TYPES, DataStream, StreamConfig, StreamConfigError, parse_stream_config
from sinks.parking import AWAITING_HISTORY, STREAM_DEACTIVATED, STREAM_PAUSED
from transforms import metrics
from transforms.records import Kind
from transforms.status import StreamHolds


def load_stream_config(path: str) -> StreamConfig:
    """Read and check a JSON or YAML stream configuration (local, gs://, s3://)."""
    try:
        with FileSystems.open(path) as handle:
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise StreamConfigError(f"{path}: cannot read the stream configuration: {err}") from err
    return parse_stream_config(text, source=path)


class LoadStreamConfig(beam.PTransform):
    """A one-element PCollection with the :class:`StreamConfig`; use it as
    ``AsSingleton``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "Path" >> beam.Create([self._path]) | "Load" >> beam.Map(load_stream_config)


PARKED = "parked"


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


class _RouteFn(beam.DoFn):
    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def setup(self) -> None:
        self._routed = Metrics.counter(metrics.NAMESPACE, metrics.routed(self._kind))
        self._routed_documents = Metrics.counter(metrics.NAMESPACE, metrics.routed_documents(self._kind))
        self._filtered = Metrics.counter(metrics.NAMESPACE, metrics.filtered(self._kind))
        self._per_stream: dict[str, Any] = {}  # stream id -> its "routed" counter

    def process(
        self, document: dict[str, Any], config: StreamConfig, deactivated: Mapping[str, str]
    ) -> Iterator[pvalue.TaggedOutput]:
        routed = route(self._kind, document, config, deactivated)
        if not routed:
            self._filtered.inc()
            return
        self._routed_documents.inc()
        self._routed.inc(len(routed))
        for tag, element in routed:
            stream_id = element[0] if isinstance(element[0], str) else element[0][0]
            counter = self._per_stream.get(stream_id)
            if counter is None:
                counter = Metrics.counter(metrics.NAMESPACE, metrics.stream_measure(stream_id, "routed"))
                self._per_stream[stream_id] = counter
            counter.inc()
            yield pvalue.TaggedOutput(tag, element)


class RouteToStreams(beam.PTransform):
    """Documents of one kind -> one output per API type (``result.rest_api``, ...)
    and ``result.parked`` for paused and deactivated streams. ``deactivated`` is a
    side input of ``{stream_id: token}`` (streams an earlier run deactivated)."""

    def __init__(self, kind: Kind, streams: pvalue.AsSideInput, deactivated: pvalue.AsSideInput) -> None:
        super().__init__()
        self._kind = kind
        self._streams = streams
        self._deactivated = deactivated

    def expand(self, documents: beam.PCollection) -> pvalue.DoOutputsTuple:
        return documents | "Route" >> beam.ParDo(
            _RouteFn(self._kind), self._streams, self._deactivated
        ).with_outputs(*API_TYPES, PARKED)
