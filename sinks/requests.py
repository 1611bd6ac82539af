"""What the delivery skeleton (``sinks/base.py``) and the sinks pass between
them: a batch's requests, how a sent one settled, why requests were not sent."""

from __future__ import annotations

from typing import Any, NamedTuple

from sinks.retry import Outcome

Item = tuple[str, dict[str, Any]]  # (kind, document), as routed: what a parked batch holds


class Request(NamedTuple):
    """One request a batch becomes: the items it carries (parked as received when
    not delivered), its size and target for the result, and what the sink sends."""

    items: tuple[Item, ...]
    size: int
    target: str  # the destination without credentials: URL, s3 key, kinesis stream
    body: Any = None


class Settled(NamedTuple):
    """What a sent request came to, after the policy's attempts."""

    delivered: int
    delivered_bytes: int
    #: delivered after an attempt that may have reached the destination too
    redelivered: int
    undelivered: tuple[Item, ...]


class Blocked(NamedTuple):
    """Why requests are not sent: their result's status, park reason, error, token."""

    status: str
    reason: str
    error: str | None
    token: str | None


class Sent(NamedTuple):
    """How one request went after the policy's retries, before it becomes a result."""

    outcome: Outcome
    started_at: str
    duration_ms: int
