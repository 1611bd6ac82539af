"""DataDog series: usage documents of one stream and window become metric payloads.

The guide (6.3) sends four metrics per endpoint: ``endpoint.volume``,
``endpoint.volume_rx``, ``endpoint.volume_tx`` (MB) and ``endpoint.cost``. One
point per 45 s usage record would flood DataDog with points that mean nothing
alone, so the sink aggregates: each stream has its own interval
(``batching.metrics_interval_seconds``, carried in the routed key), usage documents
are put in epoch-aligned fixed windows of that size, and per window and endpoint the
volumes and cost are summed. Each sum becomes one ``count`` point (type 1) at the
window start with ``interval`` = the window size, so DataDog can roll the points up
into any longer interval without losing MB or money.

Why the documents travel to the delivery step instead of being combined upstream
(a ``CombinePerKey`` would hold less): a payload that is not delivered is parked
with the documents whose series it carries, so a re-drive can route them through
this sink again and get the same series, bit for bit. Sums of numbers could not be
re-driven, nor reconciled document by document. The cost is memory: one stream's
usage documents of one window are in memory together on a worker.

Sums, not anything smarter: documents reach this sink de-duplicated by record id
(``transforms/dedup.py``), so adding them up is exact. A replay that re-sent
documents without that de-duplication would double-count the volumes and cost.
The sums are exact and independent of the order the documents arrive in (the
partial sums of :func:`math.fsum`), so the same documents always give the same
values, bit for bit, and a re-delivered window sends identical payloads.

Volumes are those of the ``Data`` traffic type only: an SMS record's ``volume``
counts messages, not MB. Cost is the cost of every usage document, data and SMS.
Points of one key carry the same tags (``endpoint_id``, ``sim_id``, ``iccid``,
``imsi``, ``organisation_id``, ``organisation``, ``operator_id``, ``operator``,
``country``, ``currency``), normalised to DataDog's tag rules. The key includes
the currency so costs in two currencies are never added into one number.

Payloads: DataDog accepts at most 500 KB (512,000 bytes) of JSON a request; the
sink splits a window's series into payloads of at most ``max_payload_bytes``.
The four series of one key always travel together, so each payload's documents
are exact (the documents aggregated into its series) and a failed payload loses
whole endpoints, never a part of one. Series are sorted, so the same input yields
the same payloads. An endpoint whose four series exceed any payload can never be
sent: its documents become dead letters (``record_too_large``).

Pure functions (and the combiner that defines the sums): no I/O, so they can be
tested and reused apart from the delivery DoFn in ``sinks/datadog.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
from apache_beam.transforms.window import IntervalWindow

from sinks.results import chunked

#: ``MetricIntakeType``: 0 unspecified, 1 count, 2 rate, 3 gauge.
COUNT_TYPE = 1
VOLUME, VOLUME_RX, VOLUME_TX, COST = "endpoint.volume", "endpoint.volume_rx", "endpoint.volume_tx", "endpoint.cost"
METRICS = (COST, VOLUME, VOLUME_RX, VOLUME_TX)
DATA_TRAFFIC = "Data"
VOLUME_UNIT = "megabyte"  # decimal MB (10^6 bytes), as the documents' volumes; DataDog's "megabyte"
#: DataDog's money units, by ISO currency code; other currencies get no unit
#: (the ``currency`` tag still says which one it is).
CURRENCY_UNITS = {"EUR": "euro", "USD": "dollar", "GBP": "pound", "JPY": "yen"}

_TAG_INVALID = re.compile(r"[^a-z0-9_:./-]")
MAX_TAG_LENGTH = 200
_ENVELOPE = (b'{"series":[', b"]}")


# --------------------------------------------------------------------------- aggregation


class EndpointKey(NamedTuple):
    """What one set of series describes: the endpoint, its SIM and IMSI, the
    organisation and the visited operator and country, and the cost currency."""

    endpoint_id: int
    sim_id: int
    iccid: str
    imsi: str
    organisation_id: int
    organisation: str
    operator_id: int
    operator: str
    country: str
    currency: str


def endpoint_key(document: Mapping[str, Any]) -> tuple[Any, ...]:
    """The aggregation key of a usage document, as a plain tuple (a deterministic
    key for the runner's coders; :class:`EndpointKey` gives its fields names)."""
    operator = document["operator"]
    return (
        document["endpoint"]["id"],
        document["sim"]["id"],
        document["sim"]["iccid"],
        document["imsi"],
        document["organisation"]["id"],
        document["organisation"]["name"],
        operator["id"],
        operator["name"],
        operator["country"]["name"],
        document["currency"]["code"],
    )


def is_data(document: Mapping[str, Any]) -> bool:
    """Only ``Data`` traffic has volumes in MB; an SMS record's volume counts messages."""
    return document["traffic_type"]["name"] == DATA_TRAFFIC


class UsageTotals(NamedTuple):
    volume: float
    volume_rx: float
    volume_tx: float
    cost: float
    documents: int


def _add_exact(partials: list[float], value: float) -> None:
    """Add ``value`` to ``partials``, non-overlapping floats whose exact sum is the
    running total (Shewchuk's algorithm, what :func:`math.fsum` does inside).
    ``math.fsum(partials)`` is then the correctly rounded sum, whatever the order
    the values and partial accumulators arrived in."""
    i = 0
    for other in partials:
        if abs(value) < abs(other):
            value, other = other, value
        high = value + other
        low = other - (high - value)
        if low:
            partials[i] = low
            i += 1
        value = high
    partials[i:] = [value]


#: Accumulator: exact partial sums of volume, rx, tx and cost, and a document count.
_Accumulator = tuple[list[float], list[float], list[float], list[float], int]


class UsageTotalsFn(beam.CombineFn):
    """Sums of one endpoint key's usage documents in one window.

    Exact and order independent, so the order a GroupByKey hands the documents
    over in (or, used as a combiner, bundle boundaries and combiner lifting) can
    never change a value, nor, therefore, a payload."""

    def create_accumulator(self) -> _Accumulator:
        return [], [], [], [], 0

    def add_input(self, accumulator: _Accumulator, document: Mapping[str, Any]) -> _Accumulator:
        volume, rx, tx, cost, count = accumulator
        if is_data(document):
            _add_exact(volume, float(document["volume"]["total"]))
            _add_exact(rx, float(document["volume"]["rx"]))
            _add_exact(tx, float(document["volume"]["tx"]))
        _add_exact(cost, float(document["cost"]))
        return volume, rx, tx, cost, count + 1

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
        volume: list[float] = []
        rx: list[float] = []
        tx: list[float] = []
        cost: list[float] = []
        count = 0
        for acc in accumulators:
            for target, partials in zip((volume, rx, tx, cost), acc[:4], strict=True):
                for value in partials:
                    _add_exact(target, value)
            count += acc[4]
        return volume, rx, tx, cost, count

    def extract_output(self, accumulator: _Accumulator) -> UsageTotals:
        volume, rx, tx, cost, count = accumulator
        return UsageTotals(math.fsum(volume), math.fsum(rx), math.fsum(tx), math.fsum(cost), count)


class EndpointUsage(NamedTuple):
    """One endpoint key's totals in one window, and the documents summed into them."""

    key: tuple[Any, ...]
    totals: UsageTotals
    documents: tuple[dict[str, Any], ...]


def _in_order(documents: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Documents by record id: the same documents always give the same parked batch."""
    return tuple(sorted(documents, key=lambda document: document["id"]))


def aggregate_usage(documents: Iterable[dict[str, Any]]) -> list[EndpointUsage]:
    """Totals per endpoint key of one stream's documents of one window, each with
    its documents (what a payload that is not delivered parks)."""
    fn = UsageTotalsFn()
    accumulators: dict[tuple[Any, ...], _Accumulator] = {}
    members: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for document in documents:
        key = endpoint_key(document)
        if key not in accumulators:
            accumulators[key], members[key] = fn.create_accumulator(), []
        accumulators[key] = fn.add_input(accumulators[key], document)
        members[key].append(document)
    return [EndpointUsage(key, fn.extract_output(acc), _in_order(members[key])) for key, acc in accumulators.items()]


# --------------------------------------------------------------------------- series


def tag(key: str, value: Any) -> str | None:
    """``key:value`` by DataDog's tag rules: lower case; characters other than
    letters, digits, ``_ : . / -`` become ``_``; at most 200 characters; not
    ending in a colon. ``None`` when the value is empty (a bare ``key:`` is not a
    valid tag, and an empty value slices nothing)."""
    text = "" if value is None else str(value)
    if not text:
        return None
    normalised = _TAG_INVALID.sub("_", f"{key}:{text}".lower())[:MAX_TAG_LENGTH]
    if normalised.endswith(":"):
        normalised = normalised.rstrip(":") + "_"
    return normalised


def series_tags(key: EndpointKey) -> list[str]:
    pairs = (
        ("endpoint_id", key.endpoint_id),
        ("sim_id", key.sim_id),
        ("iccid", key.iccid),
        ("imsi", key.imsi),
        ("organisation_id", key.organisation_id),
        ("organisation", key.organisation),
        ("operator_id", key.operator_id),
        ("operator", key.operator),
        ("country", key.country),
        ("currency", key.currency),
    )
    return [t for t in (tag(k, v) for k, v in pairs) if t is not None]


class SeriesGroup(NamedTuple):
    """The four series of one key in one window: the unit a payload never splits."""

    tags: tuple[str, ...]
    documents: int
    series: tuple[dict[str, Any], ...]
    usage_documents: tuple[dict[str, Any], ...] = ()


def _series(metric: str, unit: str | None, value: float, timestamp: int, interval: int,
            tags: list[str]) -> dict[str, Any]:
    series: dict[str, Any] = {
        "metric": metric,
        "type": COUNT_TYPE,
        "interval": interval,
        "points": [{"timestamp": timestamp, "value": value}],
        "tags": tags,
    }
    if unit is not None:
        series["unit"] = unit
    return series



def series_groups(aggregates: Iterable[EndpointUsage], window_start: int, interval: int) -> list[SeriesGroup]:
    """The series of one stream and window, one group per key, sorted by tags.

    Keys whose tags normalise to the same set (two spellings of one operator name)
    are merged: DataDog would otherwise see two points of one series at one
    timestamp and keep only one of them."""
    merged: dict[tuple[str, ...], tuple[str, list[EndpointUsage]]] = {}
    for usage in aggregates:
        key = EndpointKey(*usage.key)
        tags = tuple(series_tags(key))
        entry = merged.setdefault(tags, (key.currency, []))
        entry[1].append(usage)
    groups = []
    for tags, (currency, parts) in sorted(merged.items()):
        tag_list = list(tags)
        values = {
            VOLUME: math.fsum(p.totals.volume for p in parts),
            VOLUME_RX: math.fsum(p.totals.volume_rx for p in parts),
            VOLUME_TX: math.fsum(p.totals.volume_tx for p in parts),
            COST: math.fsum(p.totals.cost for p in parts),
        }
        series = tuple(
            _series(metric, CURRENCY_UNITS.get(currency) if metric == COST else VOLUME_UNIT,
                    values[metric], window_start, interval, tag_list)
            for metric in METRICS
        )
        documents = _in_order(d for p in parts for d in p.documents)
        groups.append(SeriesGroup(tags, sum(p.totals.documents for p in parts), series, documents))
    return groups


def group_size(group: SeriesGroup) -> int:
    """Bytes of the group's series in a payload, with the commas between them."""
    return sum(len(orjson.dumps(s)) for s in group.series) + len(group.series) - 1


class Payload(NamedTuple):
    body: bytes
    documents: int
    series: int
    #: the usage documents whose series the body carries, by id: what is parked
    #: when the payload is not delivered
    usage_documents: tuple[dict[str, Any], ...] = ()


def build_payloads(groups: Sequence[SeriesGroup], max_bytes: int) -> tuple[list[Payload], list[SeriesGroup]]:
    """Pack whole groups, in order, into payloads of at most ``max_bytes``; within
    a payload the series are sorted by (metric, tags). Returns the payloads and the
    groups too large for any payload (never sendable: dead letters)."""
    envelope = len(_ENVELOPE[0]) + len(_ENVELOPE[1])
    budget = max_bytes - envelope
    sized = [(group, group_size(group)) for group in groups]
    too_large = [group for group, size in sized if size + 1 > budget]
    fitting = [(group, size) for group, size in sized if size + 1 <= budget]
    payloads = []
    # overhead 1: the comma before each group (one more than needed, never less).
    for chunk in chunked(fitting, len(fitting) or 1, budget, lambda item: item[1], overhead=1):
        series = sorted((s for group, _ in chunk for s in group.series), key=lambda s: (s["metric"], s["tags"]))
        body = _ENVELOPE[0] + b",".join(orjson.dumps(s) for s in series) + _ENVELOPE[1]
        documents = _in_order(d for group, _ in chunk for d in group.usage_documents)
        payloads.append(Payload(body, sum(group.documents for group, _ in chunk), len(series), documents))
    return payloads, too_large


def window_bounds(window: IntervalWindow) -> tuple[int, int]:
    """(start in epoch seconds, size in seconds) of a fixed window."""
    start = window.start.micros // 1_000_000
    return start, (window.end.micros - window.start.micros) // 1_000_000
