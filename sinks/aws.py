"""boto3 clients for the Kinesis and S3 sinks, one per destination and worker.

Creating a boto3 client costs tens of milliseconds and a credentials lookup, so a
sink keeps one per (service, region, endpoint, credentials) for the life of its
DoFn instance. The credentials are resolved from the stream's references on the
worker; the cache key holds the references, not the values.

An ``endpoint_url`` override is a customer-given address that receives signed AWS
requests, so it is a destination like a REST URL (``sinks/outbound.py``): the
DoFn's guard checks it when a batch opens the stream, and, outside insecure mode,
the client sends through :class:`PinnedAwsSession`, which connects only to the
addresses the guard checked (TLS still verified against the endpoint's host name).
botocore has no public setting for its HTTP session; the supported extension point
used here is its ``before-send`` event, whose handler may send the request itself
and return the response (moto's mocks use the same event). The session is
botocore's own ``URLLib3Session`` with our pinned urllib3 pool manager in it, so
requests are sent, and errors mapped, exactly as botocore does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import boto3
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
    AWSPreparedRequest,
    AWSResponse,
)
from botocore.config import Config
from botocore.exceptions import BotoCoreError, HTTPClientError
from botocore.httpsession import URLLib3Session
from urllib3.poolmanager import PoolManager

from schemas.streams import AwsDestination, DataStream, SecretPolicy
from sinks.base import DeliveryFn
from sinks.outbound import DestinationRefusedError, OutboundGuard
from sinks.pinning import PinnedConnectionMixin, PinnedPoolManager
from sinks.retry import RetryPolicy
from sinks.secrets import SecretResolver
from sinks.wire import InvalidConfigurationError, check_access_key_id

_LOG = logging.getLogger(__name__)

#: (service, region, endpoint_url, access key id, secret access key) -> client
ClientFactory = Callable[[str, str, str | None, str, str], Any]

#: Retries are ours to decide (one failure policy for every sink), so botocore's
#: own are off: ``total_max_attempts`` counts the first request too (botocore's
#: ``max_attempts`` counts retries only, so 1 meant one retry after every
#: failure), and one attempt of the policy is one HTTP request; timeouts keep a
#: hanging endpoint from holding a worker.
_BOTO_CONFIG = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)


def boto3_client(service: str, region: str, endpoint_url: str | None, key_id: str, secret: str) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=_BOTO_CONFIG,
    )


class EndpointRefusedError(BotoCoreError, DestinationRefusedError):
    """The guard refused the address of an AWS endpoint at connect time; a
    ``BotoCoreError`` so the sinks' error handling sees it, classified as
    ``destination_refused`` (``sinks/retry.py``)."""

    fmt = "destination refused: {reason}"


class _PinnedAwsHTTPConnection(PinnedConnectionMixin, AWSHTTPConnection):
    pass


class _PinnedAwsHTTPSConnection(PinnedConnectionMixin, AWSHTTPSConnection):
    pass


class _PinnedAwsHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = _PinnedAwsHTTPConnection


class _PinnedAwsHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = _PinnedAwsHTTPSConnection


class PinnedAwsSession(URLLib3Session):
    """botocore's HTTP session whose connections go to the addresses ``guard``
    checked. Proxies are never used: a proxy would connect unchecked."""

    def __init__(self, guard: OutboundGuard, **kwargs: Any) -> None:
        super().__init__(proxies={}, **kwargs)
        self._pinned = PinnedPoolManager(
            guard, pool_classes={"http": _PinnedAwsHTTPConnectionPool, "https": _PinnedAwsHTTPSConnectionPool},
            **self._get_pool_manager_kwargs())

    def _get_connection_manager(self, url: str, proxy_url: str | None = None) -> PoolManager:
        return self._pinned

    def close(self) -> None:
        self._pinned.clear()
        super().close()


def pin_client(client: Any, guard: OutboundGuard) -> PinnedAwsSession:
    """Make ``client`` send through a :class:`PinnedAwsSession` (its
    ``before-send`` event); the caller closes the returned session. Raises
    :class:`DestinationRefusedError` for a client that has no event system (it
    cannot be pinned, so it must not send)."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is None:
        raise DestinationRefusedError("this AWS client cannot be pinned to checked addresses")
    session = PinnedAwsSession(guard, timeout=(_BOTO_CONFIG.connect_timeout, _BOTO_CONFIG.read_timeout))

    def send(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        try:
            return session.send(request)
        except HTTPClientError as err:  # botocore wraps what it does not know
            cause = err.kwargs.get("error")
            if isinstance(cause, DestinationRefusedError):
                raise EndpointRefusedError(reason=str(cause)) from None
            raise

    events.register_first("before-send", send, unique_id=f"datastreamer-pinned-{id(session)}")
    return session


class AwsClients:
    """Per-DoFn cache of clients; create it in ``setup``. A client of a
    destination with an ``endpoint_url`` is pinned to ``guard``'s checked
    addresses unless the guard is in insecure mode. An access key id that
    cannot go into the ``Authorization`` header is refused before a client is
    made (:func:`~sinks.wire.check_access_key_id`)."""

    def __init__(self, factory: ClientFactory, secrets: SecretResolver, guard: OutboundGuard | None = None) -> None:
        self._factory = factory
        self._secrets = secrets
        self._guard = guard or OutboundGuard()
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._sessions: list[PinnedAwsSession] = []

    def get(self, service: str, destination: AwsDestination) -> Any:
        key = (service, destination.region, destination.endpoint_url,
               destination.access_key_id, destination.secret_access_key)
        client = self._clients.get(key)
        if client is None:
            key_id = self._secrets.resolve(destination.access_key_id)
            check_access_key_id(key_id, f"access_key_id ({destination.access_key_id.describe()})")
            client = self._factory(
                service,
                destination.region,
                destination.endpoint_url,
                key_id,
                self._secrets.resolve(destination.secret_access_key),
            )
            if destination.endpoint_url is not None and not self._guard.allow_insecure:
                try:
                    self._sessions.append(pin_client(client, self._guard))
                except DestinationRefusedError:
                    _close(client)
                    raise
            self._clients[key] = client
        return client

    def close(self) -> None:
        """Close every client; never raises (it runs in teardown), and one client
        that fails to close does not keep the others open."""
        clients, self._clients = list(self._clients.values()), {}
        sessions, self._sessions = self._sessions, []
        for client in [*clients, *sessions]:
            _close(client)


def _close(client: Any) -> None:
    """Close a client or session, if it can be; never raises."""
    close = getattr(client, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # noqa: BLE001 - best effort: the worker is going away
        _LOG.warning("closing a boto3 client failed", exc_info=True)


class AwsTarget(NamedTuple):
    """What an AWS sink sends with: the destination's client and the destination."""

    client: Any
    destination: AwsDestination


class AwsDeliveryFn(DeliveryFn):
    """A delivery DoFn with one boto3 client per destination and worker. A
    destination reached by region goes to AWS's own endpoint; one with an
    ``endpoint_url`` override is a customer-given address, checked by the
    outbound rules like a REST URL and connected to only at checked addresses."""

    #: the boto3 service name
    service: ClassVar[str] = ""

    def __init__(self, client_factory: ClientFactory, policy: RetryPolicy, allow_insecure: bool = False,
                 secrets: SecretPolicy | None = None) -> None:
        super().__init__(policy, allow_insecure, secrets)
        self._client_factory = client_factory

    def guarded_url(self, stream: DataStream) -> str | None:
        return stream.destination.endpoint_url  # type: ignore[union-attr]

    def open_clients(self) -> None:
        self._clients = AwsClients(self._client_factory, self._secrets, self._guard)

    def close_clients(self) -> None:
        clients, self._clients = getattr(self, "_clients", None), None
        if clients is not None:
            clients.close()

    def connect(self, stream: DataStream) -> AwsTarget:
        """The stream's client; a client botocore will not make for the endpoint
        (a malformed ``endpoint_url`` in insecure mode) is a refused destination,
        never an exception out of ``process``."""
        destination: AwsDestination = stream.destination  # type: ignore[assignment]
        try:
            return AwsTarget(self._clients.get(self.service, destination), destination)
        except (ValueError, BotoCoreError) as err:
            if isinstance(err, DestinationRefusedError | InvalidConfigurationError):
                raise
            raise DestinationRefusedError(
                f"no AWS client for this endpoint: {type(err).__name__}") from None
