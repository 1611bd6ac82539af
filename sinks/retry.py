"""One failure policy for every sink: what is retried, how, for how long, and when a
stream stops being tried at all.

Retryable (transient): HTTP 408, 425, 429 and 5xx; timeouts, connection errors and
resets; AWS throttling and 5xx error codes; Kinesis per-record failures (the sink
resends only the failed records). Permanent: any other 4xx, a 3xx (redirects are
never followed), invalid credentials, a missing bucket or stream, a payload the
destination rejects, an unreadable secret, a destination refused by the outbound
safety rules, a request the stream's settings or secrets cannot make at all
(``invalid_configuration``: a header value outside Latin-1, a bucket name botocore
refuses). A permanent failure is not retried.

Every exception raised while a request is built, sent or its response read is
that stream's failed attempt, classified by :func:`classify_exception`, never an
exception out of the sink: what no rule names is a retryable ``remote_error``
that may have been received (a response botocore cannot parse, an
``AttributeError`` from a client library reading a body of the wrong shape). Only
a bug outside the request (in the sink's own code) ends a run. A response counts
as a success only when it proves delivery (:func:`unproven`).

Retries wait with exponential backoff and full jitter (tenacity's
``wait_random_exponential``), or exactly ``Retry-After`` when the destination sends
one, and are bounded per batch both in attempts and in time: a ``Retry-After`` that
would end past the deadline ends the retries at once. Nothing retries forever
inside a bundle (in streaming a raised exception would replay the bundle without
end); what is not delivered in time is parked (``sinks/parking.py``).

The stream's circuit (``schemas/circuit.py``) keeps a dead destination from being
tried batch after batch: after ``deactivate_after`` consecutive failed batches, or
at once on a permanent failure, it opens and the stream's later batches are parked
without a request until a probe gets through.
"""

from __future__ import annotations

import email.utils
import http.client
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import requests
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError
from tenacity import RetryCallState, Retrying, retry_if_result, wait_random_exponential

from schemas.circuit import CircuitSettings
from schemas.delivery import (
    AUTH_FAILED,
    DESTINATION_REFUSED,
    INVALID_CONFIGURATION,
    NOT_FOUND,
    PAYLOAD_REJECTED,
    REDIRECTED,
    REMOTE_ERROR,
    THROTTLED,
    UNPROVEN_RESPONSE,
    UNREACHABLE,
)
from sinks.outbound import DestinationRefusedError
from sinks.wire import InvalidConfigurationError

RETRYABLE_STATUS = frozenset({408, 425, 429})
AWS_RETRYABLE_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "ProvisionedThroughputExceededException",
    "SlowDown", "RequestLimitExceeded", "TooManyRequestsException", "LimitExceededException",
    "InternalFailure", "InternalError", "InternalServerError", "ServiceUnavailable", "ServiceUnavailableException",
    "RequestTimeout", "RequestTimeoutException", "KMSThrottlingException", "503", "500",
})
AWS_AUTH_CODES = frozenset({
    "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "AccessDenied",
    "AccessDeniedException", "InvalidAccessKeyId", "ExpiredToken", "ExpiredTokenException",
    "InvalidSignatureException", "MissingAuthenticationToken",
})
AWS_NOT_FOUND_CODES = frozenset({"NoSuchBucket", "ResourceNotFoundException", "NotFound", "404"})
#: A request the client library refuses to build from the stream's settings: the
#: same on every attempt (``invalid_configuration``).
_UNSENDABLE = (
    requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema, ParamValidationError, UnicodeEncodeError,
)
#: A response that came but cannot be read: the request may have been processed.
_UNREADABLE = (ResponseParserError, requests.exceptions.ContentDecodingError, http.client.HTTPException,
               UnicodeDecodeError)

@dataclass(frozen=True)
class Attempt:
    """How one request went, classified.

    ``maybe_received``: the destination may have processed the request although we
    saw no success (a read timeout, a reset mid-response, a 5xx): if a retry then
    succeeds, its documents may have been delivered twice, and are reported so.
    """

    ok: bool
    retryable: bool = False
    status_code: int | None = None
    error: str | None = None  # an error code for results: "http_503", "ReadTimeout", an AWS code
    token: str | None = None  # the status token when it failed (UNREACHABLE, AUTH_FAILED, ...)
    retry_after: float | None = None
    maybe_received: bool = False


