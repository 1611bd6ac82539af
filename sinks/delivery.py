"""Deliver documents to the customers' data streams.

``DeliverToStreams`` routes each kind of document to the matching streams and
applies one sink per API type, each under a stable label (``Deliver[rest_api]``,
...), so Dataflow's ``--update`` can match them across releases. One stream's
batches never mix with another's: every sink groups by stream id (and kind or
window where its format needs it) before sending. What a stream cannot take is
parked (``sinks/parking.py``): batches a sink gave up on, and the documents of
paused or deactivated streams. The delivery results update the stream status
(``transforms/status.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from schemas import metrics
from schemas.delivery import PARKED_STATUS, DeliveryResult
from schemas.streams import API_TYPES, SecretPolicy
from schemas.timestamps import now_iso
from sinks.datadog import WriteToDataDog
from sinks.http import Timeouts
from sinks.kinesis import WriteToKinesis
from sinks.parking import ParkedBatch, WriteParkedBatches
from sinks.recovery import RecoverStreams
from sinks.rest import WriteToRestApi, WriteToRestApiBulk
from sinks.results import DEAD_LETTERS
from sinks.retry import RetryPolicy
from sinks.s3 import WriteToS3
from transforms.routing import PARKED, RouteToStreams
from transforms.status import LiveJob, UpdateStreamStatus
from transforms.windows import GatherWindows

#: Documents per parked batch of a paused or deactivated stream.
PARK_BATCH_SIZE = 1_000


@dataclass(frozen=True)
class DeliverySettings:
    """Job-wide delivery settings (per-stream ones are in the stream config)."""

    park_location: str
    status_location: str
    max_buffering_seconds: int = 5
    timeouts: Timeouts = field(default_factory=Timeouts)
    rest_concurrency: int = 8
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    allow_insecure: bool = False
    #: Which secret references the sinks may read (``--secret_env_prefix``, ``--secrets_dir``).
    secrets: SecretPolicy = field(default_factory=SecretPolicy)
    #: Streaming: how long after its end a sink's window still takes documents.
    window_lateness_seconds: int = 0
    #: Streaming: results, dead letters and parked batches are gathered in fixed
    #: windows of processing time of this size (status updates, output files);
    #: ``None`` (batch) gathers them in the global window.
    output_window_seconds: int | None = None
    #: The portal's stream store (``--streams_db``), where status and delivery
    #: counts are written back besides the status location; None with a file.
    streams_db: str | None = None
    #: Streaming: how often open circuits are looked at (``sinks/recovery.py``);
    #: 0 turns recovery off (parked batches then wait for ``pipelines.redrive``).
    recovery_interval_seconds: int = 5
    #: The live job's description, written beside each status update
    #: (``transforms.status.LiveJob``); None for backfills and re-drives.
    live_job: LiveJob | None = None


class DeliveryOutputs(NamedTuple):
    results: beam.PCollection  # DeliveryResult per request or parked batch
    dead_letters: beam.PCollection  # documents no destination can take
    parked: beam.PCollection  # paths of the parked batches written
    status: beam.PCollection  # StreamStatus per configured stream


def sinks_for(settings: DeliverySettings, streams: pvalue.AsSideInput,
              chunked: bool = False) -> dict[str, beam.PTransform]:
    """The sink transform of every API type, configured from ``settings``;
    ``chunked``: the batching sinks take a chunked run's chunks
    (``transforms/routing.py``)."""
    common = {"policy": settings.policy, "allow_insecure": settings.allow_insecure, "secrets": settings.secrets}
    http = {**common, "timeouts": settings.timeouts}
    buffering = settings.max_buffering_seconds
    return {
        "rest_api": WriteToRestApi(streams, max_buffering_seconds=buffering, concurrency=settings.rest_concurrency,
                                   chunked=chunked, **http),
        "rest_api_bulk": WriteToRestApiBulk(streams, max_buffering_seconds=buffering, chunked=chunked, **http),
        "aws_kinesis": WriteToKinesis(streams, max_buffering_seconds=buffering, chunked=chunked, **common),
        "aws_s3": WriteToS3(streams, allowed_lateness_seconds=settings.window_lateness_seconds, **common),
        "datadog": WriteToDataDog(streams, allowed_lateness_seconds=settings.window_lateness_seconds, **http),
    }


def _count_delivery_dead_letter(letter: dict[str, Any]) -> dict[str, Any]:
    Metrics.counter(metrics.NAMESPACE, metrics.delivery_dead_letter(letter["kind"], letter["reason"])).inc()
    if letter.get("stream_id"):
        Metrics.counter(metrics.NAMESPACE, metrics.stream_measure(letter["stream_id"], "not_deliverable")).inc()
    return letter


def _count_result(result: DeliveryResult) -> DeliveryResult:
    delivered = 0 if result.status == PARKED_STATUS else result.documents - result.parked_documents
    if delivered > 0 and result.status != "failed":
        Metrics.counter(metrics.NAMESPACE, metrics.stream_measure(result.stream_id, "delivered")).inc(delivered)
    if result.redelivered_documents:
        Metrics.counter(metrics.NAMESPACE, metrics.stream_measure(result.stream_id, "redelivered")).inc(
            result.redelivered_documents
        )
    return result


def _park_inactive(keyed: tuple[tuple[str, str, str, str | None], Iterable[tuple[str, dict[str, Any]]]]
                   ) -> Iterator[ParkedBatch]:
    (stream_id, api_type, reason, token), items = keyed
    ordered = sorted(items, key=lambda item: (item[0], item[1]["id"]))
    for start in range(0, len(ordered), PARK_BATCH_SIZE):
        yield ParkedBatch(stream_id, api_type, reason, None, token, None, 0, now_iso(),
                          tuple(ordered[start:start + PARK_BATCH_SIZE]))


class DeliverToStreams(beam.PTransform):
    """``{"event": documents, "usage": documents}`` -> :class:`DeliveryOutputs`.

    ``streams`` is the ``AsSingleton`` stream config; ``deactivated`` the
    ``AsSingleton`` of ``{stream_id: token}`` from the previous status.
    ``recovery_ticks`` (streaming): ticks in the windows of ``streams`` that
    drive the recovery step (``sinks/recovery.py``); without them nothing is
    recovered by this job."""

    def __init__(self, streams: pvalue.AsSideInput, deactivated: pvalue.AsSideInput,
                 settings: DeliverySettings, status_streams: pvalue.AsSideInput | None = None,
                 chunked: bool = False, recovery_ticks: beam.PCollection | None = None) -> None:
        """``status_streams``: the config whose streams the status file keeps, when
        it is more than the streams delivered to (a backfill delivers to one).
        ``chunked``: the documents are a bounded run's chunks of ``(document,
        event time in ms)`` pairs (``transforms/chunks.py``)."""
        super().__init__()
        self._streams = streams
        self._status_streams = status_streams or streams
        self._deactivated = deactivated
        self._settings = settings
        self._chunked = chunked
        self._recovery_ticks = recovery_ticks

    def expand(self, documents: dict[str, beam.PCollection]) -> DeliveryOutputs:
        pipeline = next(iter(documents.values())).pipeline
        routed = [
            docs | f"Route[{kind}]" >> RouteToStreams(  # type: ignore[arg-type]
                kind, self._streams, self._deactivated, self._chunked)
            for kind, docs in sorted(documents.items())
        ]
        sinks = sinks_for(self._settings, self._streams, self._chunked)
        write_parked = WriteParkedBatches(self._settings.park_location, self._settings.streams_db)
        # Everything that counts is applied per branch, before any Flatten: on the
        # DirectRunner's bundle-based executor, metrics recorded downstream of a
        # Flatten fed by a keyed step are lost although the elements arrive (seen
        # with Beam 2.77 and 2.62; the per-stream reconciliation in the job tests would catch it).
        gather = self._settings.output_window_seconds
        results, dead_letters, parked = [], [], []
        for api_type in API_TYPES:
            branch = tuple(r[api_type] for r in routed) | f"Merge[{api_type}]" >> beam.Flatten(pipeline=pipeline)
            out = branch | f"Deliver[{api_type}]" >> sinks[api_type]
            # S3 and DataDog outputs are in their streams' windows; results, dead
            # letters and parked batches are accounted for across all windows.
            results.append(
                out.results
                | f"CountPerStream[{api_type}]" >> beam.Map(_count_result)
                | f"Gather[{api_type}]" >> GatherWindows(gather)
            )
            dead_letters.append(
                out.dead_letters
                | f"CountDeadLetters[{api_type}]" >> beam.Map(_count_delivery_dead_letter)
                | f"GatherDeadLetters[{api_type}]" >> GatherWindows(gather)
            )
            if out.parked is not None:
                parked.append(
                    out.parked
                    | f"WriteParked[{api_type}]" >> write_parked
                    | f"GatherParked[{api_type}]" >> GatherWindows(gather)
                )
        if self._recovery_ticks is not None:
            recovered = self._recovery_ticks | "Recover" >> RecoverStreams(
                {api_type: sinks[api_type].fn for api_type in API_TYPES}, self._streams,  # type: ignore[attr-defined]
                self._settings.park_location, self._settings.policy.circuit_location,
                self._settings.policy.stream_budget_seconds, self._settings.recovery_interval_seconds)
            # Not through CountPerStream: a recovered document counts as recovered, not delivered again.
            results.append(recovered.results | "GatherRecovered" >> GatherWindows(gather))
            dead_letters.append(
                recovered[DEAD_LETTERS]
                | "CountRecoveryDeadLetters" >> beam.Map(_count_delivery_dead_letter)
                | "GatherRecoveryDeadLetters" >> GatherWindows(gather)
            )
        for kind, routes in zip(sorted(documents), routed, strict=True):
            parked.append(
                routes[PARKED]
                | f"GatherInactive[{kind}]" >> GatherWindows(gather)
                | f"KeyInactive[{kind}]" >> beam.MapTuple(lambda sid, v: ((sid, v[0], v[1], v[2]), v[3]))
                | f"GroupInactive[{kind}]" >> beam.GroupByKey()
                | f"ParkInactive[{kind}]" >> beam.FlatMap(_park_inactive)
                | f"WriteParked[inactive {kind}]" >> write_parked
            )
        all_results = tuple(results) | "DeliveryResults" >> beam.Flatten(pipeline=pipeline)
        all_dead = tuple(dead_letters) | "DeliveryDeadLetters" >> beam.Flatten(pipeline=pipeline)
        parked_paths = tuple(parked) | "ParkedPaths" >> beam.Flatten(pipeline=pipeline)
        status = all_results | "StreamStatus" >> UpdateStreamStatus(
            self._settings.status_location, self._status_streams, self._settings.policy.deactivate_after,
            self._settings.policy.circuit_location, streams_db=self._settings.streams_db,
            live_job=self._settings.live_job,
        )
        return DeliveryOutputs(all_results, all_dead, parked_paths, status)
