"""boto3 clients for the Kinesis and S3 sinks, one per destination and worker.

Creating a boto3 client costs tens of milliseconds and a credentials lookup, so a
sink keeps one per (service, region, endpoint, credentials) for the life of its
DoFn instance. The credentials are resolved from the stream's references on the
worker; the cache key holds the references, not the values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import boto3
from botocore.config import Config

from schemas.streams import AwsDestination, DataStream
from sinks.base import DeliveryFn
from sinks.retry import RetryPolicy
from sinks.secrets import SecretResolver

_LOG = logging.getLogger(__name__)

#: (service, region, endpoint_url, access key id, secret access key) -> client
ClientFactory = Callable[[str, str, str | None, str, str], Any]

#: Retries are ours to decide (one failure policy for every sink), so botocore's
#: own are off; timeouts keep a hanging endpoint from holding a worker.
_BOTO_CONFIG = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)


def boto3_client(service: str, region: str, endpoint_url: str | None, key_id: str, secret: str) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=_BOTO_CONFIG,
    )


class AwsClients:
    """Per-DoFn cache of clients; create it in ``setup``."""

    def __init__(self, factory: ClientFactory, secrets: SecretResolver) -> None:
        self._factory = factory
        self._secrets = secrets
        self._clients: dict[tuple[Any, ...], Any] = {}

    def get(self, service: str, destination: AwsDestination) -> Any:
        key = (service, destination.region, destination.endpoint_url,
               destination.access_key_id, destination.secret_access_key)
        client = self._clients.get(key)
        if client is None:
            client = self._factory(
                service,
                destination.region,
                destination.endpoint_url,
                self._secrets.resolve(destination.access_key_id),
                self._secrets.resolve(destination.secret_access_key),
            )
            self._clients[key] = client
        return client

    def close(self) -> None:
        """Close every client; never raises (it runs in teardown), and one client
        that fails to close does not keep the others open."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            close = getattr(client, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort: the worker is going away
                _LOG.warning("closing a boto3 client failed", exc_info=True)


class AwsTarget(NamedTuple):
    """What an AWS sink sends with: the destination's client and the destination."""

    client: Any
    destination: AwsDestination


class AwsDeliveryFn(DeliveryFn):
    """A delivery DoFn with one boto3 client per destination and worker. AWS
    destinations are reached by region and endpoint, not a customer URL, so the
    outbound rules do not apply."""

    #: the boto3 service name
    service: ClassVar[str] = ""

    def __init__(self, client_factory: ClientFactory, policy: RetryPolicy) -> None:
        super().__init__(policy)
        self._client_factory = client_factory

    def open_clients(self) -> None:
        self._clients = AwsClients(self._client_factory, self._secrets)

    def close_clients(self) -> None:
        clients, self._clients = getattr(self, "_clients", None), None
        if clients is not None:
            clients.close()

    def connect(self, stream: DataStream) -> AwsTarget:
        destination: AwsDestination = stream.destination  # type: ignore[assignment]
        return AwsTarget(self._clients.get(self.service, destination), destination)
