"""What every sink emits besides its delivery results (``schemas/delivery.py``):
its outputs' shape, dead letters, counters, and the request sizing they share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from schemas import metrics
from schemas.records import dead_letter
from schemas.timestamps import now_iso
from sinks.parking import PARKED

DEAD_LETTERS = "dead_letters"

T = TypeVar("T")


class DeliveryCounters:
    """The delivery counters of one API type (names in ``schemas/metrics.py``);
    create them in a sink's ``setup``."""

    def __init__(self, api_type: str) -> None:
        def counter(measure: str) -> Any:
            return Metrics.counter(metrics.NAMESPACE, metrics.delivery(api_type, measure))

        self.requests = counter("requests")  # attempts
        self.documents = counter("documents")  # delivered
        self.failed_documents = counter("failed_documents")
        self.bytes = counter("bytes")  # delivered
        self.dead_letters = counter("dead_letters")
        self.redelivered = Metrics.counter(metrics.NAMESPACE, metrics.redelivered(api_type))


class Stopwatch:
    """Start time and duration of one request, for its DeliveryResult."""

    def __init__(self) -> None:
        self.started_at = now_iso()
        self._start = time.monotonic()

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self._start) * 1000)


def describe_error(err: BaseException) -> str:
    """A short, secret-free error token: the exception class, plus the AWS error
    code when there is one. Exception messages are not used: some libraries put
    request details (headers, URLs with tokens) into them."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(err).__name__


class SinkOutputs(NamedTuple):
    """What a ``WriteTo...`` transform returns: one delivery result per request
    (and per batch parked without a request), dead letters of documents no
    destination can take, and parked batches (``sinks/parking.py``)."""

    results: beam.PCollection
    dead_letters: beam.PCollection
    parked: beam.PCollection | None = None


def too_large_dead_letter(
    kind: str, document: dict[str, Any], size: int, limit: int, api_type: str, stream_id: str | None = None
):
    """A document that can never fit the destination's record limit is not sent:
    it becomes a dead letter at the deliver stage, with the document as payload
    and the stream it was routed to."""
    letter = dead_letter(
        kind,  # type: ignore[arg-type]
        "deliver",
        "record_too_large",
        f"{api_type} record of {size} bytes exceeds the {limit}-byte limit",
        orjson.dumps(document),
        document.get("id"),
    )
    if stream_id is not None:
        letter["stream_id"] = stream_id
    return pvalue.TaggedOutput(DEAD_LETTERS, letter)


def chunked(
    items: Iterable[T], max_count: int, max_bytes: int, size_of: Callable[[T], int], overhead: int = 0
) -> Iterator[list[T]]:
    """Split ``items`` in order into lists of at most ``max_count`` items whose
    sizes (plus ``overhead`` per item) add up to at most ``max_bytes``. An item
    larger than ``max_bytes`` on its own is yielded alone; callers reject those
    first."""
    chunk: list[T] = []
    total = 0
    for item in items:
        size = size_of(item) + overhead
        if chunk and (len(chunk) >= max_count or total + size > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk


def apply_sink(batches: beam.PCollection, label: str, fn: beam.DoFn, streams: pvalue.AsSideInput) -> SinkOutputs:
    """``batches | label >> ParDo(fn)`` with the outputs every sink has."""
    outputs = batches | label >> beam.ParDo(fn, streams).with_outputs(DEAD_LETTERS, PARKED, main="results")
    return SinkOutputs(results=outputs.results, dead_letters=outputs[DEAD_LETTERS], parked=outputs[PARKED])
