"""Connections made to the address the outbound guard checked (``sinks/outbound.py``).

Resolving a destination's name once, checking every address, and then letting the
HTTP client resolve it again when it connects would leave a window for DNS
rebinding. These urllib3 connection classes connect to the guard's checked
addresses instead, keeping the host name for TLS (SNI and certificate check).
requests uses them through ``sinks/http.py``'s adapter, botocore through
``sinks/aws.py``. Written here because neither urllib3 nor requests offers a
resolve-once-and-pin hook; urllib3's documented extension points (connection
classes, ``PoolManager._new_pool``'s pool keywords) are all it takes.
"""

from __future__ import annotations

import socket
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import PoolManager
from urllib3.util import connection as urllib3_connection

from sinks.outbound import OutboundGuard


class PinnedConnectionMixin:
    """Connects to an address the guard checked instead of resolving the host
    again; the host name stays the connection's ``host``, so TLS sends it as SNI
    and verifies the certificate against it. Without a guard (or in insecure
    mode) it connects as urllib3 does."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def __init__(self, *args: Any, address_guard: OutboundGuard | None = None, **kwargs: Any) -> None:
        self._address_guard = address_guard
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        guard = self._address_guard
        addresses = guard.addresses(self.host) if guard is not None else None
        if addresses is None:
            return super()._new_conn()  # type: ignore[misc]
        failure: OSError | None = None
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except TimeoutError as err:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from err
            except OSError as err:
                failure = err
        raise NewConnectionError(self, f"Failed to establish a new connection: {failure}")  # type: ignore[arg-type]


class PinnedHTTPConnection(PinnedConnectionMixin, HTTPConnection):
    """An http connection to a checked address (insecure mode only, in practice)."""


class PinnedHTTPSConnection(PinnedConnectionMixin, HTTPSConnection):
    """A verified TLS connection to a checked address."""


class PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class PinnedPoolManager(PoolManager):
    """A urllib3 pool manager whose connections connect to the guard's checked
    addresses. ``pool_classes`` lets a client with its own connection classes
    (botocore) keep them, as long as they mix in :class:`PinnedConnectionMixin`."""

    def __init__(self, guard: OutboundGuard, pool_classes: dict[str, type[HTTPConnectionPool]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self.pool_classes_by_scheme = pool_classes or {
            "http": PinnedHTTPConnectionPool, "https": PinnedHTTPSConnectionPool}

    def _new_pool(self, scheme: str, host: str, port: int,
                  request_context: dict[str, Any] | None = None) -> HTTPConnectionPool:
        """urllib3's documented customization point: every pool's connections get the guard."""
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.conn_kw["address_guard"] = self._guard
        return pool
