"""Names of the Beam metrics every stage reports, under one namespace.

The run summary and the reconciliation (read = documents + duplicates + dead
letters) are computed from these counters, so the names are a contract: change
them only together with :mod:`pipelines.summary`.
"""

from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "datastreamer"
DEAD_LETTER_PREFIX = "dead_letter"


def read(kind: str) -> str:
    return f"{kind}.read"


def valid(kind: str) -> str:
    return f"{kind}.valid"


def late(kind: str) -> str:
    """Records delivered although they arrived behind the watermark (streaming)."""
    return f"{kind}.late"


def refresh(what: str, outcome: str) -> str:
    """Side-input refreshes of a streaming run: ``refresh|reference|loaded``, ``...|failed``."""
    return f"refresh|{what}|{outcome}"


def archived(kind: str) -> str:
    return f"archive|{kind}"


def unique(kind: str) -> str:
    return f"{kind}.unique"


def documents(kind: str) -> str:
    return f"{kind}.documents"


def routed(kind: str) -> str:
    """Deliveries routed: one per (document, matching stream)."""
    return f"{kind}.routed"


def routed_documents(kind: str) -> str:
    """Documents routed to at least one stream (each counted once)."""
    return f"{kind}.routed_documents"


def stream_measure(stream_id: str, measure: str) -> str:
    """Per-stream counters: ``routed``, ``delivered``, ``parked``, ``redelivered``,
    ``not_deliverable``."""
    return f"stream|{stream_id}|{measure}"


def filtered(kind: str) -> str:
    """Documents that matched no active stream."""
    return f"{kind}.filtered"


def documents_of_type(event_type_id: int) -> str:
    return f"event.documents|type|{event_type_id}"


def delivery(api_type: str, measure: str) -> str:
    """Delivery counters per API type; ``measure`` is one of ``requests``,
    ``documents`` (delivered), ``failed_documents``, ``bytes``."""
    return f"deliver|{api_type}|{measure}"


def delivery_dead_letter(kind: str, reason: str) -> str:
    """Routed documents a destination can never take (e.g. over its record size)."""
    return f"deliver_dead_letter|{kind}|{reason}"


def parked(api_type: str) -> str:
    """Routed documents parked for re-drive, per API type."""
    return f"deliver|{api_type}|parked"


def parked_documents(kind: str) -> str:
    return f"{kind}.parked"


def redelivered(api_type: str) -> str:
    """Documents delivered by a retry after an attempt that may have reached the
    destination: possibly delivered twice."""
    return f"deliver|{api_type}|redelivered"


def dead_letter_name(kind: str, reason: str) -> str:
    return f"{DEAD_LETTER_PREFIX}|{kind}|{reason}"


def count_dead_letter(kind: str, reason: str) -> None:
    """Count one dead letter by kind and reason. Reasons are a small closed set of
    tokens, so this does not explode the number of metrics."""
    Metrics.counter(NAMESPACE, dead_letter_name(kind, reason)).inc()
