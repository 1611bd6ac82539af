"""The HTTP session the REST and DataDog sinks share.

One ``requests.Session`` per DoFn instance (connection pooling across bundles),
created in ``setup`` and closed in ``teardown``. Redirects are never followed (every
request passes ``allow_redirects=False``): a 3xx from a customer's endpoint is a
misconfiguration, and following it would send the documents and credentials
somewhere the customer did not configure. ``max_redirects`` stays at its default:
set to 0, requests raises ``TooManyRedirects`` for any 3xx even without following.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import requests

from sinks.base import DeliveryFn
from sinks.retry import Attempt, RetryPolicy, classify_exception, classify_http

SessionFactory = Callable[[], requests.Session]

USER_AGENT = "iot-data-streamer/0.1"


@dataclass(frozen=True)
class Timeouts:
    connect_seconds: float = 5.0
    read_seconds: float = 30.0

    def as_requests(self) -> tuple[float, float]:
        return (self.connect_seconds, self.read_seconds)


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def classified_request(session: requests.Session, method: str, url: str, body: bytes,
                       headers: Mapping[str, str], timeouts: Timeouts) -> Attempt:
    """One request, classified for the retry policy; never raises for a
    destination failure (:func:`classify_exception` re-raises anything else: a
    bug). Redirects are not followed (module docstring); the body is read, not
    streamed, so a reset mid-response fails the attempt instead of passing for a
    2xx; a success keeps its status code (DataDog answers 202)."""
    try:
        response = session.request(method, url, data=body, headers=headers, timeout=timeouts.as_requests(),
                                   allow_redirects=False)
    except requests.RequestException as err:
        return classify_exception(err)
    try:
        attempt = classify_http(response.status_code, response.headers)
    finally:
        response.close()
    return replace(attempt, status_code=response.status_code) if attempt.ok else attempt


class HttpDeliveryFn(DeliveryFn):
    """A delivery DoFn that sends over one ``requests`` session per worker (its
    connection pool kept across bundles)."""

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, policy: RetryPolicy,
                 allow_insecure: bool = False) -> None:
        super().__init__(policy, allow_insecure)
        self._session_factory = session_factory
        self._timeouts = timeouts

    def open_clients(self) -> None:
        self._session = self._session_factory()

    def close_clients(self) -> None:
        session, self._session = getattr(self, "_session", None), None
        if session is not None:
            session.close()
