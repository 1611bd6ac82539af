"""What a request may carry: the stream settings and secrets that go on the wire
as header values, checked when a sink opens the stream.

A value that HTTP cannot carry fails deep inside the client library, and not as
a destination error: http.client raises ``UnicodeEncodeError`` for a header
value outside Latin-1 and ``ValueError`` for one with a line break, requests
``InvalidHeader`` for one with leading whitespace, botocore ``HTTPClientError``
for an access key id with a line break. Each is the same request failing the
same way on every attempt. Checked when the stream is opened (its credentials
resolved), such a value is the stream's :class:`InvalidConfigurationError`
(status token ``invalid_configuration``, ``sinks/retry.py``): nothing is sent,
the batch is parked and the stream deactivated, and the message names the header
and where its value comes from, never the value (it may be a secret).

Header values from the stream configuration are refused at load already
(``schemas/streams.py``); secrets are only read on the worker, so this is where
theirs are checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Error codes of the settings refused here (``DeliveryResult.error``).
INVALID_HEADER_VALUE = "invalid_header_value"
INVALID_ACCESS_KEY_ID = "invalid_access_key_id"
INVALID_SIGNING_SECRET = "invalid_signing_secret"

#: Control characters but tab: a line break would end the header (http.client
#: and requests refuse it), the others are not field content (RFC 9110, 5.5).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: AWS access key ids are upper-case letters and digits; what botocore can put in
#: the ``Authorization`` header is printable ASCII without spaces.
_ACCESS_KEY_ID = re.compile(r"[\x21-\x7e]{1,128}")


class InvalidConfigurationError(ValueError):
    """A stream setting or secret that no request can carry. ``error`` is the
    error code of the results; the message names the setting, never its value."""

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, or None: it must be
    Latin-1 (what http.client encodes header values with), without control
    characters but tab, and not start with whitespace (requests refuses that)."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "has characters outside Latin-1"
    if _CONTROL.search(value):
        return "has control characters (a line break?)"
    if value[:1].isspace():
        return "starts with whitespace"
    return None


def check_header_values(headers: Mapping[str, str], sources: Mapping[str, str]) -> None:
    """Raise :class:`InvalidConfigurationError` for the first value of
    ``headers`` that cannot be sent; ``sources`` names where a header's value
    comes from (``rest.auth_secret``), for the message."""
    for name, value in headers.items():
        problem = header_value_problem(value)
        if problem is not None:
            source = sources.get(name.lower(), "its configured value")
            raise InvalidConfigurationError(f"header {name!r} cannot be sent: {source} {problem}",
                                            INVALID_HEADER_VALUE)


def check_signing_secret(secret: str, source: str) -> None:
    """The signing secret keys an HMAC of its UTF-8 bytes; a value read from an
    environment of undecodable bytes (Python keeps them as lone surrogates) has
    none."""
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidConfigurationError(f"{source} is not valid text (undecodable bytes)",
                                        INVALID_SIGNING_SECRET) from None


def check_access_key_id(key_id: str, source: str) -> None:
    """An AWS access key id goes into the ``Authorization`` header of every request."""
    if not _ACCESS_KEY_ID.fullmatch(key_id):
        raise InvalidConfigurationError(f"{source} is not an AWS access key id (1 to 128 printable ASCII "
                                        "characters without spaces)", INVALID_ACCESS_KEY_ID)
