"""Deliver documents to the customers' data streams.

``DeliverToStreams`` routes each kind of document to the matching streams and
applies one sink per API type, each under a stable label (``Deliver[rest_api]``,
...), so Dataflow's ``--update`` can match them across releases. One stream's
batches never mix with another's: every sink groups by stream id (and kind or
window where its format needs it) before sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from schemas.streams import API_TYPES
from sinks.datadog import WriteToDataDog
from sinks.http import Timeouts
from sinks.kinesis import WriteToKinesis
from sinks.rest import WriteToRestApi, WriteToRestApiBulk
from sinks.results import SinkOutputs
from sinks.s3 import WriteToS3
from transforms import metrics
from transforms.routing import RouteToStreams


@dataclass(frozen=True)
class DeliverySettings:
    """Job-wide delivery settings (per-stream ones are in the stream config)."""

    max_buffering_seconds: int = 5
    timeouts: Timeouts = field(default_factory=Timeouts)
    rest_concurrency: int = 8


def _sinks(settings: DeliverySettings, streams: pvalue.AsSideInput) -> dict[str, beam.PTransform]:
    buffering = settings.max_buffering_seconds
    return {
        "rest_api": WriteToRestApi(
            streams, timeouts=settings.timeouts, max_buffering_seconds=buffering, concurrency=settings.rest_concurrency
        ),
        "rest_api_bulk": WriteToRestApiBulk(streams, timeouts=settings.timeouts, max_buffering_seconds=buffering),
        "aws_kinesis": WriteToKinesis(streams, max_buffering_seconds=buffering),
        "aws_s3": WriteToS3(streams),
        "datadog": WriteToDataDog(streams, timeouts=settings.timeouts),
    }


def _count_delivery_dead_letter(letter: dict[str, Any]) -> dict[str, Any]:
    Metrics.counter(metrics.NAMESPACE, metrics.delivery_dead_letter(letter["kind"], letter["reason"])).inc()
    return letter


class DeliverToStreams(beam.PTransform):
    """``{"event": documents, "usage": documents}`` -> delivery results and the
    dead letters of documents no destination can take."""

    def __init__(self, streams: pvalue.AsSideInput, settings: DeliverySettings = DeliverySettings()) -> None:
        super().__init__()
        self._streams = streams
        self._settings = settings

    def expand(self, documents: dict[str, beam.PCollection]) -> SinkOutputs:
        routed = [
            docs | f"Route[{kind}]" >> RouteToStreams(kind, self._streams)  # type: ignore[arg-type]
            for kind, docs in sorted(documents.items())
        ]
        sinks = _sinks(self._settings, self._streams)
        results, dead_letters = [], []
        for api_type in API_TYPES:
            branch = tuple(r[api_type] for r in routed) | f"Merge[{api_type}]" >> beam.Flatten()
            out = branch | f"Deliver[{api_type}]" >> sinks[api_type]
            results.append(out.results)
            dead_letters.append(out.dead_letters)
        pipeline = next(iter(documents.values())).pipeline
        all_results = tuple(results) | "DeliveryResults" >> beam.Flatten(pipeline=pipeline)
        all_dead = (
            tuple(dead_letters)
            | "DeliveryDeadLetters" >> beam.Flatten(pipeline=pipeline)
            | "CountDeliveryDeadLetters" >> beam.Map(_count_delivery_dead_letter)
        )
        return SinkOutputs(all_results, all_dead)
