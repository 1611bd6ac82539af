"""Deliver documents to AWS S3 as CSV files: one file per stream, kind and window.

Windows. Each routed element carries its stream's rotation in its key, so
``PerElementFixedWindows(size_from_key)`` gives every stream its own epoch-aligned
fixed windows, and ``GroupByKey`` collects one stream's documents of one kind per
window. With the default trigger a window's file is written once the watermark
passes its end, so files rotate on time whether or not more data arrives. The
grouped window is the file: the DoFn keeps no buffer of its own across bundles.
Documents that arrive behind the watermark (streaming) fire late panes of their
window, up to the sink's allowed lateness (``transforms/lateness.py`` sets it
above the job's lateness gate, so nothing the gate let through is dropped here). A
late pane's files get names of their own, the pane index after the time
(``events_20261101_080500_late1.csv``), so they never overwrite the window's
on-time file.

File names (guide 6.2) come from the window start in UTC, never from the clock:
``events_YYYYMMDD_HHmmss.csv`` for events, ``cdr_YYYYMMDD_HHmmss.csv`` for usage
(a window starting 2026-11-01 08:05:00 is ``events_20261101_080500.csv``), written to
``<prefix><name>`` in the stream's bucket. The same input gives the same names, so a
retried or replayed write overwrites its file instead of adding a duplicate.

Flush size. A window with more documents than the stream's ``flush_size`` is split,
documents sorted by (time, id) (events by ``timestamp``, usage by ``end_timestamp``),
into files of at most ``flush_size`` rows. The first file has the window-start name;
each next file's time is ``max(time of its first document, previous file's time +
1 s)`` (to the second), so names stay in time order, unique and deterministic. Should
that reach the window's end (more files than the window has seconds, possible with a
10 s rotation and a small flush size), the name would be the next window's; such
files are named from the window's last second with a counter instead
(``events_20261101_080009_1.csv``, ``_2``, ...), so no file ever overwrites another
window's.

Format: :mod:`sinks.csv_format` (fixed header per kind, flattened ``object_field``
columns, UTF-8, ``\\r\\n`` line ends), ``Content-Type: text/csv; charset=utf-8``.

Failures (the one policy of ``sinks/retry.py``). Each ``put_object`` is retried
through ``RetryPolicy.run``; a retry rewrites the same key, so it cannot add a
second file. Retried: ``SlowDown`` and other throttling or 5xx codes, timeouts,
connection errors. Permanent, not retried: a missing bucket (``NoSuchBucket``:
``not_found``), denied or invalid credentials (``AccessDenied``,
``InvalidAccessKeyId``: ``auth_failed``), any other 4xx (``payload_rejected``). A
file that is not written is parked with its documents as ``(kind, document)`` pairs
(``retries_exhausted`` or ``permanent_failure``) and gives a ``failed`` result. A
permanent error, or ``deactivate_after`` failed files in a row, deactivates the
stream on this worker (:class:`~sinks.retry.StreamCircuit`): its later files are
parked as ``stream_deactivated`` without a request. An unreadable secret parks the
file (``credentials_unavailable``) and deactivates the stream too. A file written
by a retry after an attempt that got no answer is reported as
``redelivered_documents``: the key was overwritten, but a reader notified of the
first write may have seen it twice. A document with a field the CSV does not know
is a bug: it becomes an ``internal_error`` dead letter and the rest of its file is
delivered. Nothing is raised out of the DoFn for a destination failure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.utils.timestamp import Timestamp
from botocore.exceptions import BotoCoreError, ClientError

from schemas.delivery import (
    CREDENTIALS_UNAVAILABLE,
    DELIVERED,
    FAILED,
    PARKED_STATUS,
    PERMANENT_FAILURE,
    RETRIES_EXHAUSTED,
    STREAM_DEACTIVATED,
    DeliveryResult,
)
from schemas.records import dead_letter
from schemas.streams import AwsDestination, DataStream, StreamConfig
from sinks.aws import AwsClients, ClientFactory, boto3_client
from sinks.csv_format import UnknownFieldError, render_csv, to_row
from sinks.ordering import document_time, order_key
from sinks.parking import PARKED, parked
from sinks.results import DEAD_LETTERS, DeliveryCounters, SinkOutputs, Stopwatch
from sinks.retry import SUCCESS, Attempt, RetryPolicy, StreamCircuit, classify_exception
from sinks.secrets import SecretError, SecretResolver
from sinks.windows import PerElementFixedWindows, size_from_key, window_with_late_panes

_LOG = logging.getLogger(__name__)

API_TYPE = "aws_s3"
CONTENT_TYPE = "text/csv; charset=utf-8"
#: File name prefix per document kind (guide 6.2).
FILE_PREFIX = {"event": "events", "usage": "cdr"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
DEFAULT_POLICY = RetryPolicy()


def file_name(kind: str, moment: datetime, counter: int | None = None, pane_index: int = 0) -> str:
    suffix = "" if counter is None else f"_{counter}"
    late = f"_late{pane_index}" if pane_index else ""
    return f"{FILE_PREFIX[kind]}_{moment:%Y%m%d_%H%M%S}{suffix}{late}.csv"


def plan_files(
    kind: str, window_start: datetime, window_end: datetime, times: Sequence[datetime], flush_size: int,
    pane_index: int = 0,
) -> list[tuple[str, slice]]:
    """(file name, slice of the sorted documents) for one pane of one window;
    ``times`` are the sorted documents' times. The naming rule is the module
    docstring's."""
    files: list[tuple[str, slice]] = []
    previous: datetime | None = None
    overflow = 0
    for begin in range(0, len(times), flush_size):
        chunk = slice(begin, begin + flush_size)
        if previous is None:
            moment = window_start
        else:
            first = times[begin].replace(microsecond=0)
            moment = max(first, previous + _SECOND)
        if moment >= window_end:
            overflow += 1
            name = file_name(kind, window_end - _SECOND, overflow, pane_index)
        else:
            name = file_name(kind, moment, pane_index=pane_index)
        files.append((name, chunk))
        previous = moment
    return files


