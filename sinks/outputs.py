"""What a delivery DoFn emits for a batch: one :class:`DeliveryResult` per request
sent (and per group of requests parked without one), parked batches, counters
and one log line per batch. The one place these are built, mixed into
:class:`sinks.base.DeliveryFn`; split from it to keep the skeleton readable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from schemas.delivery import (
    DELIVERED,
    FAILED,
    PARKED_STATUS,
    PARTIAL,
    PERMANENT_FAILURE,
    RETRIES_EXHAUSTED,
    DeliveryResult,
)
from schemas.streams import DataStream
from sinks.parking import parked
from sinks.requests import Blocked, Request, Sent, Settled
from sinks.results import Stopwatch

_LOG = logging.getLogger("sinks.base")


class DeliveryOutputs:
    """Outputs of a delivery DoFn; needs ``api_type``, ``parked_count_as_failed``,
    ``settle`` and ``_counters`` of :class:`~sinks.base.DeliveryFn`."""

    api_type: ClassVar[str] = ""
    parked_count_as_failed: ClassVar[bool] = True
    _counters: Any

    def settle(self, request: Request, outcome: Any) -> Settled:
        raise NotImplementedError

    def _sent(self, stream_id: str, request: Request, sent: Sent) -> list[Any]:
        """The result of a request that was sent, and its parked batch when some
        of it was not delivered. "requests" counts attempts; "documents" and
        "bytes" what was delivered."""
        outcome, last = sent.outcome, sent.outcome.last
        settled = self.settle(request, outcome)
        self._counters.requests.inc(outcome.attempts)
        self._counters.documents.inc(settled.delivered)
        self._counters.bytes.inc(settled.delivered_bytes)
        self._counters.redelivered.inc(settled.redelivered)
        if not settled.undelivered:
            return [self._result(stream_id, [request], DELIVERED, last.status_code, None, None, outcome.attempts,
                                 0, settled.redelivered, sent, 0)]
        undelivered = len(settled.undelivered)
        self._counters.failed_documents.inc(undelivered)
        reason = RETRIES_EXHAUSTED if last.retryable else PERMANENT_FAILURE
        return [
            self._result(stream_id, [request], PARTIAL if settled.delivered else FAILED, last.status_code,
                         last.error, last.token, outcome.attempts, undelivered, settled.redelivered, sent,
                         undelivered),
            parked(stream_id, self.api_type, reason, settled.undelivered, error=last.error, token=last.token,
                   status_code=last.status_code, attempts=outcome.attempts),
        ]

    def _not_sent(self, stream_id: str, requests: Sequence[Request], blocked: Blocked) -> list[Any]:
        """One result and one parked batch for requests never attempted."""
        items = [item for request in requests for item in request.items]
        failed = len(items) if self.parked_count_as_failed or blocked.status != PARKED_STATUS else 0
        self._counters.failed_documents.inc(failed)
        return [
            self._result(stream_id, requests, blocked.status, None, blocked.error, blocked.token, 0, len(items), 0,
                         None, failed),
            parked(stream_id, self.api_type, blocked.reason, items, error=blocked.error, token=blocked.token),
        ]

    def _result(self, stream_id: str, requests: Sequence[Request], status: str, status_code: int | None,
                error: str | None, token: str | None, attempts: int, parked_documents: int, redelivered: int,
                sent: Sent | None, failed_documents: int) -> DeliveryResult:
        """The one place a result is built. ``sent`` gives the time the request
        started and took; requests parked without one start now and take no time."""
        return DeliveryResult(
            stream_id=stream_id,
            api_type=self.api_type,
            documents=count_items(requests),
            bytes=sum(request.size for request in requests),
            status=status,
            status_code=status_code,
            error=error,
            failed_documents=failed_documents,
            started_at=sent.started_at if sent is not None else Stopwatch().started_at,
            duration_ms=sent.duration_ms if sent is not None else 0,
            target=requests[0].target,
            attempts=attempts,
            token=token,
            redelivered_documents=redelivered,
            parked_documents=parked_documents,
        )

    def _log_failures(self, stream: DataStream, results: list[DeliveryResult]) -> None:
        """One line per batch, not per request: a dead destination must not flood
        the logs with one line per document."""
        failed = [r for r in results if not r.ok]
        if failed:
            first = failed[0]
            _LOG.warning(
                "stream %s: %d of %d %s requests to %s not delivered, %d documents parked "
                "(first: %s, status %s, error %s, token %s, %d attempts)",
                stream.id, len(failed), len(results), self.api_type, stream.describe_destination(),
                sum(r.parked_documents for r in failed), first.status, first.status_code, first.error, first.token,
                first.attempts,
            )



def count_items(requests: Sequence[Request]) -> int:
    return sum(len(r.items) for r in requests)
