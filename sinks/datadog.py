"""DataDog delivery: usage documents become metrics in the customer's DataDog.

The series and payloads are built in ``sinks/datadog_series.py`` (the guide's
metrics, per endpoint and window); this module windows the usage documents per
stream and delivers the payloads.

Shape of the branch::

    ((stream_id, interval), usage document)
      -> Window (GroupPerElementWindow, size from the key: one element per stream,
         window and pane, holding that pane's usage documents; sinks/windows.py)
      -> KeyByStream
      -> Deliver (aggregate per endpoint key; series payloads POSTed to
         {base_url}/api/v2/series)

Failures follow the one policy of every sink (``sinks/retry.py``). Each payload is
sent through :meth:`RetryPolicy.run`: 408, 425, 429 (honouring ``Retry-After``),
5xx, timeouts and connection errors are retried with backoff within the policy's
attempts and deadline; any other 4xx (403: bad API key), a 3xx (redirects are not
followed) and an unreadable key fail at once. A payload that is not delivered is
parked (``sinks/parking.py``) with its usage documents, and its result says why
(status code, error code, status token, attempts). A permanent failure, or
``deactivate_after`` consecutive failed payloads, opens the stream's circuit
(``schemas/circuit.py``, shared by every worker): its remaining payloads, in this
window and later ones, are parked without a request until a probe gets through
(``sinks/recovery.py``), which is what keeps one dead intake from holding the
worker the other streams share. A payload delivered by a retry after a
5xx or a timeout may have reached DataDog twice; its result counts those documents
as ``redelivered_documents``. (The payload is identical and DataDog keeps one point
per series and timestamp, so the values do not change; the count is reported anyway,
as for every sink.) Nothing raises out of ``process`` for a
destination failure: a raised exception would replay the bundle, every other
stream's metrics with it, indefinitely. DataDog drops points more than an hour old
or ten minutes in the future, so a historic replay or a late re-drive through this
sink is accepted (202) but not stored.

Outbound safety (``sinks/outbound.py``): the base URL must be ``https`` on a public
host unless ``allow_insecure`` (development, tests), and connections go only to the
addresses the guard checked; a refused URL gets no request, the stream is
deactivated with ``destination_refused`` and its payloads parked.

Credentials: ``DD-API-KEY`` (and ``DD-APPLICATION-KEY`` when the stream names one)
are resolved on the worker from the stream's references and only ever live in the
request headers; results, parked batches, dead letters and log lines carry the URL
(credential free by config validation), status codes and error tokens.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import IntervalWindow

from schemas.streams import DataDogDestination, DataStream, SecretPolicy
from sinks.datadog_series import aggregate_usage, build_payloads, group_size, series_groups, window_bounds
from sinks.http import HttpDeliveryFn, SessionFactory, Timeouts, classified_request, new_session
from sinks.requests import Request
from sinks.results import SinkOutputs, apply_sink, too_large_dead_letter
from sinks.retry import Attempt, RetryPolicy
from sinks.windows import GroupPerElementWindow, WindowedGroup, size_from_key
from sinks.wire import check_header_values

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


class _DataDogWriteFn(HttpDeliveryFn):
    """Aggregates one stream's usage documents of one window and POSTs the series,
    in payloads up to the size limit, each under the retry policy. The GroupByKey
    upstream hands over one complete (stream, window) group per element; each
    payload is a request of its own, parked on its own when it is not sent."""

    api_type = DATADOG
    parked_count_as_failed = False

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, max_payload_bytes: int,
                 policy: RetryPolicy, allow_insecure: bool = False, secrets: SecretPolicy | None = None) -> None:
        super().__init__(session_factory, timeouts, policy, allow_insecure, secrets)
        self._max_payload_bytes = max_payload_bytes

    def requests(self, element: tuple[str, Iterable[dict[str, Any]]], stream: DataStream | None,
                 window: IntervalWindow, pane: Any) -> Iterator[Request | pvalue.TaggedOutput]:
        stream_id, documents = element
        start, interval = window_bounds(window)
        # A late pane (streaming) carries only the documents that came after the
        # window fired; its points go one second per pane index after the window
        # start, so they add to the window's count instead of replacing its point.
        start += min(pane.index, interval - 1)
        payloads, too_large = build_payloads(series_groups(aggregate_usage(documents), start, interval),
                                             self._max_payload_bytes)
        for group in too_large:
            size = group_size(group)
            _LOG.warning("stream %s: the series of one endpoint (%d bytes) exceed the %d-byte payload limit; "
                         "its %d usage documents are dead letters", stream_id, size, self._max_payload_bytes,
                         len(group.usage_documents))
            for document in group.usage_documents:
                yield too_large_dead_letter(USAGE, document, size, self._max_payload_bytes, DATADOG, stream_id)
        url = self.guarded_url(stream) if stream is not None else ""
        for payload in payloads:
            yield Request(tuple((USAGE, d) for d in payload.usage_documents), len(payload.body), url, payload.body)

    def guarded_url(self, stream: DataStream) -> str:
        return stream.destination.base_url + SERIES_PATH  # type: ignore[union-attr]

    def connect(self, stream: DataStream) -> dict[str, str]:
        """The request headers with the stream's keys; raises :class:`SecretError`
        when a key cannot be read and :class:`~sinks.wire.InvalidConfigurationError`
        when one cannot be sent as a header value."""
        destination: DataDogDestination = stream.destination  # type: ignore[assignment]
        headers = {"Content-Type": "application/json", "DD-API-KEY": self._secrets.resolve(destination.api_key)}
        sources = {"dd-api-key": f"datadog.api_key ({destination.api_key.describe()})"}
        if destination.application_key is not None:
            headers["DD-APPLICATION-KEY"] = self._secrets.resolve(destination.application_key)
            sources["dd-application-key"] = f"datadog.application_key ({destination.application_key.describe()})"
        check_header_values(headers, sources)
        return headers

    def attempt(self, request: Request, connection: dict[str, str]) -> Attempt:
        return classified_request(self._session, "POST", request.target, request.body, connection, self._timeouts)


def _by_stream(group: WindowedGroup) -> WindowedGroup:
    """A window's pane keyed by the stream alone (the interval is the stream's)."""
    stream_id, _interval = group.key
    return dataclasses.replace(group, key=stream_id)


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
        secrets: SecretPolicy | None = None,
    ) -> None:
        super().__init__()
        self._lateness = allowed_lateness_seconds
        if not MIN_PAYLOAD_BYTES <= max_payload_bytes <= DATADOG_MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"max_payload_bytes must be between {MIN_PAYLOAD_BYTES:,} and {DATADOG_MAX_PAYLOAD_BYTES:,} "
                f"(DataDog's limit), got {max_payload_bytes:,}"
            )
        self._streams = streams
        self._fn = _DataDogWriteFn(session_factory, timeouts, max_payload_bytes, policy, allow_insecure, secrets)

    @property
    def fn(self) -> _DataDogWriteFn:
        """The delivery DoFn (the recovery step sends parked batches through it)."""
        return self._fn

    def expand(self, usage: beam.PCollection) -> SinkOutputs:
        windows = (
            usage
            | "Window" >> GroupPerElementWindow(size_from_key, self._lateness)
            | "KeyByStream" >> beam.Map(_by_stream)
        )
        return apply_sink(windows, "Deliver", self._fn, self._streams)
