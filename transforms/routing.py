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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas.streams import API_TYPES, StreamConfig, StreamConfigError, parse_stream_config
from transforms import metrics
from transforms.records import Kind


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


def route(kind: Kind, document: dict[str, Any], config: StreamConfig) -> list[tuple[str, Any]]:
    """(api_type, routed element) for every active stream that wants ``document``."""
    routed = []
    for stream in config.by_organisation.get(document["organisation"]["id"], ()):
        if not stream.active or not stream.wants(kind, document):
            continue
        if stream.api_type == "aws_s3":
            element: Any = ((stream.id, kind, stream.batching.rotation_seconds), document)
        elif stream.api_type == "datadog":
            element = ((stream.id, stream.batching.metrics_interval_seconds), document)
        else:
            element = (stream.id, (kind, document))
        routed.append((stream.api_type, element))
    return routed


class _RouteFn(beam.DoFn):
    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def setup(self) -> None:
        self._routed = Metrics.counter(metrics.NAMESPACE, metrics.routed(self._kind))
        self._filtered = Metrics.counter(metrics.NAMESPACE, metrics.filtered(self._kind))

    def process(self, document: dict[str, Any], config: StreamConfig) -> Iterator[pvalue.TaggedOutput]:
        routed = route(self._kind, document, config)
        if not routed:
            self._filtered.inc()
            return
        self._routed.inc(len(routed))
        for api_type, element in routed:
            yield pvalue.TaggedOutput(api_type, element)


class RouteToStreams(beam.PTransform):
    """Documents of one kind -> one output per API type (``result.rest_api``, ...)."""

    def __init__(self, kind: Kind, streams: pvalue.AsSideInput) -> None:
        super().__init__()
        self._kind = kind
        self._streams = streams

    def expand(self, documents: beam.PCollection) -> pvalue.DoOutputsTuple:
        return documents | "Route" >> beam.ParDo(_RouteFn(self._kind), self._streams).with_outputs(*API_TYPES)
