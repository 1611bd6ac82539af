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
      -> KeyByStream -> GroupByStream (GroupByKey: one element per stream and window,
         holding that window's usage documents)
      -> Deliver (aggregate per endpoint key; series payloads POSTed to
         {base_url}/api/v2/series)

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

Failures follow the one policy of every sink (``sinks/retry.py``). Each payload is
sent through :meth:`RetryPolicy.run`: 408, 425, 429 (honouring ``Retry-After``),
5xx, timeouts and connection errors are retried with backoff within the policy's
attempts and deadline; any other 4xx (403: bad API key), a 3xx (redirects are not
followed) and an unreadable key fail at once. A payload that is not delivered is
parked (``sinks/parking.py``) with its usage documents, and its result says why
(status code, error code, status token, attempts). A permanent failure, or
``deactivate_after`` consecutive failed payloads, deactivates the stream on this
worker (:class:`StreamCircuit`): its remaining payloads, in this window and later
ones, are parked without a request, which is what keeps one dead intake from
holding the worker the other streams share. A payload delivered by a retry after a
5xx or a timeout may have reached DataDog twice; its result counts those documents
as ``redelivered_documents``. (The payload is identical and DataDog keeps one point
per series and timestamp, so the values do not change; the count is reported anyway,
as for every sink.) Nothing raises out of ``process`` for a
destination failure: a raised exception would replay the bundle, every other
stream's metrics with it, indefinitely. DataDog drops points more than an hour old
or ten minutes in the future, so a historic replay or a late re-drive through this
sink is accepted (202) but not stored.

Outbound safety (``sinks/outbound.py``): the base URL must be ``https`` on a public
host unless ``allow_insecure`` (development, tests); a refused URL gets no request,
the stream is deactivated with ``destination_refused`` and its payloads parked.

Credentials: ``DD-API-KEY`` (and ``DD-APPLICATION-KEY`` when the stream names one)
are resolved on the worker from the stream's references and only ever live in the
request headers; results, parked batches, dead letters and log lines carry the URL
(credential free by config validation), status codes and error tokens.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.transforms.window import IntervalWindow

from schemas.delivery import (
    CREDENTIALS_UNAVAILABLE,
    DELIVERED,
    DESTINATION_REFUSED,
    FAILED,
    PARKED_STATUS,
    PERMANENT_FAILURE,
    RETRIES_EXHAUSTED,
    STREAM_DEACTIVATED,
    DeliveryResult,
)
from schemas.streams import DataDogDestination, DataStream, StreamConfig
from sinks.http import SessionFactory, Timeouts, classified_request, new_session
from sinks.outbound import OutboundGuard
from sinks.parking import PARKED, parked
from sinks.results import DEAD_LETTERS, DeliveryCounters, SinkOutputs, Stopwatch, chunked, too_large_dead_letter
from sinks.retry import Attempt, Outcome, RetryPolicy, StreamCircuit
from sinks.secrets import SecretError, SecretResolver
from sinks.windows import PerElementFixedWindows, size_from_key, window_with_late_panes

_LOG = logging.getLogger(__name__)

DATADOG = "datadog"
USAGE = "usage"
SERIES_PATH = "/api/v2/series"

#: DataDog's documented limit is 500 KB (512,000 bytes) of uncompressed JSON a
#: request; the default keeps a margin below it.
DATADOG_MAX_PAYLOAD_BYTES = 512_000
DEFAULT_MAX_PAYLOAD_BYTES = 500_000
DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_POLICY = RetryPolicy()
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

#: Error codes of failures that are not a response or an exception (the same as
#: the REST sinks'); the status tokens are those of ``sinks/retry.py``.
SECRET_UNAVAILABLE = "secret_unavailable"
UNKNOWN_STREAM = "unknown_stream"

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


def _group_size(group: SeriesGroup) -> int:
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
    sized = [(group, _group_size(group)) for group in groups]
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


# --------------------------------------------------------------------------- delivery


#: Failures decided before any request. The stream's keys cannot be read:
_SECRET_MISSING = Attempt(False, False, None, SECRET_UNAVAILABLE, CREDENTIALS_UNAVAILABLE)
#: The outbound rules refuse the stream's base URL.
_REFUSED = Attempt(False, False, None, DESTINATION_REFUSED, DESTINATION_REFUSED)
#: The stream is not in the configuration (no status token: there is no stream).
_UNKNOWN = Attempt(False, False, None, UNKNOWN_STREAM, None)


class _DataDogWriteFn(beam.DoFn):
    """Aggregates one stream's usage documents of one window and POSTs the series,
    in payloads up to the size limit, each under the retry policy.

    The session (and its connection pool), the secret resolver, the outbound guard
    and the stream circuit live from ``setup`` to ``teardown``: the circuit is this
    worker's memory of a failing intake across windows. There is no bundle buffer
    to reset in ``start_bundle`` or flush in ``finish_bundle``: the GroupByKey
    upstream hands over one complete (stream, window) group per element, so
    ``process`` sends (or parks) it whole and emits its results in that window
    before returning.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        timeouts: Timeouts,
        max_payload_bytes: int,
        policy: RetryPolicy,
        allow_insecure: bool = False,
    ) -> None:
        self._session_factory = session_factory
        self._timeouts = timeouts
        self._max_payload_bytes = max_payload_bytes
        self._policy = policy
        self._allow_insecure = allow_insecure

    def setup(self) -> None:
        self._session = self._session_factory()
        self._secrets = SecretResolver()
        self._guard = OutboundGuard(self._allow_insecure)
        self._circuit = StreamCircuit(self._policy.deactivate_after)
        self._counters = DeliveryCounters(DATADOG)

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
        element: tuple[str, Iterable[dict[str, Any]]],
        config: StreamConfig,
        window: IntervalWindow = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[DeliveryResult | pvalue.TaggedOutput]:
        stream_id, documents = element
        start, interval = window_bounds(window)
        # A late pane (streaming) carries only the documents that came after the
        # window fired; its points go one second per pane index after the window
        # start, so they add to the window's count instead of replacing its point.
        start += min(pane.index, interval - 1)
        groups = series_groups(aggregate_usage(documents), start, interval)
        payloads, too_large = build_payloads(groups, self._max_payload_bytes)
        for group in too_large:
            size = _group_size(group)
            _LOG.warning("stream %s: the series of one endpoint (%d bytes) exceed the %d-byte payload limit; "
                         "its %d usage documents are dead letters", stream_id, size, self._max_payload_bytes,
                         len(group.usage_documents))
            for document in group.usage_documents:
                yield too_large_dead_letter(USAGE, document, size, self._max_payload_bytes, DATADOG, stream_id)
        if not payloads:
            return
        stream = self._stream(stream_id, config)
        if stream is None:
            _LOG.warning("stream %s is not in the stream configuration; %d metric payloads parked",
                         stream_id, len(payloads))
            for payload in payloads:
                yield from self._failed_payload(stream_id, "", payload, Outcome(_UNKNOWN, 0), Stopwatch())
            return
        outputs = list(self._deliver(stream, payloads))
        self._log_failures(stream, [o for o in outputs if isinstance(o, DeliveryResult)])
        yield from outputs

    # ----------------------------------------------------------------- delivery steps

    def _deliver(self, stream: DataStream, payloads: list[Payload]) -> Iterator[DeliveryResult | pvalue.TaggedOutput]:
        """Each payload in turn: parked without a request once the stream is
        deactivated; otherwise checked against the outbound rules and sent under
        the policy."""
        destination: DataDogDestination = stream.destination  # type: ignore[assignment]
        url = destination.base_url + SERIES_PATH
        headers: dict[str, str] | None = None
        for payload in payloads:
            watch = Stopwatch()
            token = self._circuit.deactivated(stream.id)
            if token is not None:
                yield from self._parked_payload(stream.id, url, payload, token)
                continue
            refusal = self._guard.refusal(url)
            if refusal is not None:
                _LOG.warning("stream %s: destination refused, nothing sent: %s", stream.id, refusal)
                self._circuit.deactivate(stream.id, DESTINATION_REFUSED)
                yield from self._failed_payload(stream.id, url, payload, Outcome(_REFUSED, 0), watch)
                continue
            if headers is None:
                try:
                    headers = self._headers(destination)
                except SecretError as err:
                    _LOG.warning("stream %s: %s; nothing sent", stream.id, err)
                    outcome = Outcome(_SECRET_MISSING, 0)
                    self._circuit.record(stream.id, outcome)
                    yield from self._failed_payload(stream.id, url, payload, outcome, watch)
                    continue
            outcome = self._policy.run(functools.partial(self._attempt, url, headers, payload.body))
            self._circuit.record(stream.id, outcome)
            if outcome.ok:
                yield self._delivered_payload(stream.id, url, payload, outcome, watch)
            else:
                yield from self._failed_payload(stream.id, url, payload, outcome, watch)

    def _attempt(self, url: str, headers: Mapping[str, str], body: bytes) -> Attempt:
        """One request, classified; never raises for a destination failure
        (:func:`classify_exception` re-raises anything else: a bug)."""
        self._counters.requests.inc()
        return classified_request(self._session, "POST", url, body, headers, self._timeouts)

    # ----------------------------------------------------------------- outputs

    def _delivered_payload(self, stream_id: str, target: str, payload: Payload, outcome: Outcome,
                           watch: Stopwatch) -> DeliveryResult:
        size = len(payload.body)
        self._counters.documents.inc(payload.documents)
        self._counters.bytes.inc(size)
        redelivered = payload.documents if outcome.maybe_delivered_twice else 0
        if redelivered:
            self._counters.redelivered.inc(redelivered)
        return self._result(stream_id, target, payload, watch, DELIVERED, outcome.last, outcome.attempts,
                            redelivered_documents=redelivered)

    def _failed_payload(self, stream_id: str, target: str, payload: Payload, outcome: Outcome,
                        watch: Stopwatch) -> Iterator[DeliveryResult | pvalue.TaggedOutput]:
        """A failed result and the payload's documents parked: retries exhausted
        when the last failure was transient, a permanent failure otherwise."""
        last = outcome.last
        self._counters.failed_documents.inc(payload.documents)
        yield self._result(stream_id, target, payload, watch, FAILED, last, outcome.attempts,
                           failed_documents=payload.documents, parked_documents=payload.documents)
        yield parked(stream_id, DATADOG, RETRIES_EXHAUSTED if last.retryable else PERMANENT_FAILURE,
                     _usage_items(payload), error=last.error, token=last.token, status_code=last.status_code,
                     attempts=outcome.attempts)

    def _parked_payload(self, stream_id: str, target: str, payload: Payload,
                        token: str) -> Iterator[DeliveryResult | pvalue.TaggedOutput]:
        """The stream is deactivated on this worker: no request, the documents parked."""
        yield self._result(stream_id, target, payload, Stopwatch(), PARKED_STATUS, Attempt(False, token=token), 0,
                           parked_documents=payload.documents)
        yield parked(stream_id, DATADOG, STREAM_DEACTIVATED, _usage_items(payload), token=token)

    @staticmethod
    def _result(stream_id: str, target: str, payload: Payload, watch: Stopwatch, status: str, last: Attempt,
                attempts: int, *, failed_documents: int = 0, parked_documents: int = 0,
                redelivered_documents: int = 0) -> DeliveryResult:
        return DeliveryResult(
            stream_id=stream_id,
            api_type=DATADOG,
            documents=payload.documents,
            bytes=len(payload.body),
            status=status,
            status_code=last.status_code,
            error=last.error,
            failed_documents=failed_documents,
            started_at=watch.started_at,
            duration_ms=watch.elapsed_ms(),
            target=target,
            attempts=attempts,
            redelivered_documents=redelivered_documents,
            parked_documents=parked_documents,
            token=last.token,
        )

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

    @staticmethod
    def _log_failures(stream: DataStream, results: list[DeliveryResult]) -> None:
        """One line per window, not per request."""
        failed = [r for r in results if not r.ok]
        if failed:
            first = failed[0]
            _LOG.warning(
                "stream %s: %d of %d datadog payloads to %s not delivered, %d documents parked "
                "(first: %s, status %s, error %s, token %s, %d attempts)",
                stream.id, len(failed), len(results), stream.describe_destination(),
                sum(r.parked_documents for r in failed), first.status, first.status_code, first.error, first.token,
                first.attempts,
            )


def _usage_items(payload: Payload) -> list[tuple[str, dict[str, Any]]]:
    """The payload's documents as parked: (kind, document), as the sink received them."""
    return [(USAGE, document) for document in payload.usage_documents]


def _by_stream(item: tuple[tuple[str, int], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    (stream_id, _interval), document = item
    return stream_id, document


class WriteToDataDog(beam.PTransform):
    """Routed ``((stream_id, metrics_interval_seconds), usage document)`` elements
    -> per-window endpoint metrics in each stream's DataDog.

    ``streams`` is the :class:`StreamConfig` side input (``AsSingleton``);
    ``session_factory`` makes the worker's HTTP session (a test can pass one that
    fails or records); ``max_payload_bytes`` bounds each request's JSON (DataDog's
    limit is 512,000 bytes); ``policy`` bounds retries and says when a stream is
    deactivated; ``allow_insecure`` lifts the outbound rules (http, loopback) for
    development and tests only.
    """

    def __init__(
        self,
        streams: pvalue.AsSideInput,
        *,
        session_factory: SessionFactory = new_session,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        policy: RetryPolicy = DEFAULT_POLICY,
        allow_insecure: bool = False,
        allowed_lateness_seconds: int = 0,
    ) -> None:
        super().__init__()
        self._lateness = allowed_lateness_seconds
        if not MIN_PAYLOAD_BYTES <= max_payload_bytes <= DATADOG_MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"max_payload_bytes must be between {MIN_PAYLOAD_BYTES:,} and {DATADOG_MAX_PAYLOAD_BYTES:,} "
                f"(DataDog's limit), got {max_payload_bytes:,}"
            )
        self._streams = streams
        self._session_factory = session_factory
        self._timeouts = timeouts
        self._max_payload_bytes = max_payload_bytes
        self._policy = policy
        self._allow_insecure = allow_insecure

    def expand(self, usage: beam.PCollection) -> SinkOutputs:
        write = _DataDogWriteFn(self._session_factory, self._timeouts, self._max_payload_bytes, self._policy,
                                self._allow_insecure)
        delivered = (
            usage
            | "Window" >> window_with_late_panes(PerElementFixedWindows(size_from_key), self._lateness)
            | "KeyByStream" >> beam.Map(_by_stream)
            | "GroupByStream" >> beam.GroupByKey()
            | "Deliver" >> beam.ParDo(write, self._streams).with_outputs(DEAD_LETTERS, PARKED, main="results")
        )
        return SinkOutputs(results=delivered.results, dead_letters=delivered[DEAD_LETTERS], parked=delivered[PARKED])