SUCCESS = Attempt(ok=True)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def classify_http(status_code: int, headers: Mapping[str, str] | None = None) -> Attempt:
    if 200 <= status_code < 300:
        return SUCCESS
    error = f"http_{status_code}"
    if 300 <= status_code < 400:
        return Attempt(False, False, status_code, error, REDIRECTED)
    if status_code in RETRYABLE_STATUS or status_code >= 500:
        token = THROTTLED if status_code == 429 else REMOTE_ERROR
        retry_after = retry_after_seconds(headers or {}) if status_code in (429, 503) else None
        return Attempt(False, True, status_code, error, token, retry_after, maybe_received=status_code >= 500)
    if status_code in (401, 403):
        return Attempt(False, False, status_code, error, AUTH_FAILED)
    if status_code in (404, 410):
        return Attempt(False, False, status_code, error, NOT_FOUND)
    return Attempt(False, False, status_code, error, PAYLOAD_REJECTED)


def classify_aws_code(code: str, status_code: int | None = None) -> Attempt:
    if code in AWS_RETRYABLE_CODES or (status_code is not None and status_code >= 500):
        token = THROTTLED if "Throttl" in code or "Exceeded" in code or code == "SlowDown" else REMOTE_ERROR
        return Attempt(False, True, status_code, code, token, maybe_received=False)
    if code in AWS_AUTH_CODES or status_code in (401, 403):
        return Attempt(False, False, status_code, code, AUTH_FAILED)
    if code in AWS_NOT_FOUND_CODES or status_code == 404:
        return Attempt(False, False, status_code, code, NOT_FOUND)
    return Attempt(False, False, status_code, code, PAYLOAD_REJECTED)


def classify_exception(err: BaseException) -> Attempt:
    """Any exception raised while a request was built, sent or its response read
    (requests, urllib3, http.client, botocore and their parsers), as that
    stream's failed attempt. Never raises: what no rule names is a retryable
    ``remote_error`` that may have been received, because it is the request's
    failure whatever it is (the module docstring) and only the destination's
    next answer can tell whether it lasts."""
    name = type(err).__name__
    if isinstance(err, DestinationRefusedError):  # the guard refused the address at connect time
        return Attempt(False, False, None, DESTINATION_REFUSED, DESTINATION_REFUSED)
    if isinstance(err, InvalidConfigurationError):
        return Attempt(False, False, None, err.error, INVALID_CONFIGURATION)
    if isinstance(err, _UNSENDABLE):
        return Attempt(False, False, None, name, INVALID_CONFIGURATION)
    if isinstance(err, ClientError):
        meta = err.response.get("ResponseMetadata", {})
        code = str(err.response.get("Error", {}).get("Code") or name)
        return classify_aws_code(code, meta.get("HTTPStatusCode"))
    if isinstance(err, requests.exceptions.SSLError):
        return Attempt(False, False, None, name, DESTINATION_REFUSED)
    if isinstance(err, requests.exceptions.ConnectTimeout | ConnectTimeoutError):
        return Attempt(False, True, None, name, UNREACHABLE)
    if isinstance(err, requests.exceptions.ConnectionError | EndpointConnectionError):
        # Refused, reset, DNS failure. A reset may come after the request was read.
        return Attempt(False, True, None, name, UNREACHABLE, maybe_received=True)
    if isinstance(err, requests.exceptions.Timeout | ReadTimeoutError):
        return Attempt(False, True, None, name, UNREACHABLE, maybe_received=True)
    if isinstance(err, requests.exceptions.ChunkedEncodingError | BotoCoreError):
        return Attempt(False, True, None, name, UNREACHABLE, maybe_received=True)
    if isinstance(err, _UNREADABLE):
        return Attempt(False, True, None, name, REMOTE_ERROR, maybe_received=True)
    if isinstance(err, requests.RequestException):
        return Attempt(False, False, None, name, PAYLOAD_REJECTED)
    if isinstance(err, OSError):  # a socket error no library wrapped
        return Attempt(False, True, None, name, UNREACHABLE, maybe_received=True)
    return Attempt(False, True, None, name, REMOTE_ERROR, maybe_received=True)


