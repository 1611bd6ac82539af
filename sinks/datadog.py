"""DataDog delivery: usage documents become metrics in the customer's DataDog.

The guide (6.3) sends four metrics per endpoint: ``endpoint.volume``,
``endpoint.volume_rx``, ``endpoint.volume_tx`` (MB) and ``endpoint.cost``. One
point per 45 s usage record would flood DataDog with points that mean nothing
alone, so the sink aggregates: each stream has its own interval
(``batching.metrics_interval_seconds``, carried in the routed key), usage documents
are put in epoch-aligned fixed windows of that size, and per window and endpoint the
volumes and cost are summed. Each sum becomes one ``count`` point (type 1) at the
window start with ``interval`` = the window size, so DataDog can roll the points up
into any longer interval without losing MB or money.

Shape of the branch::

    ((stream_id, interval), usage document)
      -> Window (PerElementFixedWindows, size from the key)
      -> KeyByEndpoint -> Aggregate (CombinePerKey: sums and a document count)
      -> KeyByStream -> GroupByStream (one element per stream and window)
      -> Deliver (series payloads POSTed to {base_url}/api/v2/series)

Sums, not anything smarter: documents reach this sink de-duplicated by record id
(``transforms/dedup.py``), so adding them up is exact. A replay that re-sent
documents without that de-duplication would double-count the volumes and cost.
The sums are exact and independent of the order Beam combines them in (the partial
sums of :func:`math.fsum`), so the same documents always give the same values,
bit for bit, and a re-delivered window sends identical payloads.

Volumes are those of the ``Data`` traffic type only: an SMS record's ``volume``
counts messages, not MB. Cost is the cost of every usage document, data and SMS.
Points of one key carry the same tags (``endpoint_id``, ``sim_id``, ``iccid``,
``imsi``, ``organisation_id``, ``organisation``, ``operator_id``, ``operator``,
``country``, ``currency``), normalised to DataDog's tag rules. The key includes
the currency so costs in two currencies are never added into one number.

Payloads: DataDog accepts at most 500 KB (512,000 bytes) of JSON a request; the
sink splits a window's series into payloads of at most ``max_payload_bytes``.
The four series of one key always travel together, so each payload's
``documents`` is exact (the documents aggregated into its series) and a failed
payload loses whole endpoints, never a part of one. Series are sorted, so the
same input yields the same payloads.

What counts as delivered: a 2xx answer (DataDog answers 202). Everything else is a
failed :class:`~sinks.results.DeliveryResult` with the status code (403: bad API
key) or an error token (``ConnectionError``, ``ReadTimeout``,
``secret_unavailable``, ``unknown_stream``, ``redirect_not_followed``); nothing is
retried in this step and nothing raises out of ``process``: a raised exception
would replay the bundle, every other stream's metrics with it, indefinitely.
DataDog drops points more than an hour old or ten minutes in the future, so a
historic replay through this sink is accepted (202) but not stored.

Credentials: ``DD-API-KEY`` (and ``DD-APPLICATION-KEY`` when the stream names one)
are resolved on the worker from the stream's references and only ever live in the
request headers; results, dead letters and log lines carry the URL (credential
free by config validation), status codes and error tokens.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
import requests
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import IntervalWindow

from schemas.streams import DataDogDestination, DataStream, StreamConfig
from sinks.http import SessionFactory, Timeouts, new_session
from sinks.results import (
    DEAD_LETTERS,
    DELIVERED,
    FAILED,
    DeliveryResult,
    SinkOutputs,
    Stopwatch,
    chunked,
    describe_error,
    too_large_dead_letter,
)
from sinks.secrets import SecretError, SecretResolver
from transforms import metrics
from transforms.windows import PerElementFixedWindows, size_from_key

_LOG = logging.getLogger(__name__)

DATADOG = "datadog"
SERIES_PATH = "/api/v2/series"

#: DataDog's documented limit is 500 KB (512,000 bytes) of uncompressed JSON a
#: request; the default keeps a margin below it.
DATADOG_MAX_PAYLOAD_BYTES = 512_000
DEFAULT_MAX_PAYLOAD_BYTES = 500_000
DEFAULT_TIMEOUTS = Timeouts()
#: Below this a single endpoint's four series (tags of up to 200 characters each)
#: might not fit at all.
MIN_PAYLOAD_BYTES = 4_096

#: ``MetricIntakeType``: 0 unspecified, 1 count, 2 rate, 3 gauge.
COUNT_TYPE = 1
VOLUME, VOLUME_RX, VOLUME_TX, COST = "endpoint.volume", "endpoint.volume_rx", "endpoint.volume_tx", "endpoint.cost"
METRICS = (COST, VOLUME, VOLUME_RX, VOLUME_TX)
DATA_TRAFFIC = "Data"
VOLUME_UNIT = "megabyte"  # decimal MB (10^6 bytes), as the documents' volumes; DataDog's "megabyte"
#: DataDog's money units, by ISO currency code; other currencies get no unit
#: (the ``currency`` tag still says which one it is).
CURRENCY_UNITS = {"EUR": "euro", "USD": "dollar", "GBP": "pound", "JPY": "yen"}

#: Error tokens of failures that are not exceptions (the same as the REST sinks').
SECRET_UNAVAILABLE = "secret_unavailable"
UNKNOWN_STREAM = "unknown_stream"
REDIRECT_NOT_FOLLOWED = "redirect_not_followed"
HTTP_ERROR = "http_error"

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

    Exact and order independent, so bundle boundaries and combiner lifting can
    never change a value (nor, therefore, a payload)."""

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


