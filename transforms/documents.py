"""Raw records of one kind to customer documents: parse, deduplicate, enrich.

One composite per kind (``'Events' >> RawToDocuments('event', ...)``) so the graph
reads like the data flow of the design brief (docs/architecture.md) and every step has a stable label. Batch and
streaming runs share it; on unbounded input two steps join in: the lateness gate
after parsing (``transforms/lateness.py``), and fixed windows of the refresh
interval before enrichment, so each record meets the reference snapshot of its
interval (``transforms/refresh.py``). On bounded input, records travel in chunks
(``transforms/chunks.py``), and the documents come out one by one, as on
unbounded input, or as the chunks they were made in (``chunked_documents``, what
the job's routing and writers take).
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindows, WindowFn

from schemas.records import Kind
from transforms.chunks import CHUNK_SIZE, Chunk, Unchunk
from transforms.dedup import DEFAULT_HORIZON_SECONDS, DeduplicateById
from transforms.enrich import Enrich
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_SECONDS, GateLateRecords, window_lateness_seconds
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
        reference: pvalue.AsSideInput,
        dedup_horizon_seconds: int = DEFAULT_HORIZON_SECONDS,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        allowed_lateness_seconds: int = DEFAULT_ALLOWED_LATENESS_SECONDS,
        snapshot_windows: WindowFn | None = None,
        heartbeats: beam.PCollection | None = None,
        refresh_interval_seconds: int = 0,
        keep_valid: bool = False,
        chunked_documents: bool = False,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        """``snapshot_windows``: the windows enrichment runs in when ``reference``
        is a refreshing (windowed) side input; ``None`` for a global one.
        ``heartbeats`` (the refresh ticks) and ``refresh_interval_seconds`` feed the
        lateness gate of a streaming run. ``keep_valid``: also output the valid
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
        self._snapshot_windows = snapshot_windows
        self._heartbeats = heartbeats
        self._window_lateness = window_lateness_seconds(allowed_lateness_seconds, refresh_interval_seconds)
        self._keep_valid = keep_valid
        self._chunked_documents = chunked_documents
        self._chunk_size = chunk_size

    def expand(self, raw: beam.PCollection) -> DocumentsAndDeadLetters:
        if raw.is_bounded and self._snapshot_windows is None:
            return self._expand_chunked(raw)
        parsed = raw | "ParseAndValidate" >> ParseRecords(self._kind, self._max_bytes)
        valid, dead = parsed.records, [parsed.dead_letters]
        if not raw.is_bounded:
            gated = valid | "GateLateRecords" >> GateLateRecords(self._kind, self._lateness, self._heartbeats)
            valid = gated.records
            dead.append(gated.dead_letters)
        unique = valid | "Deduplicate" >> DeduplicateById(self._kind, self._horizon)
        if self._snapshot_windows is not None:
            # Late records (behind the watermark, let through by the gate) must not be
            # dropped by the stateful steps in these windows (batching): allow them.
            unique = unique | "SnapshotWindows" >> beam.WindowInto(
                self._snapshot_windows, allowed_lateness=self._window_lateness)
        enriched = unique | "Enrich" >> Enrich(self._kind, self._reference)
        enrich_dead = enriched.dead_letters
        if self._snapshot_windows is not None:
            enrich_dead = enrich_dead | "UnwindowDeadLetters" >> beam.WindowInto(GlobalWindows())
        dead.append(enrich_dead)
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