def _utc(timestamp: Timestamp) -> datetime:
    return _EPOCH + timedelta(microseconds=timestamp.micros)



class _S3WriteFn(beam.DoFn):
    """``((stream_id, kind, rotation), documents)`` of one window -> one
    DeliveryResult per CSV file (put, or parked without a request), parked
    batches and ``internal_error`` dead letters."""

    def __init__(self, client_factory: ClientFactory, policy: RetryPolicy = DEFAULT_POLICY) -> None:
        self._client_factory = client_factory
        self._policy = policy

    def setup(self) -> None:
        self._clients = AwsClients(self._client_factory, SecretResolver())
        self._circuit = StreamCircuit(self._policy.deactivate_after)
        self._counters = DeliveryCounters(API_TYPE)

    def process(
        self,
        element: tuple[tuple[str, str, int], Iterable[dict[str, Any]]],
        streams: StreamConfig,
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[Any]:
        (stream_id, kind, _rotation), documents = element
        rows: list[list[str]] = []
        kept: list[dict[str, Any]] = []  # the documents of ``rows``, for parking
        times: list[datetime] = []
        for document in sorted(documents, key=lambda doc: order_key(kind, doc)):
            try:
                rows.append(to_row(kind, document))
            except UnknownFieldError as err:
                _LOG.error("stream %s: %s", stream_id, err)
                self._counters.dead_letters.inc()
                letter = dead_letter(kind, "deliver", "internal_error", str(err),  # type: ignore[arg-type]
                                     orjson.dumps(document), document.get("id"))
                yield pvalue.TaggedOutput(DEAD_LETTERS, letter)
                continue
            kept.append(document)
            times.append(document_time(kind, document))
        if not rows:
            return
        stream = streams.streams.get(stream_id)
        if stream is None:  # removed from the config since routing: parked until a re-drive finds it again
            self._counters.failed_documents.inc(len(rows))
            yield parked(stream_id, API_TYPE, PERMANENT_FAILURE, [(kind, d) for d in kept], error="unknown_stream")
            yield _result(stream_id, "", len(rows), 0, Stopwatch(), FAILED, error="unknown_stream", attempts=0)
            return
        plan = plan_files(kind, _utc(window.start), _utc(window.end), times, stream.batching.flush_size, pane.index)
        for name, chunk in plan:
            yield from self._put(stream, kind, name, rows[chunk], kept[chunk])

    def _put(self, stream: DataStream, kind: str, name: str, rows: list[list[str]],
             documents: list[dict[str, Any]]) -> Iterator[Any]:
        destination: AwsDestination = stream.destination  # type: ignore[assignment]
        key = f"{destination.prefix}{name}"
        target = f"s3://{destination.target}/{key}"
        pairs = [(kind, document) for document in documents]
        body = render_csv(kind, rows)
        watch = Stopwatch()
        token = self._circuit.deactivated(stream.id)
        if token is not None:
            self._counters.failed_documents.inc(len(rows))
            yield parked(stream.id, API_TYPE, STREAM_DEACTIVATED, pairs, token=token)
            yield _result(stream.id, target, len(rows), len(body), watch, PARKED_STATUS, token=token, attempts=0)
            return
        try:
            client = self._clients.get("s3", destination)
        except SecretError:
            self._counters.failed_documents.inc(len(rows))
            self._circuit.deactivate(stream.id, CREDENTIALS_UNAVAILABLE)
            yield parked(stream.id, API_TYPE, PERMANENT_FAILURE, pairs, error="secret_unavailable",
                         token=CREDENTIALS_UNAVAILABLE)
            yield _result(stream.id, target, len(rows), len(body), watch, FAILED, error="secret_unavailable",
                          token=CREDENTIALS_UNAVAILABLE, attempts=0)
            return
        status_codes: list[int | None] = []

        def attempt() -> Attempt:
            self._counters.requests.inc()
            self._counters.bytes.inc(len(body))
            try:
                response = client.put_object(Bucket=destination.target, Key=key, Body=body, ContentType=CONTENT_TYPE)
            except (ClientError, BotoCoreError) as err:
                return classify_exception(err)
            status_codes.append(response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            return SUCCESS

        outcome = self._policy.run(attempt)
        self._circuit.record(stream.id, outcome)
        if outcome.ok:
            redelivered = len(rows) if outcome.maybe_delivered_twice else 0
            self._counters.documents.inc(len(rows))
            self._counters.redelivered.inc(redelivered)
            yield _result(stream.id, target, len(rows), len(body), watch, DELIVERED, status_code=status_codes[-1],
                          attempts=outcome.attempts, redelivered=redelivered)
            return
        last = outcome.last
        self._counters.failed_documents.inc(len(rows))
        yield parked(stream.id, API_TYPE, RETRIES_EXHAUSTED if last.retryable else PERMANENT_FAILURE, pairs,
                     error=last.error, token=last.token, status_code=last.status_code, attempts=outcome.attempts)
        yield _result(stream.id, target, len(rows), len(body), watch, FAILED, status_code=last.status_code,
                      error=last.error, token=last.token, attempts=outcome.attempts)

    def teardown(self) -> None:
        self._clients.close()


def _result(stream_id: str, target: str, documents: int, size: int, watch: Stopwatch, status: str, *,
            status_code: int | None = None, error: str | None = None, token: str | None = None, attempts: int = 1,
            redelivered: int = 0) -> DeliveryResult:
    """A file's result; every document of a file not delivered is parked."""
    undelivered = 0 if status == DELIVERED else documents
    return DeliveryResult(
        stream_id=stream_id,
        api_type=API_TYPE,
        documents=documents,
        bytes=size,
        status=status,
        status_code=status_code,
        error=error,
        failed_documents=undelivered,
        started_at=watch.started_at,
        duration_ms=watch.elapsed_ms(),
        target=target,
        attempts=attempts,
        token=token,
        redelivered_documents=redelivered,
        parked_documents=undelivered,
    )


class WriteToS3(beam.PTransform):
    """Routed ``((stream_id, kind, rotation_seconds), document)`` with event-time
    timestamps -> :class:`SinkOutputs` (results, dead letters, parked batches).
    ``client_factory`` makes the boto3 client of a destination (tests point it at
    moto); ``policy`` bounds the retries of each file; ``allowed_lateness_seconds``
    how long after its end a window still takes documents (streaming)."""

    def __init__(self, streams: pvalue.AsSideInput, *, client_factory: ClientFactory = boto3_client,
                 policy: RetryPolicy = DEFAULT_POLICY, allowed_lateness_seconds: int = 0) -> None:
        super().__init__()
        self._streams = streams
        self._client_factory = client_factory
        self._policy = policy
        self._lateness = allowed_lateness_seconds

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        outputs = (
            routed
            | "WindowPerRotation" >> window_with_late_panes(PerElementFixedWindows(size_from_key), self._lateness)
            | "GroupPerWindow" >> beam.GroupByKey()
            | "PutObjects" >> beam.ParDo(_S3WriteFn(self._client_factory, self._policy), self._streams).with_outputs(
                DEAD_LETTERS, PARKED, main="results"
            )
        )
        return SinkOutputs(results=outputs.results, dead_letters=outputs[DEAD_LETTERS], parked=outputs[PARKED])