def series_groups(aggregates: Iterable[tuple[Sequence[Any], UsageTotals]], window_start: int,
                  interval: int) -> list[SeriesGroup]:
    """The series of one stream and window, one group per key, sorted by tags.

    Keys whose tags normalise to the same set (two spellings of one operator name)
    are merged: DataDog would otherwise see two points of one series at one
    timestamp and keep only one of them."""
    merged: dict[tuple[str, ...], tuple[str, list[UsageTotals]]] = {}
    for raw_key, totals in aggregates:
        key = EndpointKey(*raw_key)
        tags = tuple(series_tags(key))
        entry = merged.setdefault(tags, (key.currency, []))
        entry[1].append(totals)
    groups = []
    for tags, (currency, parts) in sorted(merged.items()):
        tag_list = list(tags)
        values = {
            VOLUME: math.fsum(p.volume for p in parts),
            VOLUME_RX: math.fsum(p.volume_rx for p in parts),
            VOLUME_TX: math.fsum(p.volume_tx for p in parts),
            COST: math.fsum(p.cost for p in parts),
        }
        series = tuple(
            _series(metric, CURRENCY_UNITS.get(currency) if metric == COST else VOLUME_UNIT,
                    values[metric], window_start, interval, tag_list)
            for metric in METRICS
        )
        groups.append(SeriesGroup(tags, sum(p.documents for p in parts), series))
    return groups


def _group_size(group: SeriesGroup) -> int:
    """Bytes of the group's series in a payload, with the commas between them."""
    return sum(len(orjson.dumps(s)) for s in group.series) + len(group.series) - 1


class Payload(NamedTuple):
    body: bytes
    documents: int
    series: int


def build_payloads(groups: Sequence[SeriesGroup], max_bytes: int) -> tuple[list[Payload], list[SeriesGroup]]:
    """Pack whole groups, in order, into payloads of at most ``max_bytes``; within
    a payload the series are sorted by (metric, tags). Returns the payloads and the
    groups too large for any payload (never sendable: dead letters)."""
    envelope = len(_ENVELOPE[0]) + len(_ENVELOPE[1])
    budget = max_bytes - envelope
    sized = [(group, _group_size(group)) for group in groups]
    too_large = [group for group, size in sized if size + 1 > budget]
    fitting = [(group, size) for group, size in sized if size + 1 <= budget]
    payloads = []
    # overhead 1: the comma before each group (one more than needed, never less).
    for chunk in chunked(fitting, len(fitting) or 1, budget, lambda item: item[1], overhead=1):
        series = sorted((s for group, _ in chunk for s in group.series), key=lambda s: (s["metric"], s["tags"]))
        body = _ENVELOPE[0] + b",".join(orjson.dumps(s) for s in series) + _ENVELOPE[1]
        payloads.append(Payload(body, sum(group.documents for group, _ in chunk), len(series)))
    return payloads, too_large


