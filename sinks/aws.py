"""boto3 clients for the Kinesis and S3 sinks, one per destination and worker.

Creating a boto3 client costs tens of milliseconds and a credentials lookup, so a
sink keeps one per (service, region, endpoint, credentials) for the life of its
DoFn instance. The credentials are resolved from the stream's references on the
worker; the cache key holds the references, not the values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from schemas.streams import AwsDestination
from sinks.secrets import SecretResolver

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
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._clients.clear()
