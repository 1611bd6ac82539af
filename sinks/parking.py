"""Parked batches: documents a stream could not take, kept for re-drive.

A batch is parked when its retries are exhausted, when it failed permanently, or
when its stream is deactivated or paused. A parked batch holds the stream id, why
it was parked, how many attempts were made and the documents (with their kind); it
never holds credentials. Each batch is one JSON file
``<location>/<stream_id>/<batch_id>.json`` in a durable store opened through
Beam's ``FileSystems`` (a local directory here, ``gs://`` or ``s3://`` in
production). One file per batch is what re-drive needs: it deletes exactly the
batches it delivered and keeps the ones that fail again, which Beam's sharded file
sinks (``WriteToText``, ``fileio.WriteToFiles``) cannot do, hence this small
writer. The batch id is derived from the stream and the document ids, so parking
the same batch again (a retried bundle, a re-drive that fails again) rewrites the
same file instead of adding a copy.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import metrics
from schemas.timestamps import now_iso

_LOG = logging.getLogger(__name__)

PARKED = "parked"
DEFAULT_RETENTION_DAYS = 7


@dataclass(frozen=True)
class ParkedBatch:
    stream_id: str
    api_type: str
    reason: str  # STREAM_PAUSED, STREAM_DEACTIVATED, ... (schemas/delivery.py)
    error: str | None  # the last error code (http_503, ReadTimeout, NoSuchBucket, ...)
    token: str | None  # the status token (unreachable, auth_failed, ...)
    status_code: int | None
    attempts: int
    parked_at: str  # ISO 8601 UTC
    documents: tuple[tuple[str, dict[str, Any]], ...]  # (kind, document)

    @property
    def batch_id(self) -> str:
        digest = hashlib.sha256(self.stream_id.encode())
        for kind, document in sorted((k, d["id"]) for k, d in self.documents):
            digest.update(f"|{kind}:{document}".encode())
        return digest.hexdigest()[:24]

    def to_json(self) -> bytes:
        return orjson.dumps({
            "stream_id": self.stream_id,
            "api_type": self.api_type,
            "reason": self.reason,
            "error": self.error,
            "token": self.token,
            "status_code": self.status_code,
            "attempts": self.attempts,
            "parked_at": self.parked_at,
            "documents": [{"kind": kind, "document": document} for kind, document in self.documents],
        })

    @classmethod
    def from_json(cls, data: bytes) -> ParkedBatch:
        raw = orjson.loads(data)
        return cls(
            stream_id=raw["stream_id"],
            api_type=raw["api_type"],
            reason=raw["reason"],
            error=raw.get("error"),
            token=raw.get("token"),
            status_code=raw.get("status_code"),
            attempts=raw["attempts"],
            parked_at=raw["parked_at"],
            documents=tuple((item["kind"], item["document"]) for item in raw["documents"]),
        )


def parked(
    stream_id: str,
    api_type: str,
    reason: str,
    documents: Sequence[tuple[str, dict[str, Any]]],
    *,
    error: str | None = None,
    token: str | None = None,
    status_code: int | None = None,
    attempts: int = 0,
) -> pvalue.TaggedOutput:
    """The ``parked`` output of a sink for a batch it did not deliver."""
    batch = ParkedBatch(stream_id, api_type, reason, error, token, status_code, attempts, now_iso(),
                        tuple(documents))
    return pvalue.TaggedOutput(PARKED, batch)


class ParkStore:
    """The parked batches under one location."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/")

    def path(self, stream_id: str, batch_id: str) -> str:
        return f"{self.location}/{stream_id}/{batch_id}.json"

    def write(self, batch: ParkedBatch) -> str:
        path = self.path(batch.stream_id, batch.batch_id)
        temporary = f"{path}.tmp-{datetime.now(UTC).strftime('%H%M%S%f')}"
        with FileSystems.create(temporary) as handle:
            handle.write(batch.to_json())
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([temporary], [path])
        return path

    def list(self, stream_id: str | None = None) -> list[str]:
        pattern = f"{self.location}/{stream_id or '*'}/*.json"
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)

    def read(self, path: str) -> ParkedBatch:
        with FileSystems.open(path) as handle:
            return ParkedBatch.from_json(handle.read())

    def delete(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if paths:
            FileSystems.delete(paths)

    def expired(self, retention_days: int = DEFAULT_RETENTION_DAYS, now: datetime | None = None) -> list[str]:
        """Batches parked longer than the retention: reported, never deleted here."""
        limit = (now or datetime.now(UTC)) - timedelta(days=retention_days)
        old = []
        for path in self.list():
            batch = self.read(path)
            if datetime.fromisoformat(batch.parked_at) < limit:
                old.append(path)
        return old


class _WriteParkedFn(beam.DoFn):
    def __init__(self, location: str, streams_db: str | None = None) -> None:
        self._location = location
        self._streams_db = streams_db

    def setup(self) -> None:
        self._store = ParkStore(self._location)

    def process(self, batch: ParkedBatch) -> Iterator[str]:
        path = self._store.write(batch)
        Metrics.counter(metrics.NAMESPACE, metrics.parked(batch.api_type)).inc(len(batch.documents))
        Metrics.counter(metrics.NAMESPACE, metrics.stream_measure(batch.stream_id, "parked")).inc(len(batch.documents))
        for kind, _ in batch.documents:
            Metrics.counter(metrics.NAMESPACE, metrics.parked_documents(kind)).inc()
        _LOG.warning("parked %d documents of stream %s (%s, %s)", len(batch.documents), batch.stream_id,
                     batch.reason, batch.error)
        if self._streams_db:  # the portal's "parked over the last hour and day"
            from schemas.stream_store import record_parked_db

            record_parked_db(self._streams_db, batch.stream_id, batch.parked_at, len(batch.documents))
        yield path


class WriteParkedBatches(beam.PTransform):
    """Parked batches -> their paths in the park store, counted per API type
    (and per stream and hour in the portal's store, with ``streams_db``)."""

    def __init__(self, location: str, streams_db: str | None = None) -> None:
        super().__init__()
        self._location = location
        self._streams_db = streams_db

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Write" >> beam.ParDo(_WriteParkedFn(self._location, self._streams_db))
