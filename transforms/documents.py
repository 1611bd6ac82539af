"""Raw records of one kind to customer documents: parse, deduplicate, enrich.

One composite per kind (``'Events' >> RawToDocuments('event', ...)``) so the graph
reads like the data flow of DESIGN.md and every step has a stable label.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue

from transforms.dedup import DEFAULT_HORIZON_SECONDS, DeduplicateById
from transforms.enrich import Enrich
from transforms.parse import DEFAULT_MAX_RECORD_BYTES, ParseRecords
from transforms.records import Kind


class DocumentsAndDeadLetters(NamedTuple):
    documents: beam.PCollection
    dead_letters: beam.PCollection
    valid: beam.PCollection  # validated raw records, before de-duplication (for the archive)


class RawToDocuments(beam.PTransform):
    """Raw elements (bytes or file rows) of one kind -> documents + dead letters."""

    def __init__(
        self,
        kind: Kind,
        reference: pvalue.AsSideInput,
        dedup_horizon_seconds: int = DEFAULT_HORIZON_SECONDS,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        super().__init__()
        self._kind = kind
        self._reference = reference
        self._horizon = dedup_horizon_seconds
        self._max_bytes = max_record_bytes

    def expand(self, raw: beam.PCollection) -> DocumentsAndDeadLetters:
        parsed = raw | "ParseAndValidate" >> ParseRecords(self._kind, self._max_bytes)
        unique = parsed.records | "Deduplicate" >> DeduplicateById(self._kind, self._horizon)
        enriched = unique | "Enrich" >> Enrich(self._kind, self._reference)
        dead = (parsed.dead_letters, enriched.dead_letters) | "DeadLetters" >> beam.Flatten()
        return DocumentsAndDeadLetters(enriched.documents, dead, parsed.records)
