"""The HTTP session the REST and DataDog sinks share.

One ``requests.Session`` per DoFn instance (connection pooling across bundles),
created in ``setup`` and closed in ``teardown``. Redirects are never followed (every
request passes ``allow_redirects=False``): a 3xx from a customer's endpoint is a
misconfiguration, and following it would send the documents and credentials
somewhere the customer did not configure. ``max_redirects`` stays at its default:
set to 0, requests raises ``TooManyRedirects`` for any 3xx even without following.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import requests

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
