"""Flink's names of the job's counters, read back (``tools/flink/metrics.py``).
The REST reading itself runs for real in ``tests/e2e/test_flink_streaming.py``."""

from __future__ import annotations

import pytest

from schemas import metrics
from tools.flink.metrics import beam_name


@pytest.mark.parametrize("name", [
    *(measure(kind) for kind in ("event", "usage") for measure in (
        metrics.read, metrics.valid, metrics.late, metrics.unique, metrics.documents, metrics.routed,
        metrics.routed_documents, metrics.filtered)),
    metrics.documents_of_type(12),
    metrics.refresh("reference", "loaded"),
    metrics.stream_measure("rest-bulk-80025", "routed"),
    metrics.delivery("rest_api_bulk", "documents"),
    metrics.delivery_dead_letter("event", "payload_too_large"),
    metrics.dead_letter_name("usage", "not_json"),
])
def test_every_counter_name_survives_flinks_dots_to_underscores(name):
    assert beam_name(name.replace(".", "_")) == name
