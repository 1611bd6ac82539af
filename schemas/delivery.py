"""Delivery records and the tokens both layers speak: the sinks write them, stream
status and routing (``transforms/``) read them.

One :class:`DeliveryResult` per request sent (a REST call, a ``put_records``, an
S3 object, a DataDog series payload), and one per batch parked without a request,
is the input of stream status and parking: it says which stream, how many
documents and bytes, how it went and how long it took. Results never carry
documents or credentials, only counts, codes and errors (error codes and status
tokens below, or an exception class or AWS error code).

The names here are a contract with the status file and the run summary: the
status tokens are the guide's "remote status" reasons, and a token in
:data:`PERMANENT_TOKENS` deactivates a stream at once, in a sink's circuit
(``sinks/retry.py``) and in the durable status (``transforms/status.py``) alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: What became of a request (``DeliveryResult.status``).
DELIVERED, FAILED, PARTIAL, PARKED_STATUS = "delivered", "failed", "partial", "parked"

#: Stable error tokens of a stream's status (the guide's "remote status").
UNREACHABLE = "unreachable"
AUTH_FAILED = "auth_failed"
NOT_FOUND = "not_found"
PAYLOAD_REJECTED = "payload_rejected"
REDIRECTED = "redirected"
THROTTLED = "throttled"
REMOTE_ERROR = "remote_error"
CREDENTIALS_UNAVAILABLE = "credentials_unavailable"
DESTINATION_REFUSED = "destination_refused"
#: The stream's settings or secrets make a request that cannot be sent at all
#: (a header value outside Latin-1, a bucket name botocore refuses): the
#: customer's configuration must change, not the destination.
INVALID_CONFIGURATION = "invalid_configuration"

#: Tokens of failures that retrying cannot fix: they deactivate a stream at once.
PERMANENT_TOKENS = frozenset({
    AUTH_FAILED, NOT_FOUND, PAYLOAD_REJECTED, REDIRECTED, CREDENTIALS_UNAVAILABLE, DESTINATION_REFUSED,
    INVALID_CONFIGURATION,
})

#: Error codes of batches parked without a request (besides DESTINATION_REFUSED):
#: the stream's credentials cannot be read; the stream is no longer configured;
#: a batch's time budget ran out before these documents started.
SECRET_UNAVAILABLE = "secret_unavailable"
UNKNOWN_STREAM = "unknown_stream"
DEADLINE_EXCEEDED = "deadline_exceeded"
#: The error of a batch whose request was still in flight when its budget ran
#: out (``sinks/dispatch.py``): parked, and maybe delivered as well, so its
#: documents count as redelivered when the backlog is delivered.
IN_FLIGHT = "in_flight_at_budget"
#: Parked batches the recovery step delivers on its own once the stream's
#: destination answers again; paused streams and history holds wait for the
#: customer or ``pipelines.historic``.
RECOVERABLE_REASONS = frozenset({"retries_exhausted", "permanent_failure", "stream_deactivated"})
#: Error code of a response that does not prove delivery: a 2xx from Kinesis
#: without one result per record sent, each with a sequence number, or from S3
#: without an ETag. The documents may have been stored, so they are retried and
#: counted as possibly delivered twice when a retry succeeds.
UNPROVEN_RESPONSE = "unproven_response"

#: Why a batch was parked (``ParkedBatch.reason``; the status tokens say why its
#: delivery failed).
STREAM_PAUSED = "stream_paused"
STREAM_DEACTIVATED = "stream_deactivated"
#: A stream with the historic-data flag, until its history has been delivered.
AWAITING_HISTORY = "awaiting_history"
RETRIES_EXHAUSTED = "retries_exhausted"
PERMANENT_FAILURE = "permanent_failure"


@dataclass(frozen=True)
class DeliveryResult:
    stream_id: str
    api_type: str
    documents: int
    bytes: int
    status: str  # delivered | failed | partial | parked
    status_code: int | None  # HTTP status, when there was a response
    error: str | None  # error token or AWS error code; never a secret
    failed_documents: int
    started_at: str  # ISO 8601 UTC
    duration_ms: int
    target: str  # destination without credentials: URL, s3 key, kinesis stream
    attempts: int = 1
    #: the status token when it failed: unreachable, auth_failed, not_found, ...
    token: str | None = None
    #: documents delivered by a retry after an attempt that may also have reached
    #: the destination: possibly delivered twice (receivers drop duplicates by id)
    redelivered_documents: int = 0
    #: documents of this request that were parked instead of delivered
    parked_documents: int = 0

    @property
    def ok(self) -> bool:
        return self.status == DELIVERED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def remote_status(self) -> str:
        """What the destination said, as the portal's "remote status" shows it:
        AWS's error code for the AWS sinks (``ResourceNotFoundException`` says more
        than its HTTP 400), else the HTTP status, else the error token."""
        if self.api_type in ("aws_kinesis", "aws_s3") and self.error and not self.error.startswith("http_"):
            return self.error
        if self.status_code is not None:
            return str(self.status_code)
        return self.error or self.status
