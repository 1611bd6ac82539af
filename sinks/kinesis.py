"""Deliver documents to AWS Kinesis data streams: one JSON document per record.

Batching. :class:`~sinks.batching.BatchPerStream` keyed by stream id collects up
to 500 documents (on unbounded input also bounded by ``max_buffering_seconds``:
Beam's ``GroupIntoBatches`` batches by count and time, not bytes),
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

Batches come from :class:`~sinks.batching.BatchPerStream`: ``GroupIntoBatches``
on unbounded input, ``GroupByKey`` and split on bounded input, where the DirectRunner's
bundle-based executor would lose batches flushed at the end of the input when a
``GroupByKey`` follows (apache/beam issue 28716).

Proof of delivery. A record counts as delivered only when the response has
exactly one entry per record sent and the record's own entry has a
``SequenceNumber`` and a ``ShardId``: what Kinesis answers for a stored record.
A ``200 {}``, a response without ``Records``, with fewer or more entries than
records sent, or an entry with neither a sequence number nor an ``ErrorCode``
proves nothing (an endpoint that is not Kinesis, a proxy, a truncated answer):
the attempt fails (``unproven_response``, ``remote_error``, retryable), the
records it does not prove stay pending, and since they may have been stored they
count as redelivered if a retry stores them. ``FailedRecordCount`` is not
trusted: the entries are what is counted.

Failures (the one policy of ``sinks/retry.py``). Each ``PutRecords`` request is
retried through ``RetryPolicy.run``, and each retry resends only the records still
pending: the records a response accepted are never sent again, because Kinesis
would store them twice. A per-record ``ErrorCode`` (``ProvisionedThroughputExceededException``:
``throttled``; ``InternalFailure``: ``remote_error``) is retryable. Whatever a request
raises (botocore, its parsers, the HTTP stack) is classified by
``classify_exception``: throttling and 5xx codes, timeouts, connection errors and
answers that cannot be parsed retry; a missing stream (``ResourceNotFoundException``:
``not_found``), invalid credentials (``auth_failed``) or a rejected payload fail at
once. When the policy gives up, what was accepted is delivered and the records still
pending are parked (``retries_exhausted``, or ``permanent_failure`` when the last
error is permanent) as one batch of ``(kind, document)`` pairs: the result is
``delivered`` (every record), ``partial`` (some parked) or ``failed`` (none
delivered), and ``parked_documents`` says how many were parked. A permanent error,
or ``deactivate_after`` failed requests in a row, opens the stream's circuit
(``schemas/circuit.py``, shared by every worker): its later requests are parked as
``stream_deactivated`` without a call, so a dead stream costs the others one
request's retries, not one per batch. An unreadable secret parks the request
(``credentials_unavailable``) and deactivates the stream too. Records that a retry
delivered after an attempt that timed out (the stream may have stored them already)
are reported as ``redelivered_documents``. Nothing is raised out of the DoFn for a
destination failure, so one failing customer stream cannot stall the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson
from apache_beam import pvalue

from schemas.delivery import REMOTE_ERROR, THROTTLED
from schemas.streams import DataStream, SecretPolicy
from sinks.aws import AwsDeliveryFn, AwsTarget, ClientFactory, boto3_client
from sinks.batching import BatchingSink
from sinks.ordering import order_key
from sinks.requests import Item, Request, Settled
from sinks.results import chunked, too_large_dead_letter
from sinks.retry import Attempt, Outcome, RetryPolicy, classify_exception, unproven

API_TYPE = "aws_kinesis"
#: PutRecords limits (the design brief's "Facts from the field", docs/delivery.md).
MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
DEFAULT_MAX_BUFFERING_SECONDS = 5
DEFAULT_POLICY = RetryPolicy()
#: The per-record error codes PutRecords documents; both are transient.
THROTTLED_RECORD = "ProvisionedThroughputExceededException"
INTERNAL_FAILURE = "InternalFailure"


def partition_key(document: dict[str, Any]) -> str:
    """The endpoint id; events without an endpoint (user and organisation events)
    share one key per organisation."""
    endpoint = document.get("endpoint")
    if endpoint is not None:
        return str(endpoint["id"])
    return f"org-{document['organisation']['id']}"


class _Record(NamedTuple):
    kind: str
    document: dict[str, Any]  # as received: parked as (kind, document) for re-drive
    data: bytes
    key: str
    size: int  # data + partition key bytes, as Kinesis counts them


def record_failure(code: str) -> Attempt:
    """A response whose records failed (``FailedRecordCount > 0``): the request
    itself succeeded, so the remote status is the first record's error code, and
    those records were not stored (nothing to report as maybe received)."""
    token = THROTTLED if code == THROTTLED_RECORD else REMOTE_ERROR
    return Attempt(ok=False, retryable=True, status_code=None, error=code, token=token)


class _PutRecords:
    """One ``PutRecords`` request's state across its attempts: each attempt sends
    the records still pending and keeps what the response accepted, so a retry
    resends exactly the records that failed (Kinesis would store the others twice)."""

    def __init__(self, records: list[_Record]) -> None:
        self._records = records
        self._pending = list(range(len(records)))  # positions in ``records``
        self._delivered: list[int] = []
        #: records an attempt that got no answer may have stored: if a later
        #: attempt stores them, they may be in the stream twice
        self._maybe_received: set[int] = set()

    def settled(self) -> Settled:
        delivered = [self._records[i] for i in self._delivered]
        return Settled(len(delivered), sum(r.size for r in delivered),
                       len(self._maybe_received.intersection(self._delivered)),
                       tuple((r.kind, r.document) for r in (self._records[i] for i in self._pending)))

    def attempt(self, client: Any, stream_name: str) -> Attempt:
        sending = [self._records[i] for i in self._pending]
        try:
            response = client.put_records(
                StreamName=stream_name,
                Records=[{"Data": r.data, "PartitionKey": r.key} for r in sending],
            )
        except Exception as err:  # noqa: BLE001 - every exception of a request is its failure (sinks/retry.py)
            attempt = classify_exception(err)
            if attempt.maybe_received:
                self._maybe_received.update(self._pending)
            return attempt
        return self._read(response)

    def _read(self, response: Any) -> Attempt:
        """What the response proves (module docstring, "Proof of delivery"): a
        record is delivered only by its own entry with a ``SequenceNumber`` and a
        ``ShardId``; an entry with an ``ErrorCode`` failed; anything else (no
        ``Records``, a count other than the records sent, an entry with neither)
        proves nothing, so those records stay pending and may have been stored."""
        status_code = _status_code(response)
        entries = response.get("Records") if isinstance(response, dict) else None
        if not isinstance(entries, list) or len(entries) != len(self._pending):
            self._maybe_received.update(self._pending)
            return unproven(status_code)
        pending: list[int] = []
        unproven_records: list[int] = []
        first_error: str | None = None
        for position, entry in zip(self._pending, entries, strict=True):
            entry = entry if isinstance(entry, dict) else {}
            code = entry.get("ErrorCode")
            if code:
                pending.append(position)
                first_error = first_error or str(code)
            elif entry.get("SequenceNumber") and entry.get("ShardId"):
                self._delivered.append(position)
            else:
                pending.append(position)
                unproven_records.append(position)
        self._pending = pending
        self._maybe_received.update(unproven_records)
        if unproven_records:
            return unproven(status_code)
        if pending:
            return record_failure(first_error or INTERNAL_FAILURE)
        return Attempt(ok=True, status_code=status_code)


def _status_code(response: Any) -> int | None:
    metadata = response.get("ResponseMetadata") if isinstance(response, dict) else None
    return metadata.get("HTTPStatusCode") if isinstance(metadata, dict) else None


class _KinesisWriteFn(AwsDeliveryFn):
    """``(stream_id, [(kind, document), ...])`` -> one DeliveryResult per
    ``PutRecords`` request (and per request parked without a call), parked batches
    and ``record_too_large`` dead letters. A request can partly succeed: what a
    response accepted is delivered, the rest parked (a ``partial`` result)."""

    api_type = API_TYPE
    service = "kinesis"

    def __init__(self, client_factory: ClientFactory, policy: RetryPolicy = DEFAULT_POLICY,
                 allow_insecure: bool = False, secrets: SecretPolicy | None = None) -> None:
        super().__init__(client_factory, policy, allow_insecure, secrets)

    def requests(self, element: tuple[str, Iterable[Item]], stream: DataStream | None, window: Any,
                 pane: Any) -> Iterator[Request | pvalue.TaggedOutput]:
        records: list[_Record] = []
        for kind, document in sorted(element[1], key=lambda item: order_key(*item)):
            data = orjson.dumps(document)
            key = partition_key(document)
            size = len(data) + len(key.encode("utf-8"))
            if size > MAX_RECORD_BYTES:
                yield too_large_dead_letter(kind, document, size, MAX_RECORD_BYTES, API_TYPE)
                continue
            records.append(_Record(kind, document, data, key, size))
        if stream is None:  # one request, parked whole: there is nowhere to split it for
            batches = [records] if records else []
        else:
            batches = list(chunked(records, MAX_RECORDS_PER_REQUEST, MAX_REQUEST_BYTES, lambda r: r.size))
        target = stream.describe_destination() if stream is not None else ""
        for batch in batches:
            yield Request(tuple((r.kind, r.document) for r in batch), sum(r.size for r in batch), target,
                          _PutRecords(batch))

    def attempt(self, request: Request, connection: AwsTarget) -> Attempt:
        return request.body.attempt(connection.client, connection.destination.target)

    def settle(self, request: Request, outcome: Outcome) -> Settled:
        return request.body.settled()


class WriteToKinesis(BatchingSink):
    """Routed ``(stream_id, (kind, document))`` -> :class:`SinkOutputs` (results,
    dead letters, parked batches).

    ``client_factory`` makes the boto3 client of a destination (tests wrap moto's);
    ``max_buffering_seconds`` bounds how long a document waits for its batch to fill;
    ``policy`` bounds the retries of each request; ``chunked``: the input is a
    chunked bounded run's ``(stream_id, (count, packed [(kind, document), ...]))``
    chunks
    (``transforms/routing.py``). ``allow_insecure`` lifts the outbound rules for
    an ``endpoint_url`` (http, loopback: moto) for development and tests only;
    ``secrets`` says which secret references may be read.
    """

    def __init__(self, streams: pvalue.AsSideInput, *, client_factory: ClientFactory = boto3_client,
                 max_buffering_seconds: float = DEFAULT_MAX_BUFFERING_SECONDS,
                 policy: RetryPolicy = DEFAULT_POLICY, chunked: bool = False, allow_insecure: bool = False,
                 secrets: SecretPolicy | None = None) -> None:
        super().__init__(streams, _KinesisWriteFn(client_factory, policy, allow_insecure, secrets),
                         MAX_RECORDS_PER_REQUEST, max_buffering_seconds, chunked, send_label="PutRecords")
