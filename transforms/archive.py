"""The raw archive: every valid raw record, in hourly Avro files, for backfill.

Records are archived after validation (and, streaming, after the lateness gate)
and before de-duplication, as they arrived (the raw field names and values of
``schemas/avro/raw_*.avsc``), into files per kind and event-time hour:
``<location>/events-20261101T08-<digest>.avro``, ``<location>/usage-...``. The
digest is the first 12 hex digits of a SHA-256 over the sorted record ids of the
file, so the name comes from the window *and* the content: a replay of an hour
with the same records rewrites its file instead of adding a second copy, while a
streaming run's late pane for an hour, or the same hour written again after a
restart, gets a file of its own instead of overwriting the first (repeats across
such files are dropped by the backfill's de-duplication). A backfill finds an
hour's files with one glob, without listing the whole archive.

Streaming: the hourly windows fire when the watermark passes the hour and again
for records that arrive later, up to the gate's lateness plus a margin
(``transforms/lateness.py``), so no record the gate let through is dropped here.

Hand-written rather than ``fileio.WriteToFiles``: fileio names files from the
window alone (it passes no pane to the naming function), so a late pane would
overwrite the hour's file. Each hour's records are grouped per kind and written by
one worker with fastavro to a temporary name, then renamed into place through
Beam's ``FileSystems`` (a directory here, ``gs://`` or ``s3://`` in production).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.trigger import AccumulationMode, AfterCount, AfterWatermark
from apache_beam.transforms.window import FixedWindows
from fastavro.write import Writer

from schemas import load_schema, metrics
from schemas.records import Kind

HOUR_SECONDS = 3600
_PREFIX = {"event": "events", "usage": "usage"}
_SCHEMA = {"event": "raw_event", "usage": "raw_usage"}


def archive_file_name(kind: str, hour: datetime, digest: str) -> str:
    return f"{_PREFIX[kind]}-{hour:%Y%m%dT%H}-{digest}.avro"


def archive_paths(location: str, kind: str, start: datetime, end: datetime) -> Iterator[str]:
    """The archive files of ``kind`` whose hour overlaps ``[start, end)``."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while hour < end:
        pattern = f"{location.rstrip('/')}/{archive_file_name(kind, hour, '*')}"
        for result in FileSystems.match([pattern]):
            yield from sorted(m.path for m in result.metadata_list)
        hour += timedelta(hours=1)


def _digest(ids: list[int]) -> str:
    digest = hashlib.sha256()
    for record_id in sorted(ids):
        digest.update(record_id.to_bytes(8, "big", signed=True))
    return digest.hexdigest()[:12]


class _WriteHourFn(beam.DoFn):
    """``(kind, records)`` of one hour window -> the path of the file written."""

    def __init__(self, location: str) -> None:
        self._location = location.rstrip("/")

    def process(self, element: tuple[str, Iterable[dict[str, Any]]],
                window: Any = beam.DoFn.WindowParam) -> Iterator[str]:
        kind, records = element
        hour = datetime.fromtimestamp(int(window.start), tz=UTC)
        temp = f"{self._location}/_temp/{archive_file_name(kind, hour, uuid.uuid4().hex)}"
        ids: list[int] = []
        with FileSystems.create(temp) as handle:
            writer = Writer(handle, load_schema(_SCHEMA[kind]))
            for record in records:
                writer.write(record)
                ids.append(record["id"])
            writer.flush()
        final = f"{self._location}/{archive_file_name(kind, hour, _digest(ids))}"
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([temp], [final])
        Metrics.counter(metrics.NAMESPACE, metrics.archived(kind)).inc(len(ids))
        yield final


class ArchiveRawRecords(beam.PTransform):
    """Valid raw records of one kind (with event-time timestamps) -> hourly Avro
    files under ``location``; outputs the paths written. ``allowed_lateness_seconds``
    is the lateness the hourly windows accept (streaming)."""

    def __init__(self, kind: Kind, location: str, allowed_lateness_seconds: int = 0) -> None:
        super().__init__()
        self._kind = kind
        self._location = location
        self._lateness = allowed_lateness_seconds

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        kind = self._kind
        return (
            records
            | "Hourly" >> beam.WindowInto(
                FixedWindows(HOUR_SECONDS),
                trigger=AfterWatermark(late=AfterCount(1)),
                accumulation_mode=AccumulationMode.DISCARDING,
                allowed_lateness=self._lateness,
            )
            | "KeyByKind" >> beam.Map(lambda record: (kind, record))
            | "GroupPerHour" >> beam.GroupByKey()
            | "WriteHour" >> beam.ParDo(_WriteHourFn(self._location))
        )