def window_bounds(window: IntervalWindow) -> tuple[int, int]:
    """(start in epoch seconds, size in seconds) of a fixed window."""
    start = window.start.micros // 1_000_000
    return start, (window.end.micros - window.start.micros) // 1_000_000


# --------------------------------------------------------------------------- delivery


class _Sent(NamedTuple):
    status_code: int | None
    error: str | None
    started_at: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None


class _DataDogWriteFn(beam.DoFn):
    """POSTs one stream's series of one window, in payloads up to the size limit.

    The session (and its connection pool) lives from ``setup`` to ``teardown``.
    There is no bundle buffer to reset in ``start_bundle`` or flush in
    ``finish_bundle``: the GroupByKey upstream hands over one complete (stream,
    window) group per element, so ``process`` sends it whole and emits its results
    in that window before returning.
    """

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, max_payload_bytes: int) -> None:
        self._session_factory = session_factory
        self._timeouts = timeouts
        self._max_payload_bytes = max_payload_bytes

    def setup(self) -> None:
        self._session = self._session_factory()
        self._secrets = SecretResolver()
        self._requests = Metrics.counter(metrics.NAMESPACE, metrics.delivery(DATADOG, "requests"))
        self._delivered = Metrics.counter(metrics.NAMESPACE, metrics.delivery(DATADOG, "documents"))
        self._failed = Metrics.counter(metrics.NAMESPACE, metrics.delivery(DATADOG, "failed_documents"))
        self._bytes = Metrics.counter(metrics.NAMESPACE, metrics.delivery(DATADOG, "bytes"))

    def teardown(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None
        secrets = getattr(self, "_secrets", None)
        if secrets is not None:
            secrets.clear()

    def process(
        self,
        element: tuple[str, Iterable[tuple[Sequence[Any], UsageTotals]]],
        config: StreamConfig,
        window: IntervalWindow = beam.DoFn.WindowParam,
    ) -> Iterator[DeliveryResult | pvalue.TaggedOutput]:
        stream_id, aggregates = element
        start, interval = window_bounds(window)
        groups = series_groups(aggregates, start, interval)
        payloads, too_large = build_payloads(groups, self._max_payload_bytes)
        for group in too_large:
            size = _group_size(group)
            _LOG.warning("stream %s: the series of one endpoint (%d bytes) exceed the %d-byte payload limit",
                         stream_id, size, self._max_payload_bytes)
            yield too_large_dead_letter("usage", {"series": list(group.series)}, size, self._max_payload_bytes,
                                        DATADOG)
        if not payloads:
            return
        stream = self._stream(stream_id, config)
        if stream is None:
            _LOG.warning("stream %s is not in the stream configuration; %d metric payloads not sent",
                         stream_id, len(payloads))
            yield from self._not_sent(stream_id, "", payloads, UNKNOWN_STREAM)
            return
        destination: DataDogDestination = stream.destination  # type: ignore[assignment]
        url = destination.base_url + SERIES_PATH
        try:
            headers = self._headers(destination)
        except SecretError as err:
            _LOG.warning("stream %s: %s; %d metric payloads not sent", stream_id, err, len(payloads))
            yield from self._not_sent(stream_id, url, payloads, SECRET_UNAVAILABLE)
            return
        results = [self._result(stream_id, url, p, self._send(url, headers, p.body)) for p in payloads]
        self._log_failures(stream, results)
        yield from results

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _stream(stream_id: str, config: StreamConfig) -> DataStream | None:
        try:
            return config[stream_id]
        except KeyError:
            return None

    def _headers(self, destination: DataDogDestination) -> dict[str, str]:
        """Raises :class:`SecretError` when a key cannot be read."""
        headers = {"Content-Type": "application/json", "DD-API-KEY": self._secrets.resolve(destination.api_key)}
        if destination.application_key is not None:
            headers["DD-APPLICATION-KEY"] = self._secrets.resolve(destination.application_key)
        return headers

    def _send(self, url: str, headers: Mapping[str, str], body: bytes) -> _Sent:
        """One request; never raises for a destination failure."""
        watch = Stopwatch()
        try:
            response = self._session.post(
                url, data=body, headers=headers, timeout=self._timeouts.as_requests(), allow_redirects=False
            )
        except requests.RequestException as err:
            return _Sent(None, describe_error(err), watch.started_at, watch.elapsed_ms())
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            error = None
        elif 300 <= status < 400:
            error = REDIRECT_NOT_FOLLOWED
        else:
            error = HTTP_ERROR
        return _Sent(status, error, watch.started_at, watch.elapsed_ms())

    def _result(self, stream_id: str, target: str, payload: Payload, sent: _Sent) -> DeliveryResult:
        self._requests.inc()
        size = len(payload.body)
        if sent.ok:
            self._delivered.inc(payload.documents)
            self._bytes.inc(size)
        else:
            self._failed.inc(payload.documents)
        return DeliveryResult(
            stream_id=stream_id,
            api_type=DATADOG,
            documents=payload.documents,
            bytes=size,
            status=DELIVERED if sent.ok else FAILED,
            status_code=sent.status_code,
            error=sent.error,
            failed_documents=0 if sent.ok else payload.documents,
            started_at=sent.started_at,
            duration_ms=sent.duration_ms,
            target=target,
        )

    def _not_sent(self, stream_id: str, target: str, payloads: list[Payload], error: str) -> Iterator[DeliveryResult]:
        """Failed results for payloads that could not be attempted, one per request
        that would have been sent, so the counts add up as if they failed on the wire."""
        watch = Stopwatch()
        for payload in payloads:
            yield self._result(stream_id, target, payload, _Sent(None, error, watch.started_at, 0))

    @staticmethod
    def _log_failures(stream: DataStream, results: list[DeliveryResult]) -> None:
        """One line per window, not per request."""
        failed = [r for r in results if not r.ok]
        if failed:
            first = failed[0]
            _LOG.warning(
                "stream %s: %d of %d datadog requests to %s failed (first: status %s, error %s)",
                stream.id, len(failed), len(results), stream.describe_destination(), first.status_code, first.error,
            )


def _by_endpoint(item: tuple[tuple[str, int], dict[str, Any]]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    (stream_id, _interval), document = item
    return (stream_id, *endpoint_key(document)), document


def _by_stream(item: tuple[tuple[Any, ...], UsageTotals]) -> tuple[str, tuple[tuple[Any, ...], UsageTotals]]:
    key, totals = item
    return key[0], (key[1:], totals)


class WriteToDataDog(beam.PTransform):
    """Routed ``((stream_id, metrics_interval_seconds), usage document)`` elements
    -> per-window endpoint metrics in each stream's DataDog.

    ``streams`` is the :class:`StreamConfig` side input (``AsSingleton``);
    ``session_factory`` makes the worker's HTTP session (a test can pass one that
    fails or records); ``max_payload_bytes`` bounds each request's JSON (DataDog's
    limit is 512,000 bytes).
    """

    def __init__(
        self,
        streams: pvalue.AsSideInput,
        *,
        session_factory: SessionFactory = new_session,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        super().__init__()
        if not MIN_PAYLOAD_BYTES <= max_payload_bytes <= DATADOG_MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"max_payload_bytes must be between {MIN_PAYLOAD_BYTES:,} and {DATADOG_MAX_PAYLOAD_BYTES:,} "
                f"(DataDog's limit), got {max_payload_bytes:,}"
            )
        self._streams = streams
        self._session_factory = session_factory
        self._timeouts = timeouts
        self._max_payload_bytes = max_payload_bytes

    def expand(self, usage: beam.PCollection) -> SinkOutputs:
        delivered = (
            usage
            | "Window" >> beam.WindowInto(PerElementFixedWindows(size_from_key))
            | "KeyByEndpoint" >> beam.Map(_by_endpoint)
            | "Aggregate" >> beam.CombinePerKey(UsageTotalsFn())
            | "KeyByStream" >> beam.Map(_by_stream)
            | "GroupByStream" >> beam.GroupByKey()
            | "Deliver" >> beam.ParDo(
                _DataDogWriteFn(self._session_factory, self._timeouts, self._max_payload_bytes), self._streams
            ).with_outputs(DEAD_LETTERS, main="results")
        )
        return SinkOutputs(results=delivered.results, dead_letters=delivered[DEAD_LETTERS])
