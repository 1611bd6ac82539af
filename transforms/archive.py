"""The raw archive: every valid raw record, in hourly Avro files, for backfill.

Records are archived after validation and before de-duplication, as they arrived
(the raw field names and values of ``schemas/avro/raw_*.avsc``), into one file per
kind and event-time hour: ``<location>/events-20261101T08.avro``,
``<location>/usage-20261101T08.avro``. The name comes from the window, so a replay
of an hour rewrites its file instead of adding a second copy, and a backfill finds
an hour's records without listing the whole archive. Written with Beam's
``fileio.WriteToFiles`` (windowed, one shard per window) through a small fastavro
sink, readable with ``ReadAllFromAvro`` anywhere Beam's filesystems reach
(a directory here; ``gs://`` or ``s3://`` in production).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import FixedWindows
from fastavro.write import Writer

from schemas import load_schema
from transforms.records import Kind

HOUR_SECONDS = 3600
_PREFIX = {"event": "events", "usage": "usage"}
_SCHEMA = {"event": "raw_event", "usage": "raw_usage"}


def archive_file_name(kind: str, hour: datetime) -> str:
    return f"{_PREFIX[kind]}-{hour:%Y%m%dT%H}.avro"


def archive_paths(location: str, kind: str, start: datetime, end: datetime) -> Iterator[str]:
    """The archive files of ``kind`` whose hour overlaps ``[start, end)`` and exist."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while hour < end:
        path = f"{location.rstrip('/')}/{archive_file_name(kind, hour)}"
        if FileSystems.exists(path):
            yield path
        hour += timedelta(hours=1)


class AvroRecordSink(fileio.FileSink):
    """Writes raw records of one schema to an Avro container file (fastavro)."""

    def __init__(self, schema_name: str) -> None:
        self._schema_name = schema_name
        self._writer: Writer | None = None

    def open(self, fh: BinaryIO) -> None:
        self._writer = Writer(fh, load_schema(self._schema_name))

    def write(self, record: dict[str, Any]) -> None:
        self._writer.write(record)  # type: ignore[union-attr]

    def flush(self) -> None:
        self._writer.flush()  # type: ignore[union-attr]


def _hourly_naming(kind: str):
    def naming(window: Any, pane: Any, shard_index: int, total_shards: int, compression: Any,
               destination: Any) -> str:
        start = datetime.fromtimestamp(int(window.start), tz=UTC)
        return archive_file_name(kind, start)

    return naming


class ArchiveRawRecords(beam.PTransform):
    """Valid raw records of one kind (with event-time timestamps) -> hourly Avro
    files under ``location``; outputs the written file results."""

    def __init__(self, kind: Kind, location: str) -> None:
        super().__init__()
        self._kind = kind
        self._location = location

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        schema = _SCHEMA[self._kind]
        return (
            records
            | "Hourly" >> beam.WindowInto(FixedWindows(HOUR_SECONDS))
            | "Write" >> fileio.WriteToFiles(
                path=self._location,
                file_naming=_hourly_naming(self._kind),
                sink=lambda _: AvroRecordSink(schema),
                shards=1,
                # fileio leaves an empty temporary directory per run behind; keep
                # them out of the way of the hourly files.
                temp_directory=StaticValueProvider(str, f"{self._location.rstrip('/')}/_temp"),
            )
        )
