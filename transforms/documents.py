"""Raw records of one kind to customer documents: parse, deduplicate, enrich.

One composite per kind (``'Events' >> RawToDocuments('event', ...)``) so the graph
reads like the data flow of the design brief (docs/architecture.md) and every step has a stable label. Batch and
streaming runs share it; on unbounded input two steps join in: the lateness gate
after parsing (``transforms/lateness.py``), and enrichment reads the reference
snapshot each worker re-reads every refresh interval (``transforms/refresh.py``)
instead of a one-shot side input. On bounded input, records travel in chunks
(``transforms/chunks.py``), and the documents come out one by one, as on
unbounded input, or as the chunks they were made in (``chunked_documents``, what
the job's routing and writers take).
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue

from schemas.records import Kind
from schemas.snapshots import RefreshingSnapshot
from transforms.chunks import CHUNK_SIZE, Chunk, Unchunk
from transforms.dedup import DEFAULT_HORIZON_SECONDS, DeduplicateById
from transforms.enrich import Enrich
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_SECONDS, GateLateRecords
from transforms.parse import DEFAULT_MAX_RECORD_BYTES, ParseRecords


class DocumentsAndDeadLetters(NamedTuple):
    documents: beam.PCollection
    dead_letters: beam.PCollection
    #: validated raw records, before de-duplication, with their event time (for
    #: the archive); on bounded input only when asked for (``keep_valid``)
    valid: beam.PCollection | None


class RawToDocuments(beam.PTransform):
    """Raw elements (bytes or file rows) of one kind -> documents + dead letters."""

    def __init__(
        self,
        kind: Kind,
        reference: pvalue.AsSideInput | RefreshingSnapshot,
        dedup_horizon_seconds: int = DEFAULT_HORIZON_SECONDS,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS,
        heartbeats: beam.PCollection | None = None,
        keep_valid: bool = False,
        chunked_documents: bool = False,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        """``reference``: a side input (batch) or a
        :class:`~transforms.refresh.RefreshingSnapshot` (streaming).
        ``heartbeats`` (the refresh ticks) feed the lateness gate of a streaming
        run. ``keep_valid``: also output the valid
        raw records of a bounded input one by one (the archive's input).
        ``chunked_documents``: output a bounded input's documents as the chunks
        of ``(document, event time in ms)`` pairs they are made in, for steps
        that take chunks (``transforms/chunks.py``), of up to ``chunk_size``
        records; streaming ignores both."""
        super().__init__()
        self._kind = kind
        self._reference = reference
        self._horizon = dedup_horizon_seconds
        self._max_bytes = max_record_bytes
        self._lateness = allowed_lateness_seconds
        self._heartbeats = heartbeats
        self._keep_valid = keep_valid
        self._chunked_documents = chunked_documents
        self._chunk_size = chunk_size

    def expand(self, raw: beam.PCollection) -> DocumentsAndDeadLetters:
        if raw.is_bounded:
            return self._expand_chunked(raw)
        parsed = raw | "ParseAndValidate" >> ParseRecords(self._kind, self._max_bytes)
        valid, dead = parsed.records, [parsed.dead_letters]
        if not raw.is_bounded:
            gated = valid | "GateLateRecords" >> GateLateRecords(self._kind, self._lateness, self._heartbeats)
            valid = gated.records
            dead.append(gated.dead_letters)
        unique = valid | "Deduplicate" >> DeduplicateById(self._kind, self._horizon)
        enriched = unique | "Enrich" >> Enrich(self._kind, self._reference)
        dead.append(enriched.dead_letters)
        return DocumentsAndDeadLetters(enriched.documents, tuple(dead) | "DeadLetters" >> beam.Flatten(), valid)

    def _expand_chunked(self, raw: beam.PCollection) -> DocumentsAndDeadLetters:
        chunks = raw | "Chunk" >> Chunk(self._chunk_size)
        parsed = chunks | "ParseAndValidate" >> ParseRecords(self._kind, self._max_bytes, chunked=True)
        unique = parsed.records | "Deduplicate" >> DeduplicateById(self._kind, self._horizon, self._chunk_size)
        enriched = unique | "Enrich" >> Enrich(self._kind, self._reference, chunked=True)
        documents = enriched.documents
        if not self._chunked_documents:
            documents = documents | "Unchunk" >> Unchunk()
        valid = parsed.records | "UnchunkValid" >> Unchunk() if self._keep_valid else None
        dead = (parsed.dead_letters, enriched.dead_letters) | "DeadLetters" >> beam.Flatten()
        return DocumentsAndDeadLetters(documents, dead, valid)
