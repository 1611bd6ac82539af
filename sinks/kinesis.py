"""Deliver documents to AWS Kinesis data streams: one JSON document per record.

Batching. ``GroupIntoBatches`` keyed by stream id collects up to 500 documents or
``max_buffering_seconds`` of them (Beam's batching is by count and time, not bytes),
then each batch is cut with :func:`~sinks.results.chunked` into ``PutRecords``
requests within the API's limits: at most 500 records and 5 MiB, where a record
counts its data plus its partition key bytes. A record over 1 MiB (data + key) can
never be accepted, so it is not sent: it becomes a ``record_too_large`` dead letter.
Batches already are the buffer, so the DoFn sends them as they come instead of
keeping a second buffer per bundle.

Ordering. The partition key is the endpoint id (``org-<organisation id>`` for events
without an endpoint), so all of an endpoint's records hash to one shard, and a batch
is sent in (document time, id) order: events by ``timestamp``, usage by
``end_timestamp``. What the Kinesis API documents, and what that order rests on:

- all records with the same partition key map to the same shard (MD5 of the key);
- the response's ``Records`` correlate with the request's by natural order (top to
  bottom), which is how a partial failure is attributed;
- a failure of one record does not stop the processing of the following ones, and
  for that reason the Kinesis developer guide says ``PutRecords`` does not guarantee
  the order of records; strict order needs one ``PutRecord`` at a time with
  ``SequenceNumberForOrdering`` (without it, the PutRecord reference says, records
  are coarsely ordered based on arrival time).

So the order is best effort, by design. The API does not promise that a shard
stores one request's records in request order, but without failures that is what
Kinesis (and moto) do, and the requests of one batch are sent one after the other
(the next only after the previous response), so an endpoint's records of one batch
reach its shard in time order. A failed record breaks that order for its endpoint
(whatever re-sends it lands after newer records), and batches are not ordered among
themselves (a runner may send two batches of one stream at once). Receivers must not
rely on shard order: the guide has them drop duplicates by ``id``, and every document
carries its time. ``PutRecord`` one at a time would cost a round trip per document.

Batches come from :class:`~transforms.batching.BatchPerStream`: ``GroupIntoBatches``
on unbounded input, ``GroupByKey`` and split on bounded input, where the DirectRunner's
bundle-based executor would lose batches flushed at the end of the input when a
``GroupByKey`` follows (apache/beam issue 28716).

Failures. No retries here (a later step adds one policy for all sinks): a request
that raises (missing stream: ``ResourceNotFoundException``, bad credentials, a
timeout, an unreadable secret: ``secret_unavailable``) gives a ``failed`` result for
all its records; a response with ``FailedRecordCount > 0`` gives ``partial`` (or
``failed`` when every record failed) with the first record ``ErrorCode``. Nothing is
raised out of the DoFn for a destination failure, so one failing customer stream
cannot stall the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from botocore.exceptions import BotoCoreError, ClientError

from schemas.streams import AwsDestination, DataStream, StreamConfig
from sinks.aws import AwsClients, ClientFactory, boto3_client
from sinks.ordering import order_key
from sinks.results import (
    DEAD_LETTERS,
    DELIVERED,
    FAILED,
    PARTIAL,
    DeliveryResult,
    SinkOutputs,
    Stopwatch,
    chunked,
    describe_error,
    too_large_dead_letter,
)
from sinks.secrets import SecretError, SecretResolver
from transforms import metrics
from transforms.batching import BatchPerStream

API_TYPE = "aws_kinesis"
#: PutRecords limits (DESIGN.md "Facts from the field").
MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
DEFAULT_MAX_BUFFERING_SECONDS = 5


def partition_key(document: dict[str, Any]) -> str:
    """The endpoint id; events without an endpoint (user and organisation events)
    share one key per organisation."""
    endpoint = document.get("endpoint")
    if endpoint is not None:
        return str(endpoint["id"])
    return f"org-{document['organisation']['id']}"


def _counter(measure: str) -> Any:
    return Metrics.counter(metrics.NAMESPACE, metrics.delivery(API_TYPE, measure))


class _Record(NamedTuple):
    data: bytes
    key: str
    size: int  # data + partition key bytes, as Kinesis counts them


def _http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


class _KinesisWriteFn(beam.DoFn):
    """``(stream_id, [(kind, document), ...])`` -> one DeliveryResult per
    ``PutRecords`` request, and ``record_too_large`` dead letters."""

    def __init__(self, client_factory: ClientFactory) -> None:
        self._client_factory = client_factory

    def setup(self) -> None:
        self._clients = AwsClients(self._client_factory, SecretResolver())
        self._requests = _counter("requests")
        self._documents = _counter("documents")
        self._failed_documents = _counter("failed_documents")
        self._bytes = _counter("bytes")
        self._dead_letters = _counter("dead_letters")

    def process(
        self, element: tuple[str, Iterable[tuple[str, dict[str, Any]]]], streams: StreamConfig
    ) -> Iterator[Any]:
        stream_id, items = element
        records: list[_Record] = []
        for kind, document in sorted(items, key=lambda item: order_key(*item)):
            data = orjson.dumps(document)
            key = partition_key(document)
            size = len(data) + len(key.encode("utf-8"))
            if size > MAX_RECORD_BYTES:
                self._dead_letters.inc()
                yield too_large_dead_letter(kind, document, size, MAX_RECORD_BYTES, API_TYPE)
                continue
            records.append(_Record(data, key, size))
        if not records:
            return
        stream = streams.streams.get(stream_id)
        if stream is None:  # removed from the config since routing: nothing to send to
            yield self._result(stream_id, "", records, Stopwatch(), FAILED, None, "unknown_stream", len(records))
            return
        for request in chunked(records, MAX_RECORDS_PER_REQUEST, MAX_REQUEST_BYTES, lambda r: r.size):
            yield self._put(stream, request)

    def _put(self, stream: DataStream, request: list[_Record]) -> DeliveryResult:
        destination: AwsDestination = stream.destination  # type: ignore[assignment]
        target = stream.describe_destination()
        watch = Stopwatch()
        try:
            client = self._clients.get("kinesis", destination)
        except SecretError:
            return self._result(stream.id, target, request, watch, FAILED, None, "secret_unavailable", len(request))
        self._requests.inc()
        self._bytes.inc(sum(r.size for r in request))
        try:
            response = client.put_records(
                StreamName=destination.target,
                Records=[{"Data": r.data, "PartitionKey": r.key} for r in request],
            )
        except (ClientError, BotoCoreError) as err:
            return self._result(stream.id, target, request, watch, FAILED, _http_status(err), describe_error(err),
                                len(request))
        failed = int(response.get("FailedRecordCount") or 0)
        status_code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if not failed:
            return self._result(stream.id, target, request, watch, DELIVERED, status_code, None, 0)
        error = next((r["ErrorCode"] for r in response.get("Records", ()) if r.get("ErrorCode")), "InternalFailure")
        status = FAILED if failed >= len(request) else PARTIAL
        return self._result(stream.id, target, request, watch, status, status_code, error, failed)

    def _result(self, stream_id: str, target: str, request: list[_Record], watch: Stopwatch, status: str,
                status_code: int | None, error: str | None, failed: int) -> DeliveryResult:
        self._documents.inc(len(request) - failed)
        self._failed_documents.inc(failed)
        return DeliveryResult(
            stream_id=stream_id,
            api_type=API_TYPE,
            documents=len(request),
            bytes=sum(r.size for r in request),
            status=status,
            status_code=status_code,
            error=error,
            failed_documents=failed,
            started_at=watch.started_at,
            duration_ms=watch.elapsed_ms(),
            target=target,
        )

    def teardown(self) -> None:
        self._clients.close()


class WriteToKinesis(beam.PTransform):
    """Routed ``(stream_id, (kind, document))`` -> :class:`SinkOutputs`.

    ``client_factory`` makes the boto3 client of a destination (tests wrap moto's);
    ``max_buffering_seconds`` bounds how long a document waits for its batch to fill.
    """

    def __init__(self, streams: pvalue.AsSideInput, *, client_factory: ClientFactory = boto3_client,
                 max_buffering_seconds: float = DEFAULT_MAX_BUFFERING_SECONDS) -> None:
        super().__init__()
        self._streams = streams
        self._client_factory = client_factory
        self._max_buffering_seconds = max_buffering_seconds

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        outputs = (
            routed
            | "BatchPerStream" >> BatchPerStream(MAX_RECORDS_PER_REQUEST, self._max_buffering_seconds)
            | "PutRecords" >> beam.ParDo(_KinesisWriteFn(self._client_factory), self._streams).with_outputs(
                DEAD_LETTERS, main="results"
            )
        )
        return SinkOutputs(results=outputs.results, dead_letters=outputs[DEAD_LETTERS])