def classify_open_failure(err: BaseException) -> Attempt:
    """An exception raised while a stream's destination was opened (its secrets
    resolved, its client made), before any request. Permanent on this worker:
    opening does no I/O with the destination, so trying again gives the same
    answer; ``invalid_configuration`` unless the exception says more."""
    attempt = classify_exception(err)
    if attempt.retryable:
        return Attempt(False, False, None, attempt.error, INVALID_CONFIGURATION)
    return attempt


def unproven(status_code: int | None) -> Attempt:
    """A 2xx whose body does not prove delivery (a Kinesis answer without one
    result with a sequence number per record, an S3 answer without an ETag):
    not a success. Retryable, and what was sent may have been stored."""
    return Attempt(False, True, status_code, UNPROVEN_RESPONSE, REMOTE_ERROR, maybe_received=True)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds per batch: ``max_attempts`` requests and ``deadline_seconds`` of time."""

    max_attempts: int = 5
    deadline_seconds: float = 30.0
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 10.0
    deactivate_after: int = 3  # consecutive failed batches before a stream's circuit opens
    #: Per batch, from its start: what it may take before it is parked and the
    #: bundle goes on (``sinks/dispatch.py``); cuts the deadline and read timeouts.
    stream_budget_seconds: float = 5.0
    #: How long past its budget a batch in flight is waited for before it is abandoned.
    budget_grace_seconds: float = 1.0
    #: Whether a stream whose last request ran out of its budget stops holding
    #: bundles (``sinks/dispatch.py``): True in streaming, where a bundle's wait
    #: is every stream's latency. False in batch, where it costs throughput only,
    #: and where a worker may exit with its last bundle, before an abandoned
    #: request ends and its failure reaches the stream's circuit.
    release_overrun_streams: bool = True
    #: Whether a stream resumed in the portal (``DataStream.resumed_at``) is parked
    #: until its circuit acted on the resume: only where a recovery step runs
    #: (streaming) to deliver the kept backlog first (``sinks/recovery.py``).
    resume_backlog_first: bool = False
    #: Streams sent side by side per sink instance.
    stream_concurrency: int = 16
    #: Where the circuits are kept (``schemas/circuit.py``): the status location's
    #: ``circuits/``; None: in this process only (tests).
    circuit_location: str | None = None
    probe_initial_seconds: float = 10.0
    probe_max_seconds: float = 300.0

    def circuit_settings(self) -> CircuitSettings:
        return CircuitSettings(self.deactivate_after, self.probe_initial_seconds, self.probe_max_seconds)

    def run(
        self,
        attempt: Callable[[], Attempt],
        *,
        deadline_seconds: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> Outcome:
        """Call ``attempt`` until it succeeds, fails permanently or the bounds are
        reached; return the last attempt with the number made.

        ``deadline_seconds`` narrows the policy's deadline, for a request that
        shares its batch's time budget with others (``rest_api``)."""
        started = clock()
        deadline = self.deadline_seconds if deadline_seconds is None else min(deadline_seconds, self.deadline_seconds)
        history: list[Attempt] = []
        backoff = wait_random_exponential(multiplier=self.base_delay_seconds, max=self.max_delay_seconds)

        def _attempt() -> Attempt:
            result = attempt()
            history.append(result)
            return result

        def _stop(state: RetryCallState) -> bool:
            last: Attempt = state.outcome.result()  # type: ignore[union-attr]
            elapsed = clock() - started
            if state.attempt_number >= self.max_attempts or elapsed >= deadline:
                return True
            return last.retry_after is not None and elapsed + last.retry_after > deadline

        def _wait(state: RetryCallState) -> float:
            last: Attempt = state.outcome.result()  # type: ignore[union-attr]
            delay = last.retry_after if last.retry_after is not None else backoff(state)
            return max(0.0, min(delay, deadline - (clock() - started)))

        retrying = Retrying(
            stop=_stop,
            wait=_wait,
            retry=retry_if_result(lambda a: not a.ok and a.retryable),
            sleep=sleep,
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
        )
        if deadline <= 0:
            return Outcome(Attempt(False, True, None, "deadline_exceeded", UNREACHABLE), 0)
        final = retrying(_attempt)
        maybe_twice = final.ok and any(a.maybe_received for a in history[:-1])
        return Outcome(final, len(history), maybe_twice)


@dataclass(frozen=True)
class Outcome:
    last: Attempt
    attempts: int
    #: delivered, but an earlier attempt may have reached the destination too
    maybe_delivered_twice: bool = False

    @property
    def ok(self) -> bool:
        return self.last.ok


