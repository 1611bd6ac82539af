"""The HTTP session the REST and DataDog sinks share.

One ``requests.Session`` per DoFn instance (connection pooling across bundles),
created in ``setup`` and closed in ``teardown``. Redirects are never followed (every
request passes ``allow_redirects=False``): a 3xx from a customer's endpoint is a
misconfiguration, and following it would send the documents and credentials
somewhere the customer did not configure. ``max_redirects`` stays at its default:
set to 0, requests raises ``TooManyRedirects`` for any 3xx even without following.

Connections go where the outbound guard checked (``sinks/outbound.py``): the
session's adapters are :class:`PinnedAdapter`, whose connection pools ask the
DoFn's guard for a host's checked addresses when they connect, so a DNS answer
that changes between the check and the connection (rebinding) cannot move a
request to another address. TLS is still verified against the URL's host. In
secure mode the session ignores proxy settings of the environment (a proxy would
resolve the name itself, unchecked) and a configured proxy is refused.

Nothing retries behind the failure policy's back: the adapters are mounted with
``max_retries=0`` (urllib3 raises at the first failure, and a stale pooled
connection fails its attempt instead of being re-sent), so one attempt of
:class:`~sinks.retry.RetryPolicy` is one request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import requests
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, HTTPAdapter
from urllib3.poolmanager import ProxyManager

from schemas.delivery import DESTINATION_REFUSED
from schemas.streams import SecretPolicy
from sinks.base import DeliveryFn
from sinks.outbound import DestinationRefusedError, OutboundGuard
from sinks.pinning import PinnedPoolManager
from sinks.retry import Attempt, RetryPolicy, classify_exception, classify_http

_LOG = logging.getLogger(__name__)

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


class PinnedAdapter(HTTPAdapter):
    """A requests transport adapter whose connections connect to the addresses
    ``guard`` checked (:class:`~sinks.outbound.PinnedPoolManager`). Made on the
    worker, in ``setup``, and never pickled."""

    def __init__(self, guard: OutboundGuard, **kwargs: Any) -> None:
        self._guard = guard  # before HTTPAdapter.__init__, which builds the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK,
                         **pool_kwargs: Any) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = PinnedPoolManager(self._guard, num_pools=connections, maxsize=maxsize, block=block,
                                             **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> ProxyManager:
        """A proxy resolves and connects by itself, past the guard: refused unless insecure."""
        if not self._guard.allow_insecure:
            raise DestinationRefusedError("a proxy would connect to the destination unchecked; proxies are not "
                                          "used for customer destinations")
        return super().proxy_manager_for(proxy, **proxy_kwargs)


def pin_session(session: requests.Session, guard: OutboundGuard, pool_size: int = DEFAULT_POOLSIZE) -> None:
    """Mount :class:`PinnedAdapter` for http and https on ``session`` (``pool_size``
    connections per host, for as many threads), and in secure mode stop it from
    taking proxies or credentials (.netrc) from the environment."""
    adapter = PinnedAdapter(guard, pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if not guard.allow_insecure:
        session.trust_env = False


def classified_request(session: requests.Session, method: str, url: str, body: bytes,
                       headers: Mapping[str, str], timeouts: Timeouts) -> Attempt:
    """One request, classified for the retry policy; never raises: whatever
    requests, urllib3 or http.client raise for it (a header value http.client
    cannot encode, a response it cannot parse) is the attempt's failure
    (:func:`classify_exception`). Redirects are not followed (module docstring);
    the body is read, not streamed, so a reset mid-response fails the attempt
    instead of passing for a 2xx; a success keeps its status code (DataDog
    answers 202). Only a 2xx proves delivery: the body of the answer is not read
    for more (the guide's contract with receivers)."""
    try:
        response = session.request(method, url, data=body, headers=headers, timeout=timeouts.as_requests(),
                                   allow_redirects=False)
    except DestinationRefusedError as err:  # the guard refused the address at connect time
        _LOG.warning("destination refused at connect time, nothing sent: %s", err)
        return Attempt(False, False, None, DESTINATION_REFUSED, DESTINATION_REFUSED)
    except Exception as err:  # noqa: BLE001 - every exception of a request is its failure (sinks/retry.py)
        return classify_exception(err)
    try:
        attempt = classify_http(response.status_code, response.headers)
    finally:
        response.close()
    return replace(attempt, status_code=response.status_code) if attempt.ok else attempt


class HttpDeliveryFn(DeliveryFn):
    """A delivery DoFn that sends over one ``requests`` session per worker (its
    connection pool kept across bundles), pinned to the addresses its guard
    checked (:func:`pin_session`)."""

    #: connections per host of the session's pool
    pool_size: int = DEFAULT_POOLSIZE

    def __init__(self, session_factory: SessionFactory, timeouts: Timeouts, policy: RetryPolicy,
                 allow_insecure: bool = False, secrets: SecretPolicy | None = None) -> None:
        super().__init__(policy, allow_insecure, secrets)
        self._session_factory = session_factory
        self._configured_timeouts = timeouts

    @property
    def _timeouts(self) -> Timeouts:
        """The configured timeouts, the read timeout cut to what is left of the
        batch's budget (``sinks/dispatch.py``): a destination that never answers
        holds a request for the budget, not for the read timeout."""
        configured = self._configured_timeouts
        remaining = self.remaining_seconds()
        if remaining is None or remaining >= configured.read_seconds:
            return configured
        return Timeouts(configured.connect_seconds, max(0.1, remaining))

    def open_clients(self) -> None:
        """The worker's session, pinned. A session that cannot mount adapters (a
        test double) is only accepted in insecure mode: in secure mode it could
        connect wherever a second lookup says."""
        self._session = self._session_factory()
        if hasattr(self._session, "mount"):
            pin_session(self._session, self._guard, self.pool_size)
        elif not self._allow_insecure:
            raise TypeError("the session factory must make requests sessions: connections must be pinned to "
                            "the addresses the outbound guard checked")

    def close_clients(self) -> None:
        """Close the session's pooled connections, keeping the session: teardown
        does not wait for a request still running (an abandoned one, until its
        budget ends), and that request's next attempt must be a real one (a
        closed requests session opens a new connection), not an error of a
        client taken from under it, which would count against the destination."""
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
