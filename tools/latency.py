"""Per-document delivery latency from what an :class:`~tools.local_destinations.HttpReceiver` recorded.

A document's latency is the time from when it was sent (a publish time the test
supplies, or the document's own timestamp) to its first *accepted* arrival: the
first request carrying it that the receiver answered with a complete 2xx
(:attr:`~tools.local_destinations.RecordedRequest.accepted`). Attempts that got a
fault do not count, so a document that waited out a 40 s outage shows 40 s. The
percentiles are the bench's (``tools/bench/streaming.py``): nearest rank, with
documents that never arrived counted as infinitely late.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from sinks.ordering import document_time
from tools.bench.streaming import latency_stats, percentile
from tools.local_destinations import HttpReceiver, RecordedRequest

__all__ = ["arrivals", "documents", "latencies", "latency_report", "percentile", "timestamp_latencies"]

Requests = HttpReceiver | Iterable[RecordedRequest]


def documents(request: RecordedRequest) -> list[dict[str, Any]]:
    """The documents one request carried: a JSON array (``rest_api_bulk``), one JSON
    object (``rest_api``), or the records of a Kinesis ``PutRecords`` / ``PutRecord``
    call (base64 ``Data``, as recorded by ``tools/aws_proxy.py``). A body that is
    none of these carries none."""
    try:
        body = json.loads(request.body)
    except ValueError:
        return []
    target = request.header("X-Amz-Target") or ""
    if target.endswith((".PutRecords", ".PutRecord")) and isinstance(body, dict):
        records = body.get("Records", [body])
        try:
            body = [json.loads(base64.b64decode(r["Data"])) for r in records if isinstance(r, dict)]
        except (KeyError, TypeError, ValueError, binascii.Error):
            return []
    items = body if isinstance(body, list) else [body]
    return [item for item in items if isinstance(item, dict)]


def arrivals(requests: Requests, key: str = "id") -> dict[str, tuple[RecordedRequest, dict[str, Any]]]:
    """``str(document[key])`` -> (first accepted request carrying it, the document)."""
    recorded = requests.requests() if isinstance(requests, HttpReceiver) else requests
    first: dict[str, tuple[RecordedRequest, dict[str, Any]]] = {}
    for request in sorted((r for r in recorded if r.accepted), key=lambda r: r.received_monotonic):
        for document in documents(request):
            if key in document:
                first.setdefault(str(document[key]), (request, document))
    return first


def latencies(requests: Requests, sent_at: Mapping[Any, float], *, key: str = "id",
              clock: Literal["wall", "monotonic"] = "wall") -> list[float]:
    """Seconds from ``sent_at[id]`` to the document's first accepted arrival, for each
    document of ``sent_at`` that arrived (ids compared as text). ``clock`` says
    which clock ``sent_at`` was read from: ``time.time()`` or ``time.monotonic()``."""
    first = arrivals(requests, key)
    out = []
    for doc_id, sent in sent_at.items():
        if (hit := first.get(str(doc_id))) is not None:
            request = hit[0]
            out.append((request.received_at if clock == "wall" else request.received_monotonic) - sent)
    return out


def timestamp_latencies(requests: Requests) -> list[float]:
    """Seconds from each arrived document's own time (an event's ``timestamp``, a
    usage record's ``end_timestamp``: ``sinks.ordering``) to its first accepted
    arrival. Meaningful for a live stream, whose records are stamped when sent."""
    out = []
    for request, document in arrivals(requests).values():
        kind = "usage" if "end_timestamp" in document else "event"
        out.append(request.received_at - document_time(kind, document).timestamp())
    return out


def latency_report(requests: Requests, sent_at: Mapping[Any, float], **kwargs: Any) -> dict[str, float]:
    """p50/p95/p99/max of :func:`latencies`, documents of ``sent_at`` that never
    arrived counting as infinitely late, plus ``delivered`` and ``lost`` counts."""
    values = latencies(requests, sent_at, **kwargs)
    lost = len(sent_at) - len(values)
    return {**latency_stats(values, lost), "delivered": len(values), "lost": lost}
