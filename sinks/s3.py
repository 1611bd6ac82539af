"""Deliver documents to AWS S3 as CSV files: one file per stream, kind and window.

Windows. Each routed element carries its stream's rotation in its key, so
``GroupPerElementWindow(size_from_key)`` (``sinks/windows.py``) collects one
stream's documents of one kind per epoch-aligned window of its own size. A
window's file is written once the watermark passes its end, so files rotate on
time whether or not more data arrives. The
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
columns, UTF-8, ``\\r\\n`` line ends, text cells that a spreadsheet would run as a
formula prefixed with ``'`` unless the stream sets ``s3.escape_formulas: false``),
``Content-Type: text/csv; charset=utf-8``.

Failures (the one policy of ``sinks/retry.py``). Each ``put_object`` is retried
through ``RetryPolicy.run``; a retry rewrites the same key, so it cannot add a
second file. A file counts as written only when the answer carries its ``ETag``,
as S3 answers every stored object; an answer without one (an endpoint that is
not S3) is ``unproven_response`` and retried. Retried: ``SlowDown`` and other
throttling or 5xx codes, timeouts, connection errors, answers botocore cannot
parse (whatever a request raises is classified, never raised). Permanent, not
retried: a missing bucket (``NoSuchBucket``: ``not_found``), denied or invalid
credentials (``AccessDenied``, ``InvalidAccessKeyId``: ``auth_failed``), a bucket
name botocore refuses (``invalid_configuration``), any other 4xx
(``payload_rejected``). A file that is not written is parked with its documents
as ``(kind, document)`` pairs (``retries_exhausted`` or ``permanent_failure``) and
gives a ``failed`` result. A permanent error, or ``deactivate_after`` failed files
in a row, opens the stream's circuit (``schemas/circuit.py``, shared by every
worker): its later files are parked as
``stream_deactivated`` without a request. An unreadable secret parks the file
(``credentials_unavailable``) and deactivates the stream too. A file written
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
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.utils.timestamp import Timestamp

from schemas.records import dead_letter
from schemas.streams import AwsDestination, DataStream, SecretPolicy
from sinks.aws import AwsDeliveryFn, AwsTarget, ClientFactory, boto3_client
from sinks.csv_format import UnknownFieldError, render_csv, to_row
from sinks.ordering import document_time, order_key
from sinks.requests import Request
from sinks.results import DEAD_LETTERS, SinkOutputs, apply_sink
from sinks.retry import Attempt, RetryPolicy, classify_exception, unproven
from sinks.windows import GroupPerElementWindow, size_from_key

_LOG = logging.getLogger(__name__)

API_TYPE = "aws_s3"
CONTENT_TYPE = "text/csv; charset=utf-8"
#: File name prefix per document kind (guide 6.2).
FILE_PREFIX = {"event": "events", "usage": "cdr"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
DEFAULT_POLICY = RetryPolicy()


def file_name(kind: str, moment: datetime, counter: int | None = None, pane_index: int = 0,
              recovered: str = "") -> str:
    """``recovered``: the parked batch a file is written from by the recovery step
    (``sinks/recovery.py``): ``events_20261101_080500_r<batch>.csv``. A window's
    other files may have been written already; the batch's own name never
    overwrites them, and writing the same batch again overwrites its own file."""
    suffix = "" if counter is None else f"_{counter}"
    late = f"_late{pane_index}" if pane_index else ""
    tag = f"_r{recovered}" if recovered else ""
    return f"{FILE_PREFIX[kind]}_{moment:%Y%m%d_%H%M%S}{suffix}{late}{tag}.csv"


def plan_files(
    kind: str, window_start: datetime, window_end: datetime, times: Sequence[datetime], flush_size: int,
    pane_index: int = 0, recovered: str = "",
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
            name = file_name(kind, window_end - _SECOND, overflow, pane_index, recovered)
        else:
            name = file_name(kind, moment, pane_index=pane_index, recovered=recovered)
        files.append((name, chunk))
        previous = moment
    return files


def _utc(timestamp: Timestamp) -> datetime:
    return _EPOCH + timedelta(microseconds=timestamp.micros)



class _S3WriteFn(AwsDeliveryFn):
    """``((stream_id, kind, rotation), documents)`` of one window -> one
    DeliveryResult per CSV file (put, or parked without a request), parked
    batches and ``internal_error`` dead letters."""

    api_type = API_TYPE
    service = "s3"

    def __init__(self, client_factory: ClientFactory, policy: RetryPolicy = DEFAULT_POLICY,
                 allow_insecure: bool = False, secrets: SecretPolicy | None = None) -> None:
        super().__init__(client_factory, policy, allow_insecure, secrets)

    def requests(self, element: tuple[tuple[str, str, int], Iterable[dict[str, Any]]], stream: DataStream | None,
                 window: Any, pane: Any) -> Iterator[Request | pvalue.TaggedOutput]:
        (stream_id, kind, _rotation), documents = element
        rows: list[list[str]] = []
        kept: list[dict[str, Any]] = []  # the documents of ``rows``, for parking
        times: list[datetime] = []
        # Without a stream (it was deleted) the documents are parked, not written.
        escape = stream.destination.escape_formulas if stream is not None else True  # type: ignore[union-attr]
        for document in sorted(documents, key=lambda doc: order_key(kind, doc)):
            try:
                rows.append(to_row(kind, document, escape))
            except UnknownFieldError as err:
                _LOG.error("stream %s: %s", stream_id, err)
                letter = dead_letter(kind, "deliver", "internal_error", str(err),  # type: ignore[arg-type]
                                     orjson.dumps(document), document.get("id"))
                yield pvalue.TaggedOutput(DEAD_LETTERS, letter)
                continue
            kept.append(document)
            times.append(document_time(kind, document))
        if not rows:
            return
        if stream is None:  # no bucket, no rotation: one request, parked whole
            yield Request(tuple((kind, d) for d in kept), 0, "")
            return
        destination: AwsDestination = stream.destination  # type: ignore[assignment]
        plan = plan_files(kind, _utc(window.start), _utc(window.end), times, stream.batching.flush_size, pane.index,
                          getattr(pane, "recovered", ""))
        for name, chunk in plan:
            key = f"{destination.prefix}{name}"
            body = render_csv(kind, rows[chunk])
            yield Request(tuple((kind, d) for d in kept[chunk]), len(body), f"s3://{destination.target}/{key}",
                          _File(key, body))

    def attempt(self, request: Request, connection: AwsTarget) -> Attempt:
        """One ``put_object``; a retry rewrites the same key, so it cannot add a file."""
        file: _File = request.body
        try:
            response = connection.client.put_object(Bucket=connection.destination.target, Key=file.key,
                                                    Body=file.body, ContentType=CONTENT_TYPE)
        except Exception as err:  # noqa: BLE001 - every exception of a request is its failure (sinks/retry.py)
            return classify_exception(err)
        metadata = response.get("ResponseMetadata") if isinstance(response, dict) else None
        status_code = metadata.get("HTTPStatusCode") if isinstance(metadata, dict) else None
        if not isinstance(response, dict) or not response.get("ETag"):
            return unproven(status_code)  # S3 answers every stored object with its ETag
        return Attempt(ok=True, status_code=status_code)


class _File(NamedTuple):
    key: str
    body: bytes


class WriteToS3(beam.PTransform):
    """Routed ``((stream_id, kind, rotation_seconds), document)`` with event-time
    timestamps -> :class:`SinkOutputs` (results, dead letters, parked batches).
    ``client_factory`` makes the boto3 client of a destination (tests point it at
    moto); ``policy`` bounds the retries of each file; ``allowed_lateness_seconds``
    how long after its end a window still takes documents (streaming);
    ``allow_insecure`` lifts the outbound rules for an ``endpoint_url`` (http,
    loopback: moto) for development and tests only; ``secrets`` says which secret
    references may be read."""

    def __init__(self, streams: pvalue.AsSideInput, *, client_factory: ClientFactory = boto3_client,
                 policy: RetryPolicy = DEFAULT_POLICY, allowed_lateness_seconds: int = 0,
                 allow_insecure: bool = False, secrets: SecretPolicy | None = None) -> None:
        super().__init__()
        self._streams = streams
        self._lateness = allowed_lateness_seconds
        self._fn = _S3WriteFn(client_factory, policy, allow_insecure, secrets)

    @property
    def fn(self) -> _S3WriteFn:
        """The delivery DoFn (the recovery step sends parked batches through it)."""
        return self._fn

    def expand(self, routed: beam.PCollection) -> SinkOutputs:
        windows = routed | "WindowPerRotation" >> GroupPerElementWindow(size_from_key, self._lateness)
        return apply_sink(windows, "PutObjects", self._fn, self._streams)
